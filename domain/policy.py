"""Policy: which MQTT topic actions a certificate may perform."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from eventsourcing.domain import Aggregate, event

from domain.errors import InvalidInput
from domain.organization import clean_name
from domain.topics import PermissionSet

POLICY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MAX_PERMISSION_SETS = 100


def check_policy_id(policy_id: str) -> str:
    if not isinstance(policy_id, str) or not POLICY_ID.match(policy_id):
        raise InvalidInput(
            "policy id must be 1-64 characters of letters, digits, '_', '.', '-' "
            "and start with a letter or digit"
        )
    return policy_id


def parse_permission_sets(raw: Sequence[Any]) -> list[dict[str, list[str]]]:
    """Validate permission sets; returns their JSON form. Raises InvalidInput."""
    if len(raw) > MAX_PERMISSION_SETS:
        raise InvalidInput(f"a policy holds at most {MAX_PERMISSION_SETS} permission sets")
    out = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidInput(f"permission set {index}: expected an object")
        try:
            parsed = PermissionSet.parse(item.get("topics") or [], item.get("actions") or [])
        except InvalidInput as exc:
            raise type(exc)(f"permission set {index}: {exc.detail}", index=index) from None
        out.append(parsed.to_json())
    return out


class Policy(Aggregate):
    """Emits Created, Renamed, PermissionSetsReplaced, Deleted."""

    @event("Created")
    def __init__(
        self,
        org_uid: str,
        policy_id: str,
        name: str,
        permission_sets: list[dict[str, list[str]]],
        meta: dict[str, str],
    ) -> None:
        self.org_uid = org_uid
        self.policy_id = policy_id
        self.name = name
        self.permission_sets = permission_sets
        self.deleted = False

    @staticmethod
    def create(
        org_uid: str,
        policy_id: str,
        name: str,
        permission_sets: Sequence[Any],
        meta: dict[str, str],
    ) -> Policy:
        return Policy(
            org_uid=org_uid,
            policy_id=check_policy_id(policy_id),
            name=clean_name(name or policy_id, "policy name"),
            permission_sets=parse_permission_sets(permission_sets),
            meta=meta,
        )

    def rename(self, name: str, meta: dict[str, str]) -> None:
        name = clean_name(name, "policy name")
        if name != self.name:
            self._renamed(name=name, meta=meta)

    @event("Renamed")
    def _renamed(self, name: str, meta: dict[str, str]) -> None:
        self.name = name

    def replace_permission_sets(self, permission_sets: Sequence[Any], meta: dict[str, str]) -> None:
        parsed = parse_permission_sets(permission_sets)
        if parsed != self.permission_sets:
            self._permission_sets_replaced(permission_sets=parsed, meta=meta)

    @event("PermissionSetsReplaced")
    def _permission_sets_replaced(
        self, permission_sets: list[dict[str, list[str]]], meta: dict[str, str]
    ) -> None:
        self.permission_sets = permission_sets

    def delete(self, meta: dict[str, str]) -> None:
        if not self.deleted:
            self._deleted(meta=meta)

    @event("Deleted")
    def _deleted(self, meta: dict[str, str]) -> None:
        self.deleted = True
