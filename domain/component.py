"""Components (devices) and the templates they are registered from on their first publish."""

from __future__ import annotations

import re
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import InvalidInput
from domain.organization import clean_name

COMPONENT_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
TEMPLATE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
NAME_VARIABLES = ("[component.id]",)
_NAMESPACE = uuid5(NAMESPACE_URL, "https://certwarden.invalid/components")


def check_component_id(component_id: str) -> str:
    """Component ids appear as one MQTT topic level: no '/', '+', '#', NUL, spaces."""
    if not isinstance(component_id, str) or not COMPONENT_ID.match(component_id):
        raise InvalidInput(
            "component id must be 1-128 characters of letters, digits, '_', '.', ':', '-'"
        )
    return component_id


def check_template_id(template_id: str) -> str:
    if not isinstance(template_id, str) or not TEMPLATE_ID.match(template_id):
        raise InvalidInput("template id must be 1-64 letters, digits, '_', '.', '-'")
    return template_id


def check_name_pattern(pattern: str) -> str:
    """A component name pattern such as 'Sensor [component.id]'; unknown [variables] refused."""
    text = clean_name(pattern, "name pattern")
    for variable in re.findall(r"\[[^\]]*\]", text):
        if variable not in NAME_VARIABLES:
            raise InvalidInput(
                f"unknown variable {variable} in name pattern; known: [component.id]"
            )
    return text


def template_key(org_uid: str, template_id: str) -> str:
    """Reservation key that makes template ids unique within an organization."""
    return f"component-template:{org_uid}:{template_id}"


def component_uuid(org_uid: str, component_id: str) -> UUID:
    return uuid5(_NAMESPACE, f"{org_uid}:{component_id}")


class ComponentTemplate(Aggregate):
    """Emits Created, Updated, Deleted. Organization-unique template id (via Reservation)."""

    @event("Created")
    def __init__(
        self, org_uid: str, template_id: str, name: str, name_pattern: str, meta: dict[str, str]
    ) -> None:
        self.org_uid = org_uid
        self.template_id = template_id
        self.name = name
        self.name_pattern = name_pattern
        self.deleted = False

    @staticmethod
    def create(
        org_uid: str, template_id: str, name: str, name_pattern: str, meta: dict[str, str]
    ) -> ComponentTemplate:
        return ComponentTemplate(
            org_uid=org_uid,
            template_id=check_template_id(template_id),
            name=clean_name(name or template_id, "template name"),
            name_pattern=check_name_pattern(name_pattern),
            meta=meta,
        )

    def update(self, name: str | None, name_pattern: str | None, meta: dict[str, str]) -> None:
        new_name = clean_name(name, "template name") if name is not None else self.name
        new_pattern = (
            check_name_pattern(name_pattern) if name_pattern is not None else self.name_pattern
        )
        if (new_name, new_pattern) != (self.name, self.name_pattern):
            self._updated(name=new_name, name_pattern=new_pattern, meta=meta)

    @event("Updated")
    def _updated(self, name: str, name_pattern: str, meta: dict[str, str]) -> None:
        self.name = name
        self.name_pattern = name_pattern

    def component_name(self, component_id: str) -> str:
        return self.name_pattern.replace("[component.id]", component_id)[:200]

    def delete(self, meta: dict[str, str]) -> None:
        if not self.deleted:
            self._deleted(meta=meta)

    @event("Deleted")
    def _deleted(self, meta: dict[str, str]) -> None:
        self.deleted = True


class Component(Aggregate):
    """Emits Registered. One aggregate per (organization, component id): uuid5 id."""

    @staticmethod
    def create_id(org_uid: str, component_id: str) -> UUID:
        return component_uuid(org_uid, component_id)

    @event("Registered")
    def __init__(
        self,
        org_uid: str,
        component_id: str,
        name: str,
        template_id: str | None,
        folder: str,
        meta: dict[str, str],
    ) -> None:
        self.org_uid = org_uid
        self.component_id = component_id
        self.name = name
        self.template_id = template_id
        self.folder = folder
