"""Certificate commands: import (bundle, uniqueness), update, pin on first connect, delete."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from application.base import RegistryBase
from application.policies import PolicyCommands
from domain.certificate import Certificate, Status, parse_status
from domain.component import template_key
from domain.errors import Conflict, InvalidInput
from domain.folder import Folder, ancestors, folder_id, normalise_folder
from domain.meta import Actor, ActorKind
from domain.principal import User
from domain.reservation import Reservation
from domain.x509 import CertificateFacts, parse_bundle


def org_dn_key(org_uid: str, subject_key: str) -> str:
    return f"org-dn:{org_uid}:{subject_key}"


def device_dn_key(subject_key: str) -> str:
    return f"device-dn:{subject_key}"


@dataclass(frozen=True, slots=True)
class Imported:
    certificate_id: str
    fingerprint: str
    subject: str
    is_ca: bool
    created: bool  # False when the identical certificate was already registered here


@dataclass(frozen=True, slots=True)
class _Options:
    name: str | None
    is_ca: bool | None
    policy_id: str | None
    folder: str
    status: Status | None


UPDATABLE = {
    "name",
    "status",
    "is_ca",
    "policy_id",
    "run_as_user",
    "registration",
    "pinned_host",
    "pinned_component",
    "folder",
}


class CertificateCommands(PolicyCommands, RegistryBase):
    def import_certificates(
        self,
        org_uid: str,
        data: bytes,
        actor: Actor,
        *,
        name: str | None = None,
        is_ca: bool | None = None,
        policy_id: str | None = None,
        folder: str = "/",
        status: str | None = None,
    ) -> list[Imported]:
        """Import one certificate or a chain; every certificate becomes its own aggregate.

        Invariants: a device certificate's DN is unique across all organizations; any DN is
        unique within an organization; identical re-imports return the existing id.
        Emits Certificate.Imported (+ Deactivated when status=INACTIVE), Reservation.Claimed,
        Folder.Created. Raises BadCertificateInput, InvalidInput, Conflict; nothing is written
        unless everything is accepted.
        """
        facts_list = parse_bundle(data)
        self.organization(org_uid)
        self.require_policy(org_uid, policy_id)
        if name is not None and len(facts_list) > 1:
            raise InvalidInput("a name can only be given when importing a single certificate")
        wanted_status = parse_status(status) if status else None
        folder = normalise_folder(folder)
        meta = actor.meta()
        options = _Options(name, is_ca, policy_id, folder, wanted_status)
        done = self._import_optimistic(org_uid, facts_list, meta, options)
        if done is None:
            done = self._import_careful(org_uid, facts_list, meta, options)
        return done

    def _new_certificate(
        self, org_uid: str, facts: CertificateFacts, meta: dict[str, str], o: _Options
    ) -> Certificate:
        cert = Certificate.import_(
            org_uid, facts, meta, name=o.name, is_ca=o.is_ca, policy_id=o.policy_id, folder=o.folder
        )
        if o.status is not None:
            cert.set_status(o.status, meta)
        return cert

    def _import_optimistic(
        self, org_uid: str, facts_list: list[CertificateFacts], meta: dict[str, str], o: _Options
    ) -> list[Imported] | None:
        """Fast path without reads: every DN is new, so every reservation is created at
        version 1. If any already exists the whole save fails atomically (IntegrityError)
        and the careful path takes over to find out why."""
        if len({f.subject_key for f in facts_list}) != len(facts_list):
            return None
        to_save: list[Aggregate] = []
        outcomes = []
        for facts in facts_list:
            cert = self._new_certificate(org_uid, facts, meta, o)
            owner = str(cert.id)
            to_save.append(cert)
            to_save.append(
                Reservation(
                    key=org_dn_key(org_uid, facts.subject_key), owner=owner, org_uid=org_uid
                )
            )
            if not cert.is_ca:
                to_save.append(
                    Reservation(key=device_dn_key(facts.subject_key), owner=owner, org_uid=org_uid)
                )
            outcomes.append(Imported(owner, facts.fingerprint, facts.subject, cert.is_ca, True))
        to_save.extend(self._ensure_folders(org_uid, o.folder, meta))
        try:
            self.commit(*to_save)
        except Conflict:
            return None
        return outcomes

    def _import_careful(
        self, org_uid: str, facts_list: list[CertificateFacts], meta: dict[str, str], o: _Options
    ) -> list[Imported]:
        outcomes, to_save = self._prepare_import(org_uid, facts_list, meta, o)
        if to_save:
            self.commit(*to_save)
        return outcomes

    def _prepare_import(
        self, org_uid: str, facts_list: list[CertificateFacts], meta: dict[str, str], o: _Options
    ) -> tuple[list[Imported], list[Aggregate]]:
        """Everything an import would save (certificates, reservations, folders), unsaved."""
        pending: dict[str, Reservation] = {}
        to_save: list[Aggregate] = []
        outcomes = []
        for index, facts in enumerate(facts_list):
            existing = self._same_dn_in_org(org_uid, facts, index)
            if existing is not None:
                outcomes.append(
                    Imported(
                        str(existing.id), existing.fingerprint, facts.subject, existing.is_ca, False
                    )
                )
                continue
            cert = self._new_certificate(org_uid, facts, meta, o)
            owner = str(cert.id)
            try:
                self.claim(org_dn_key(org_uid, facts.subject_key), owner, org_uid, pending)
                if not cert.is_ca:
                    self.claim(device_dn_key(facts.subject_key), owner, org_uid, pending)
            except Conflict as exc:
                raise self._dn_conflict(index, facts.subject, exc) from None
            to_save.append(cert)
            outcomes.append(Imported(owner, facts.fingerprint, facts.subject, cert.is_ca, True))
        if to_save:
            to_save.extend(self._ensure_folders(org_uid, o.folder, meta))
            to_save.extend(pending.values())
        return outcomes, to_save

    def _same_dn_in_org(
        self, org_uid: str, facts: CertificateFacts, index: int
    ) -> Certificate | None:
        owner = self.owner_of(org_dn_key(org_uid, facts.subject_key))
        if owner is None:
            return None
        existing = self.get_typed(Certificate, owner, "certificate")
        if existing.fingerprint == facts.fingerprint:
            return existing
        raise Conflict(
            f"certificate {index}: another certificate with the DN {facts.subject!r} is already "
            "registered in this organization",
            index=index,
            certificate_id=owner,
        )

    @staticmethod
    def _dn_conflict(index: int, subject: str, exc: Conflict) -> Conflict:
        other_org = exc.extra.get("org_uid")
        return Conflict(
            f"certificate {index}: the device DN {subject!r} is already registered "
            "(device certificate DNs are unique across all organizations)",
            index=index,
            other_org_uid=other_org,
        )

    def _ensure_folders(self, org_uid: str, folder: str, meta: dict[str, str]) -> list[Folder]:
        created = []
        for path in ancestors(folder):
            fid = folder_id(org_uid, path)
            if fid in self.known_folders:
                continue
            existing = self.find(Folder, fid)
            if existing is None:
                created.append(Folder(org_uid=org_uid, path=path, meta=meta))
            elif existing.deleted:
                existing.restore(meta)
                created.append(existing)
            else:
                self.known_folders.add(fid)
        return created

    def certificate(self, org_uid: str, certificate_id: str) -> Certificate:
        return self.in_org(Certificate, org_uid, certificate_id, "certificate")

    def update_certificate(
        self,
        org_uid: str,
        certificate_id: str,
        changes: dict[str, Any],
        actor: Actor,
        expected_version: int | None = None,
    ) -> Certificate:
        """Apply a partial update in one save. Emits one event per changed field.

        Raises InvalidInput (unknown field, bad value, missing policy/user), Conflict
        (CA indicator cleared while another org holds the device DN), PreconditionFailed.
        """
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
        if expected_version is None:  # a background pin may race us: reload and apply again
            return self.retrying(
                lambda: self._update(org_uid, certificate_id, changes, actor, None)
            )
        return self._update(org_uid, certificate_id, changes, actor, expected_version)

    def _update(
        self,
        org_uid: str,
        certificate_id: str,
        changes: dict[str, Any],
        actor: Actor,
        expected_version: int | None,
    ) -> Certificate:
        cert = self.certificate(org_uid, certificate_id)
        self.check_version(cert.version, expected_version)
        meta = actor.meta()
        extra: list[Aggregate | None] = []
        if "name" in changes:
            cert.rename(changes["name"], meta)
        if "status" in changes:
            cert.set_status(changes["status"], meta)
        if "is_ca" in changes:
            extra.extend(self._change_ca_indicator(cert, bool(changes["is_ca"]), meta))
        if "policy_id" in changes:
            self.require_policy(org_uid, changes["policy_id"])
            cert.assign_policy(changes["policy_id"], meta)
        if "run_as_user" in changes:
            self._require_user(org_uid, changes["run_as_user"])
            cert.set_run_as_user(changes["run_as_user"], meta)
        if "registration" in changes:
            reg = changes["registration"] or {}
            template_id = reg.get("template_id")
            if template_id and self.owner_of(template_key(org_uid, template_id)) is None:
                raise InvalidInput(f"component template {template_id!r} does not exist")
            cert.set_registration(reg.get("template_id"), reg.get("initial_folder"), meta)
            if cert.registration_folder:
                extra.extend(self._ensure_folders(org_uid, cert.registration_folder, meta))
        if "pinned_host" in changes:
            cert.pin_host(changes["pinned_host"], meta)
        if "pinned_component" in changes:
            cert.pin_component(changes["pinned_component"], meta)
        if "folder" in changes:
            cert.move_to_folder(changes["folder"], meta)
            extra.extend(self._ensure_folders(org_uid, cert.folder, meta))
        self.commit(cert, *extra)
        return cert

    def _change_ca_indicator(
        self, cert: Certificate, is_ca: bool, meta: dict[str, str]
    ) -> list[Reservation | None]:
        if is_ca == cert.is_ca:
            return []
        cert.set_ca_indicator(is_ca, meta)
        key = device_dn_key(cert.subject_key)
        if is_ca:
            return [self.release(key, str(cert.id))]
        try:
            return [self.claim(key, str(cert.id), cert.org_uid, {})]
        except Conflict as exc:
            raise self._dn_conflict(0, str(cert.facts["subject"]), exc) from None

    def _require_user(self, org_uid: str, user_id: str | None) -> None:
        if user_id is None:
            return
        user = self.find(User, _uuid(user_id))
        if user is None or user.deleted or user.org_uid != org_uid:
            raise InvalidInput("run-as user must be a user of the same organization")

    def pin_host_on_first_connect(self, certificate_id: str, ip: str, request_id: str = "") -> None:
        """A successful connect: pins the host if the pin is empty (HostPinned) and records the
        first connect ever (FirstSeen), both with the certificate as actor, in one save."""
        self.retrying(lambda: self._pin_once(certificate_id, ip, request_id))

    def _pin_once(self, certificate_id: str, ip: str, request_id: str) -> None:
        cert = self.get_typed(Certificate, certificate_id, "certificate")
        if cert.deleted or (cert.pinned_host is not None and cert.seen):
            return
        actor = Actor(ActorKind.CERTIFICATE, certificate_id, cert.org_uid, request_id, ip)
        if cert.pinned_host is None:
            cert.pin_host(ip, actor.meta())
        cert.record_first_seen(ip, actor.meta())
        self.commit(cert)

    def delete_certificate(self, org_uid: str, certificate_id: str, actor: Actor) -> None:
        """Emits Certificate.Deleted and frees its DN reservations (history stays)."""
        self.retrying(lambda: self._delete(org_uid, certificate_id, actor))

    def _delete(self, org_uid: str, certificate_id: str, actor: Actor) -> None:
        cert = self.certificate(org_uid, certificate_id)
        cert.delete(actor.meta())
        owner = str(cert.id)
        self.commit(
            cert,
            self.release(org_dn_key(org_uid, cert.subject_key), owner),
            self.release(device_dn_key(cert.subject_key), owner),
        )


def _uuid(value: str) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        raise InvalidInput("not a user id") from None
