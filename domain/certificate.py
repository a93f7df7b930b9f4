"""Certificate: an imported X.509 certificate plus the metadata that governs its MQTT use."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict
from datetime import datetime
from enum import StrEnum
from typing import Any

from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict, InvalidInput
from domain.folder import normalise_folder
from domain.organization import clean_name
from domain.x509 import CertificateFacts


class Status(StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"


def parse_status(value: str) -> Status:
    try:
        return Status(str(value).upper())
    except ValueError:
        raise InvalidInput("status must be ACTIVE or INACTIVE") from None


def facts_to_json(facts: CertificateFacts) -> dict[str, Any]:
    """JSON-safe event payload form of the parsed facts (public data only)."""
    data = asdict(facts)
    data["not_before"] = facts.not_before.isoformat()
    data["not_after"] = facts.not_after.isoformat()
    data["sans"] = list(facts.sans)
    return data


def check_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except (ValueError, AttributeError):
        raise InvalidInput(f"not an IP address: {str(value)[:64]!r}") from None


class Certificate(Aggregate):
    """Emits Imported, Renamed, Activated, Deactivated, CaIndicatorSet, PolicyAssigned,
    RunAsUserSet, RegistrationSet, HostPinned, HostPinCleared, ComponentPinned,
    ComponentPinCleared, MovedToFolder, FirstSeen, Rolled, PredecessorRecorded, Deleted.
    A deleted certificate accepts no command."""

    @event("Imported")
    def __init__(
        self,
        org_uid: str,
        facts: dict[str, Any],
        name: str,
        is_ca: bool,
        policy_id: str | None,
        folder: str,
        meta: dict[str, str],
    ) -> None:
        self.org_uid = org_uid
        self.facts = facts
        self.name = name
        self.is_ca = is_ca
        self.policy_id = policy_id
        self.folder = folder
        self.status = Status.ACTIVE.value
        self.run_as_user: str | None = None
        self.registration_template: str | None = None
        self.registration_folder: str | None = None
        self.pinned_host: str | None = None
        self.pinned_component: str | None = None
        self.deleted = False
        self.seen = False
        self.predecessor_id: str | None = None
        self.successor_id: str | None = None

    @staticmethod
    def import_(
        org_uid: str,
        facts: CertificateFacts,
        meta: dict[str, str],
        *,
        name: str | None = None,
        is_ca: bool | None = None,
        policy_id: str | None = None,
        folder: str = "/",
    ) -> Certificate:
        return Certificate(
            org_uid=org_uid,
            facts=facts_to_json(facts),
            name=clean_name(name, "certificate name") if name else facts.subject[:200],
            is_ca=facts.ca_detected if is_ca is None else bool(is_ca),
            policy_id=policy_id,
            folder=normalise_folder(folder),
            meta=meta,
        )

    # -- read helpers -------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return str(self.facts["fingerprint"])

    @property
    def subject_key(self) -> str:
        return str(self.facts["subject_key"])

    @property
    def not_after(self) -> datetime:
        return datetime.fromisoformat(str(self.facts["not_after"]))

    def _alive(self) -> None:
        if self.deleted:
            raise Conflict("the certificate is deleted")

    # -- commands -----------------------------------------------------------
    def rename(self, name: str, meta: dict[str, str]) -> None:
        self._alive()
        name = clean_name(name, "certificate name")
        if name != self.name:
            self._renamed(name=name, meta=meta)

    @event("Renamed")
    def _renamed(self, name: str, meta: dict[str, str]) -> None:
        self.name = name

    def set_status(self, status: str, meta: dict[str, str]) -> None:
        self._alive()
        wanted = parse_status(status)
        if wanted.value == self.status:
            return
        if wanted is Status.ACTIVE:
            self._activated(meta=meta)
        else:
            self._deactivated(meta=meta)

    @event("Activated")
    def _activated(self, meta: dict[str, str]) -> None:
        self.status = Status.ACTIVE.value

    @event("Deactivated")
    def _deactivated(self, meta: dict[str, str]) -> None:
        self.status = Status.INACTIVE.value

    def set_ca_indicator(self, is_ca: bool, meta: dict[str, str]) -> None:
        self._alive()
        if bool(is_ca) != self.is_ca:
            self._ca_indicator_set(is_ca=bool(is_ca), meta=meta)

    @event("CaIndicatorSet")
    def _ca_indicator_set(self, is_ca: bool, meta: dict[str, str]) -> None:
        self.is_ca = is_ca

    def assign_policy(self, policy_id: str | None, meta: dict[str, str]) -> None:
        self._alive()
        if policy_id != self.policy_id:
            self._policy_assigned(policy_id=policy_id, meta=meta)

    @event("PolicyAssigned")
    def _policy_assigned(self, policy_id: str | None, meta: dict[str, str]) -> None:
        self.policy_id = policy_id

    def set_run_as_user(self, user_id: str | None, meta: dict[str, str]) -> None:
        self._alive()
        if user_id != self.run_as_user:
            self._run_as_user_set(user_id=user_id, meta=meta)

    @event("RunAsUserSet")
    def _run_as_user_set(self, user_id: str | None, meta: dict[str, str]) -> None:
        self.run_as_user = user_id

    def set_registration(
        self, template_id: str | None, initial_folder: str | None, meta: dict[str, str]
    ) -> None:
        self._alive()
        folder = normalise_folder(initial_folder) if initial_folder else None
        if (template_id, folder) != (self.registration_template, self.registration_folder):
            self._registration_set(template_id=template_id, initial_folder=folder, meta=meta)

    @event("RegistrationSet")
    def _registration_set(
        self, template_id: str | None, initial_folder: str | None, meta: dict[str, str]
    ) -> None:
        self.registration_template = template_id
        self.registration_folder = initial_folder

    def pin_host(self, ip: str | None, meta: dict[str, str]) -> None:
        """None or '' clears the pin: the next successful connect pins again."""
        self._alive()
        if not ip:
            if self.pinned_host is not None:
                self._host_pin_cleared(meta=meta)
            return
        address = check_ip(ip)
        if address != self.pinned_host:
            self._host_pinned(ip=address, meta=meta)

    @event("HostPinned")
    def _host_pinned(self, ip: str, meta: dict[str, str]) -> None:
        self.pinned_host = ip

    @event("HostPinCleared")
    def _host_pin_cleared(self, meta: dict[str, str]) -> None:
        self.pinned_host = None

    def pin_component(self, component_id: str | None, meta: dict[str, str]) -> None:
        self._alive()
        if not component_id:
            if self.pinned_component is not None:
                self._component_pin_cleared(meta=meta)
            return
        if len(component_id) > 200 or any(c in component_id for c in "/+#\x00"):
            raise InvalidInput("component id must be ≤ 200 characters without / + # or NUL")
        if component_id != self.pinned_component:
            self._component_pinned(component_id=component_id, meta=meta)

    @event("ComponentPinned")
    def _component_pinned(self, component_id: str, meta: dict[str, str]) -> None:
        self.pinned_component = component_id

    @event("ComponentPinCleared")
    def _component_pin_cleared(self, meta: dict[str, str]) -> None:
        self.pinned_component = None

    def move_to_folder(self, folder: str, meta: dict[str, str]) -> None:
        self._alive()
        path = normalise_folder(folder)
        if path != self.folder:
            self._moved_to_folder(folder=path, meta=meta)

    @event("MovedToFolder")
    def _moved_to_folder(self, folder: str, meta: dict[str, str]) -> None:
        self.folder = folder

    def record_first_seen(self, ip: str, meta: dict[str, str]) -> None:
        """The first successful connect ever (roll tracking: "new certificate seen")."""
        if not self.seen and not self.deleted:
            self._first_seen(ip=check_ip(ip) if ip else "", meta=meta)

    @event("FirstSeen")
    def _first_seen(self, ip: str, meta: dict[str, str]) -> None:
        self.seen = True

    def roll_to(self, successor_id: str, meta: dict[str, str]) -> None:
        """This certificate is being replaced by `successor_id` (registered by the device)."""
        self._alive()
        if self.successor_id != successor_id:
            self._rolled(successor_id=successor_id, meta=meta)

    @event("Rolled")
    def _rolled(self, successor_id: str, meta: dict[str, str]) -> None:
        self.successor_id = successor_id

    def record_predecessor(self, predecessor_id: str, meta: dict[str, str]) -> None:
        self._alive()
        if self.predecessor_id != predecessor_id:
            self._predecessor_recorded(predecessor_id=predecessor_id, meta=meta)

    @event("PredecessorRecorded")
    def _predecessor_recorded(self, predecessor_id: str, meta: dict[str, str]) -> None:
        self.predecessor_id = predecessor_id

    def delete(self, meta: dict[str, str]) -> None:
        if not self.deleted:
            self._deleted(meta=meta)

    @event("Deleted")
    def _deleted(self, meta: dict[str, str]) -> None:
        self.deleted = True
