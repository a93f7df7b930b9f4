"""ActionPackage: ordered actions (MQTT publish, e-mail) a TAKE_ACTION operation runs per certificate."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict, InvalidInput
from domain.operation import EMAIL, MAX_RECIPIENTS
from domain.organization import clean_name

VARIABLES = (
    "component.id",
    "component.name",
    "cert.id",
    "cert.name",
    "cert.dn",
    "cert.not_after",
    "org.uid",
    "operation.name",
)
VARIABLE = re.compile(r"\[([A-Za-z_]+(?:\.[A-Za-z_]+)+)\]")
MAX_ACTIONS = 20
MAX_TOPIC = 1024
MAX_PAYLOAD = 256 * 1024
MAX_SUBJECT = 300
MAX_BODY = 64 * 1024


class ActionKind(StrEnum):
    MQTT_PUBLISH = "mqtt_publish"
    EMAIL = "email"


def check_template(text: Any, what: str, limit: int) -> str:
    """A text whose [variables] are all known; raises InvalidInput naming the first unknown one."""
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be text")
    if len(text.encode()) > limit:
        raise InvalidInput(f"{what} is longer than {limit} bytes")
    for name in VARIABLE.findall(text):
        if name not in VARIABLES:
            known = ", ".join(f"[{v}]" for v in VARIABLES)
            raise InvalidInput(f"{what}: unknown variable [{name}] (known: {known})")
    return text


def render(template: str, values: Mapping[str, str]) -> str:
    """Substitute [variables]; every variable was checked at save time."""
    return VARIABLE.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def uses(template: str, variable: str) -> bool:
    return f"[{variable}]" in template


def check_topic_template(topic: Any, what: str) -> str:
    """MQTT topic names carry no wildcards (MQTT 3.1.1 section 4.7.1) and no NUL."""
    text = check_template(topic, what, MAX_TOPIC)
    literal = VARIABLE.sub("", text)
    if not text.strip() or "\x00" in text:
        raise InvalidInput(f"{what} must be a non-empty topic without NUL")
    if "+" in literal or "#" in literal:
        raise InvalidInput(f"{what}: a published topic cannot contain the wildcards + or #")
    return text


def checked_topic(topic: str, org_uid: str) -> str:
    """A substituted topic must stay under '{orgUid}/' and be a valid topic name.
    Raises InvalidInput with the reason (the run records it as that certificate's failure)."""
    if "+" in topic or "#" in topic:
        raise InvalidInput(f"topic {topic[:200]!r} contains an MQTT wildcard")
    if "\x00" in topic or len(topic.encode()) > 65535:
        raise InvalidInput("topic is not a valid MQTT topic name")
    if not topic.startswith(f"{org_uid}/") or topic == f"{org_uid}/":
        raise InvalidInput(f"topic {topic[:200]!r} is outside the organization namespace")
    return topic


def _mqtt_action(index: int, raw: Mapping[str, Any]) -> dict[str, Any]:
    qos = raw.get("qos", 1)
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise InvalidInput(f"action {index}: qos must be 0, 1 or 2")
    return {
        "kind": ActionKind.MQTT_PUBLISH.value,
        "topic": check_topic_template(raw.get("topic"), f"action {index} topic"),
        "payload": check_template(raw.get("payload", ""), f"action {index} payload", MAX_PAYLOAD),
        "qos": qos,
        "retain": bool(raw.get("retain", False)),
    }


def _email_action(index: int, raw: Mapping[str, Any]) -> dict[str, Any]:
    to = raw.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not 1 <= len(to) <= MAX_RECIPIENTS:
        raise InvalidInput(f"action {index}: 'to' needs 1..{MAX_RECIPIENTS} addresses")
    for address in to:
        if not isinstance(address, str) or not EMAIL.match(address.strip()):
            raise InvalidInput(f"action {index}: not an email address: {str(address)[:80]!r}")
    subject = check_template(raw.get("subject", ""), f"action {index} subject", MAX_SUBJECT)
    if not subject.strip() or any(c in subject for c in "\r\n"):
        raise InvalidInput(f"action {index}: subject must be one non-empty line")
    return {
        "kind": ActionKind.EMAIL.value,
        "to": [a.strip() for a in to],
        "subject": subject,
        "body": check_template(raw.get("body", ""), f"action {index} body", MAX_BODY),
    }


def parse_actions(raw: Sequence[Any]) -> list[dict[str, Any]]:
    """Validate an ordered list of actions; returns their JSON form. Raises InvalidInput."""
    if not isinstance(raw, list | tuple) or not 1 <= len(raw) <= MAX_ACTIONS:
        raise InvalidInput(f"an action package holds 1..{MAX_ACTIONS} actions")
    out = []
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise InvalidInput(f"action {index}: expected an object")
        kind = str(item.get("kind", "")).lower()
        if kind == ActionKind.MQTT_PUBLISH:
            out.append(_mqtt_action(index, item))
        elif kind == ActionKind.EMAIL:
            out.append(_email_action(index, item))
        else:
            raise InvalidInput(f"action {index}: kind must be 'mqtt_publish' or 'email'")
    return out


class ActionPackage(Aggregate):
    """Emits Created, Updated, Deleted."""

    @event("Created")
    def __init__(
        self, org_uid: str, name: str, actions: list[dict[str, Any]], meta: dict[str, str]
    ) -> None:
        self.org_uid = org_uid
        self.name = name
        self.actions = actions
        self.deleted = False

    @staticmethod
    def create(
        org_uid: str, name: str, actions: Sequence[Any], meta: dict[str, str]
    ) -> ActionPackage:
        """Raises InvalidInput (bad name, unknown variable, wildcard topic, bad address...)."""
        return ActionPackage(
            org_uid=org_uid,
            name=clean_name(name, "action package name"),
            actions=parse_actions(actions),
            meta=meta,
        )

    def update(
        self, meta: dict[str, str], name: str | None = None, actions: Sequence[Any] | None = None
    ) -> None:
        """Emits Updated when the name or the actions change. Raises InvalidInput, Conflict."""
        if self.deleted:
            raise Conflict("the action package is deleted")
        new_name = self.name if name is None else clean_name(name, "action package name")
        new_actions = self.actions if actions is None else parse_actions(actions)
        if (new_name, new_actions) != (self.name, self.actions):
            self._updated(name=new_name, actions=new_actions, meta=meta)

    @event("Updated")
    def _updated(self, name: str, actions: list[dict[str, Any]], meta: dict[str, str]) -> None:
        self.name = name
        self.actions = actions

    def delete(self, meta: dict[str, str]) -> None:
        """Emits Deleted (once). Whether an operation still uses it is the application's check."""
        if not self.deleted:
            self._deleted(meta=meta)

    @event("Deleted")
    def _deleted(self, meta: dict[str, str]) -> None:
        self.deleted = True
