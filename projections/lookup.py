"""Authorization lookup table: fingerprint -> org, effective status, policy, pins, validity.

Effective status folds the chain in: a certificate is usable only if it and every
certificate above it are ACTIVE and not deleted, and the chain reaches a self-signed
root imported in the same organization (issuer resolved by DN + AKI, signature verified).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from application.lookup import PolicyRow
from domain.x509 import signature_verifies
from projections.base import Handler, ViewProjection
from projections.db import Tx, ViewDb

MAX_DEPTH = 16

CERT_COLUMNS = (
    "certificate_id",
    "org_uid",
    "fingerprint",
    "common_name",
    "subject_key",
    "issuer_key",
    "ski",
    "aki",
    "self_signed",
    "status",
    "own_not_before",
    "own_not_after",
    "pem",
    "parent_id",
    "usable",
    "blocked_reason",
    "not_before",
    "not_after",
    "chain",
    "policy_id",
    "pinned_host",
    "pinned_component",
    "deleted",
    "position",
    "seen",
)


@dataclass(slots=True)
class _Cert:
    certificate_id: str
    org_uid: str
    fingerprint: str
    common_name: str | None
    subject_key: str
    issuer_key: str
    ski: str | None
    aki: str | None
    self_signed: bool
    status: str
    own_not_before: float
    own_not_after: float
    pem: str
    parent_id: str | None = None
    usable: bool = False
    blocked_reason: str = ""
    not_before: float = 0.0
    not_after: float = 0.0
    chain: list[str] = field(default_factory=list)
    policy_id: str | None = None
    pinned_host: str | None = None
    pinned_component: str | None = None
    deleted: bool = False
    position: int = 0
    seen: bool = False

    def values(self) -> tuple[Any, ...]:
        return (
            self.certificate_id,
            self.org_uid,
            self.fingerprint,
            self.common_name,
            self.subject_key,
            self.issuer_key,
            self.ski,
            self.aki,
            int(self.self_signed),
            self.status,
            self.own_not_before,
            self.own_not_after,
            self.pem,
            self.parent_id,
            int(self.usable),
            self.blocked_reason,
            self.not_before,
            self.not_after,
            json.dumps(self.chain),
            self.policy_id,
            self.pinned_host,
            self.pinned_component,
            int(self.deleted),
            self.position,
            int(self.seen),
        )


PREFETCH_LIMIT = 100_000


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


class LookupProjection(ViewProjection):
    name = "lookup"
    tables = ("lookup_certificates", "lookup_policies")
    live_indexes = ("lookup_certificates_position",)  # the authorization index's refresh
    version = 2

    def __init__(self) -> None:
        self.listeners: list[Any] = []
        self._clear()

    def _clear(self) -> None:
        self.certs: dict[str, _Cert] = {}
        self.children: dict[str, set[str]] = {}
        self.by_subject: dict[tuple[str, str], set[str]] = {}
        self.orphans: dict[tuple[str, str], set[str]] = {}  # (org, issuer_key) -> ids
        self.policies: dict[tuple[str, str], PolicyRow] = {}
        self.policy_keys: dict[str, tuple[str, str]] = {}  # aggregate id -> (org, policy id)
        self._dirty: set[str] = set()
        self._dirty_policies: dict[tuple[str, str], tuple[str, int]] = {}
        # Signature checks done ahead on the reader thread (see `prefetch`): hints only.
        self._issuers: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
        self._verified: dict[tuple[str, str], bool] = {}

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS lookup_certificates ("
            " certificate_id TEXT PRIMARY KEY, org_uid TEXT NOT NULL, fingerprint TEXT NOT NULL,"
            " common_name TEXT, subject_key TEXT NOT NULL, issuer_key TEXT NOT NULL, ski TEXT,"
            " aki TEXT, self_signed INTEGER NOT NULL, status TEXT NOT NULL,"
            " own_not_before DOUBLE PRECISION, own_not_after DOUBLE PRECISION, pem TEXT NOT NULL,"
            " parent_id TEXT, usable INTEGER NOT NULL, blocked_reason TEXT NOT NULL,"
            " not_before DOUBLE PRECISION, not_after DOUBLE PRECISION, chain TEXT NOT NULL,"
            " policy_id TEXT, pinned_host TEXT, pinned_component TEXT, deleted INTEGER NOT NULL,"
            " position BIGINT NOT NULL, seen INTEGER NOT NULL DEFAULT 0)",
            "CREATE INDEX IF NOT EXISTS lookup_certificates_position ON lookup_certificates (position)",
            "CREATE INDEX IF NOT EXISTS lookup_certificates_fp ON lookup_certificates (fingerprint)",
            "CREATE TABLE IF NOT EXISTS lookup_policies (aggregate_id TEXT NOT NULL,"
            " org_uid TEXT NOT NULL, policy_id TEXT NOT NULL, permission_sets TEXT NOT NULL,"
            " deleted INTEGER NOT NULL, position BIGINT NOT NULL, PRIMARY KEY (org_uid, policy_id))",
        ]

    def handlers(self) -> dict[str, Handler]:
        c = "Certificate."
        return {
            c + "Imported": self._imported,
            c + "Activated": self._status,
            c + "Deactivated": self._status,
            c + "PolicyAssigned": self._policy_assigned,
            c + "HostPinned": self._host,
            c + "HostPinCleared": self._host,
            c + "ComponentPinned": self._component,
            c + "ComponentPinCleared": self._component,
            c + "Deleted": self._deleted,
            c + "FirstSeen": self._first_seen,
            "Policy.Created": self._policy,
            "Policy.PermissionSetsReplaced": self._policy,
            "Policy.Deleted": self._policy,
        }

    # -- state ----------------------------------------------------------------
    def load(self, db: ViewDb) -> None:
        self._clear()
        for row in db.query(f"SELECT {', '.join(CERT_COLUMNS)} FROM lookup_certificates"):  # noqa: S608
            data = dict(zip(CERT_COLUMNS, row, strict=True))
            data["self_signed"] = bool(data["self_signed"])
            data["usable"] = bool(data["usable"])
            data["deleted"] = bool(data["deleted"])
            data["seen"] = bool(data["seen"])
            data["chain"] = json.loads(data["chain"])
            cert = _Cert(**data)
            self._index(cert)
        for cert in self.certs.values():
            if cert.self_signed or cert.certificate_id in self.children:
                self._issuers.setdefault((cert.org_uid, cert.subject_key), []).append(
                    (cert.pem, cert.ski)
                )
        for agg, org, pid, sets, deleted in db.query(
            "SELECT aggregate_id, org_uid, policy_id, permission_sets, deleted FROM lookup_policies"
        ):
            self.policies[(org, pid)] = PolicyRow(org, pid, json.loads(sets), bool(deleted))
            self.policy_keys[agg] = (org, pid)

    def _index(self, cert: _Cert) -> None:
        self.certs[cert.certificate_id] = cert
        self.by_subject.setdefault((cert.org_uid, cert.subject_key), set()).add(cert.certificate_id)
        if cert.parent_id:
            self.children.setdefault(cert.parent_id, set()).add(cert.certificate_id)
        elif not cert.self_signed and not cert.deleted:
            self.orphans.setdefault((cert.org_uid, cert.issuer_key), set()).add(cert.certificate_id)

    def _touch(self, cert: _Cert, position: int) -> None:
        cert.position = position
        self._dirty.add(cert.certificate_id)

    def prefetch(self, batch: Sequence[tuple[int, Any]]) -> None:
        """On the reader thread: check the signatures the next batch's imports will need.

        Verifying is the costly part of resolving a chain and releases the GIL, so it runs
        beside the apply thread. Issuers are tracked from the event stream itself (never from
        the apply thread's state); a result is a pure function of the two PEMs, so a stale or
        missing one only means `_resolve_parent` verifies by itself.
        """
        if len(self._verified) > PREFETCH_LIMIT:
            self._verified.clear()  # speculation that was never used
        for _, event in batch:
            if type(event).__qualname__ != "Certificate.Imported":
                continue
            f = event.facts
            if f["self_signed"] or f.get("ca_detected"):
                issuers = self._issuers.setdefault((event.org_uid, f["subject_key"]), [])
                issuers.append((f["pem"], f.get("ski")))
            if f["self_signed"]:
                continue
            aki = f.get("aki")
            for pem, ski in self._issuers.get((event.org_uid, f["issuer_key"]), ()):
                if pem != f["pem"] and not (aki and ski and aki != ski):
                    self._verified[(f["pem"], pem)] = signature_verifies(f["pem"], pem)

    # -- handlers ---------------------------------------------------------------
    def _imported(self, event: Any, position: int) -> None:
        f = event.facts
        cert = _Cert(
            certificate_id=str(event.originator_id),
            org_uid=event.org_uid,
            fingerprint=f["fingerprint"],
            common_name=f.get("common_name"),
            subject_key=f["subject_key"],
            issuer_key=f["issuer_key"],
            ski=f.get("ski"),
            aki=f.get("aki"),
            self_signed=bool(f["self_signed"]),
            status="ACTIVE",
            own_not_before=_epoch(f["not_before"]),
            own_not_after=_epoch(f["not_after"]),
            pem=f["pem"],
            policy_id=event.policy_id,
        )
        self._index(cert)
        self._resolve_parent(cert)
        # certificates imported before their issuer get adopted now
        for orphan_id in list(self.orphans.get((cert.org_uid, cert.subject_key), ())):
            orphan = self.certs[orphan_id]
            if orphan.certificate_id != cert.certificate_id and not orphan.deleted:
                self._resolve_parent(orphan)
                self._recompute_tree(orphan, position)
        self._recompute_tree(cert, position)

    def _resolve_parent(self, cert: _Cert) -> None:
        old = cert.parent_id
        cert.parent_id = None
        if not cert.self_signed:
            for candidate_id in sorted(self.by_subject.get((cert.org_uid, cert.issuer_key), ())):
                parent = self.certs[candidate_id]
                if parent.deleted or parent.certificate_id == cert.certificate_id:
                    continue
                if cert.aki and parent.ski and cert.aki != parent.ski:
                    continue
                verified = self._verified.pop((cert.pem, parent.pem), None)
                if verified is None:
                    verified = signature_verifies(cert.pem, parent.pem)
                if verified:
                    cert.parent_id = parent.certificate_id
                    break
        if old:
            self.children.get(old, set()).discard(cert.certificate_id)
        if cert.parent_id:
            self.children.setdefault(cert.parent_id, set()).add(cert.certificate_id)
        orphan_key = (cert.org_uid, cert.issuer_key)
        if cert.parent_id is None and not cert.self_signed and not cert.deleted:
            self.orphans.setdefault(orphan_key, set()).add(cert.certificate_id)
        else:
            self.orphans.get(orphan_key, set()).discard(cert.certificate_id)

    def _recompute(self, cert: _Cert) -> None:
        chain: list[str] = []
        reason = ""
        not_before, not_after = cert.own_not_before, cert.own_not_after
        node: _Cert | None = cert
        while node is not None:
            chain.append(node.certificate_id)
            not_before = max(not_before, node.own_not_before)
            not_after = min(not_after, node.own_not_after)
            if not reason and node.deleted:
                reason = f"deleted: {node.certificate_id} was deleted"
            if not reason and node.status != "ACTIVE":
                reason = f"inactive: certificate {node.certificate_id} in the chain is INACTIVE"
            if node.self_signed:
                break
            if node.parent_id is None or len(chain) > MAX_DEPTH:
                reason = reason or (
                    "incomplete-chain: the chain does not reach a self-signed root "
                    "registered in this organization"
                )
                break
            node = self.certs.get(node.parent_id)
        cert.chain, cert.blocked_reason = chain, reason
        cert.usable = not reason
        cert.not_before, cert.not_after = not_before, not_after

    def _recompute_tree(self, root: _Cert, position: int) -> None:
        stack = [root]
        seen: set[str] = set()
        while stack:
            cert = stack.pop()
            if cert.certificate_id in seen:
                continue
            seen.add(cert.certificate_id)
            before = (cert.usable, cert.blocked_reason, cert.not_before, cert.not_after, cert.chain)
            self._recompute(cert)
            after = (cert.usable, cert.blocked_reason, cert.not_before, cert.not_after, cert.chain)
            if before != after or cert is root:
                self._touch(cert, position)
            stack.extend(self.certs[c] for c in self.children.get(cert.certificate_id, ()))

    def _status(self, event: Any, position: int) -> None:
        cert = self.certs[str(event.originator_id)]
        cert.status = "ACTIVE" if type(event).__name__ == "Activated" else "INACTIVE"
        self._recompute_tree(cert, position)

    def _policy_assigned(self, event: Any, position: int) -> None:
        cert = self.certs[str(event.originator_id)]
        cert.policy_id = event.policy_id
        self._touch(cert, position)

    def _host(self, event: Any, position: int) -> None:
        cert = self.certs[str(event.originator_id)]
        cert.pinned_host = getattr(event, "ip", None)
        self._touch(cert, position)

    def _component(self, event: Any, position: int) -> None:
        cert = self.certs[str(event.originator_id)]
        cert.pinned_component = getattr(event, "component_id", None)
        self._touch(cert, position)

    def _first_seen(self, event: Any, position: int) -> None:
        cert = self.certs[str(event.originator_id)]
        cert.seen = True
        self._touch(cert, position)

    def _deleted(self, event: Any, position: int) -> None:
        cert = self.certs[str(event.originator_id)]
        cert.deleted = True
        self.by_subject.get((cert.org_uid, cert.subject_key), set()).discard(cert.certificate_id)
        for child_id in list(self.children.get(cert.certificate_id, ())):
            self._resolve_parent(self.certs[child_id])
        self._recompute_tree(cert, position)
        for child_id in list(self.children.get(cert.certificate_id, ())):
            self._recompute_tree(self.certs[child_id], position)

    def _policy(self, event: Any, position: int) -> None:
        agg = str(event.originator_id)
        if agg not in self.policy_keys:
            self.policy_keys[agg] = (event.org_uid, event.policy_id)
        key = self.policy_keys[agg]
        previous = self.policies.get(key)
        sets = getattr(event, "permission_sets", None)
        if sets is None:
            sets = previous.permission_sets if previous else []
        deleted = type(event).__name__ == "Deleted"
        self.policies[key] = PolicyRow(key[0], key[1], sets, deleted)
        self._dirty_policies[key] = (agg, position)

    # -- writing and reading -------------------------------------------------------
    def flush(self, tx: Tx) -> None:
        tx.bulk_upsert(
            "lookup_certificates",
            ("certificate_id",),
            CERT_COLUMNS,
            [self.certs[i].values() for i in self._dirty],
        )
        tx.executemany(
            "INSERT INTO lookup_policies"
            " (aggregate_id, org_uid, policy_id, permission_sets, deleted, position)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (org_uid, policy_id) DO UPDATE SET"
            " aggregate_id = excluded.aggregate_id, permission_sets = excluded.permission_sets,"
            " deleted = excluded.deleted, position = excluded.position",
            [
                (
                    agg,
                    k[0],
                    k[1],
                    json.dumps(self.policies[k].permission_sets),
                    int(self.policies[k].deleted),
                    pos,
                )
                for k, (agg, pos) in self._dirty_policies.items()
            ],
        )
        self._dirty.clear()
        self._dirty_policies.clear()

    def after_commit(self) -> None:
        for listener in self.listeners:
            listener()
