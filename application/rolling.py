"""Rolling over MQTT: a device registers its next certificate chain and retires the old one.

GroveStreams' device API: `{org}/manage/cert/register/cid/{c}` with
`{"curCerts": [pem...], "newCerts": [pem...]}` and `{org}/manage/cert/unregister/cid/{c}`
with `{"certs": [pem...]}`. The caller is the certificate that authenticated the MQTT
connection; everything it may touch is bounded by that certificate's own chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from application.certificates import _Options, device_dn_key, org_dn_key
from application.components import ComponentCommands
from domain.certificate import Certificate
from domain.errors import Conflict, DomainError, InvalidInput
from domain.meta import Actor, ActorKind
from domain.x509 import CertificateFacts, parse_bundle

MAX_CHAIN = 10


@dataclass(frozen=True, slots=True)
class RollResult:
    success: bool
    reason: str
    certificate_ids: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "reason": self.reason,
            "certificateIds": self.certificate_ids,
        }


def _pems(value: Any, what: str) -> bytes:
    if not isinstance(value, list) or not value or len(value) > MAX_CHAIN:
        raise InvalidInput(f"{what} must be a list of 1-{MAX_CHAIN} PEM strings")
    if not all(isinstance(p, str) for p in value):
        raise InvalidInput(f"{what} must hold PEM strings")
    return "".join(p if p.endswith("\n") else p + "\n" for p in value).encode()


class RollingCommands(ComponentCommands):
    def chain_of(self, certificate: Certificate) -> list[Certificate]:
        """The certificate and its issuers within its organization (by DN, from the event store)."""
        chain = [certificate]
        while len(chain) <= MAX_CHAIN and not chain[-1].facts.get("self_signed"):
            issuer_key = str(chain[-1].facts["issuer_key"])
            owner = self.owner_of(org_dn_key(certificate.org_uid, issuer_key))
            if owner is None:
                break
            chain.append(self.get_typed(Certificate, owner, "certificate"))
        return chain

    def register_over_mqtt(
        self, certificate_id: str, payload: dict[str, Any], peer_ip: str = ""
    ) -> RollResult:
        """Import the device's new chain, linked to the chain it is connected with.

        Accepted only if every curCerts certificate belongs to the caller's chain and the
        caller's own certificate is among them. The new leaf inherits policy, run-as user,
        registration, folder and pins. Emits Certificate.Imported (+ Reservations, Folders),
        Certificate.Rolled on the old leaf, PredecessorRecorded on the new one, in one save.
        """

        def attempt() -> RollResult:
            current = self.get_typed(Certificate, certificate_id, "certificate")
            actor = Actor(ActorKind.CERTIFICATE, certificate_id, current.org_uid, "", peer_ip)
            return self._register(current, payload, actor)

        try:
            return self.retrying(attempt)  # a background pin of the same certificate may race
        except DomainError as exc:
            return RollResult(False, exc.detail)

    def _register(self, current: Certificate, payload: dict[str, Any], actor: Actor) -> RollResult:
        cur = parse_bundle(_pems(payload.get("curCerts"), "curCerts"), max_certs=MAX_CHAIN)
        new = parse_bundle(_pems(payload.get("newCerts"), "newCerts"), max_certs=MAX_CHAIN)
        own = {c.fingerprint for c in self.chain_of(current)}
        if current.fingerprint not in {c.fingerprint for c in cur}:
            raise InvalidInput("curCerts must include the certificate this connection uses")
        if not {c.fingerprint for c in cur} <= own:
            raise InvalidInput("curCerts holds certificates outside this connection's chain")
        leaves = [c for c in new if not c.ca_detected]
        if len(leaves) != 1:
            raise InvalidInput("newCerts must hold exactly one device (non-CA) certificate")
        if leaves[0].fingerprint == current.fingerprint:
            raise InvalidInput("newCerts repeats the current certificate")
        return self._import_successor(current, new, leaves[0], actor)

    def _import_successor(
        self,
        current: Certificate,
        new: list[CertificateFacts],
        leaf: CertificateFacts,
        actor: Actor,
    ) -> RollResult:
        meta = actor.meta()
        options = _Options(None, None, None, current.folder, None)
        outcomes, to_save = self._prepare_import(current.org_uid, new, meta, options)
        by_fp = {o.fingerprint: o for o in outcomes}
        successor_id = by_fp[leaf.fingerprint].certificate_id
        successor = next(
            (a for a in to_save if isinstance(a, Certificate) and str(a.id) == successor_id), None
        )
        if successor is None:  # already registered: idempotent only if it is our successor
            if current.successor_id == successor_id:
                return RollResult(True, "already registered", [o.certificate_id for o in outcomes])
            raise Conflict("the new certificate is already registered")
        successor.assign_policy(current.policy_id, meta)
        successor.set_run_as_user(current.run_as_user, meta)
        successor.set_registration(current.registration_template, current.registration_folder, meta)
        successor.pin_host(current.pinned_host, meta)
        successor.pin_component(current.pinned_component, meta)
        successor.record_predecessor(str(current.id), meta)
        current.roll_to(successor_id, meta)
        self.commit(*to_save, current)
        return RollResult(True, "registered", [o.certificate_id for o in outcomes])

    def unregister_over_mqtt(
        self,
        certificate_id: str,
        payload: dict[str, Any],
        peer_ip: str = "",
        dependents: Callable[[str], int] = lambda _cid: 0,
    ) -> RollResult:
        """Deactivate and delete the listed certificates (history kept).

        Allowed only for certificates in the chain that authenticated the call; a CA that
        still issues other live certificates (shared by other devices) is refused.
        Emits Certificate.Deactivated + Certificate.Deleted, Reservation.Released.
        """
        try:
            return self.retrying(
                lambda: self._unregister(certificate_id, payload, peer_ip, dependents)
            )
        except DomainError as exc:
            return RollResult(False, exc.detail)

    def _unregister(
        self,
        certificate_id: str,
        payload: dict[str, Any],
        peer_ip: str,
        dependents: Callable[[str], int],
    ) -> RollResult:
        current = self.get_typed(Certificate, certificate_id, "certificate")
        actor = Actor(ActorKind.CERTIFICATE, certificate_id, current.org_uid, "", peer_ip)
        listed = parse_bundle(_pems(payload.get("certs"), "certs"), max_certs=MAX_CHAIN)
        chain = {c.fingerprint: c for c in self.chain_of(current)}
        targets = []
        for facts in listed:
            cert = chain.get(facts.fingerprint)
            if cert is None:
                raise InvalidInput(f"{facts.subject} is not in this connection's chain")
            # in the caller's chain a CA issues exactly one certificate; more = shared CA
            if cert.is_ca and dependents(str(cert.id)) > 1:
                raise InvalidInput(f"{facts.subject} is a CA other certificates depend on")
            targets.append(cert)
        meta = actor.meta()
        released = []
        for cert in targets:
            cert.set_status("INACTIVE", meta)
            cert.delete(meta)
            released.append(self.release(org_dn_key(cert.org_uid, cert.subject_key), str(cert.id)))
            released.append(self.release(device_dn_key(cert.subject_key), str(cert.id)))
        self.commit(*targets, *released)
        return RollResult(True, "unregistered", [str(c.id) for c in targets])
