"""The authorization decision: the one function every broker adapter calls.

Hot path: dict lookups on an in-memory index built from the lookup table, never the
database. The index is refreshed incrementally from rows written after its position.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from application.lookup import CertRow, LookupSource, PolicyRow
from application.ports import AccessRequest, Action, Changes, ConnectRequest, Decision
from domain.topics import BoundPolicy, CompiledPolicy, PermissionSet
from domain.x509 import fingerprint_of_der

CHANGE_LOG = 10_000
TOPICS_PER_SESSION = 64  # decisions remembered per (certificate, client id) ...
TOPIC_ENTRIES = 200_000  # ... and in all (then everything is forgotten at once)
CACHED_TOPIC_LENGTH = 256  # longer topics are decided every time, never remembered
SESSIONS = 200_000  # bound policies remembered
SERVICE_TOPICS = ("manage",)
MYORG_PREFIX = "manage/cert/myorg/cid/"  # GroveStreams: a device asks which org it is in


def myorg_reply_topic(client_id: str) -> str:
    return f"manage/cert/myorg/client/{client_id}/reply"  # {org}/manage/... ; replies: {org}/cid/{id}/reply


def deny(reason: str, detail: str, row: CertRow | None = None, fp: str | None = None) -> Decision:
    return Decision(
        False,
        reason,
        detail,
        fingerprint=fp or (row.fingerprint if row else None),
        org_uid=row.org_uid if row else None,
        certificate_id=row.certificate_id if row else None,
    )


@dataclass(slots=True)
class _Entry:
    rows: dict[str, CertRow]  # certificate id -> row (a CA may be registered in several orgs)

    def live(self) -> list[CertRow]:
        return [r for r in self.rows.values() if not r.deleted]


class AuthzIndex:
    """fingerprint -> certificate rows, (org, policy id) -> compiled policy, plus a change log."""

    def __init__(self, source: LookupSource, clock: Callable[[], float] = time.time) -> None:
        self._source = source
        self.clock = clock  # the hot path calls it directly
        self._lock = threading.Lock()
        self._by_fp: dict[str, _Entry] = {}
        self._fp_of: dict[str, str] = {}
        self._policies: dict[tuple[str, str], CompiledPolicy] = {}
        self._policy_users: dict[tuple[str, str], set[str]] = {}
        self.bound: dict[tuple[str, str, str], BoundPolicy] = {}
        self.resolved: dict[str, CertRow | Decision] = {}  # fingerprint -> live row or why not
        self.allowed_cache: dict[tuple[str, str, bool, int | None, str | None], Decision] = {}
        # (certificate id, client id) -> (action, retain, topic) -> decision: a device uses the
        # same few topics over and over; each session keeps its own few (a device spraying
        # topics only churns its own), all cleared whenever the index changes
        self.topic_cache: dict[tuple[str, str], dict[tuple[str, bool, str], Decision]] = {}
        self.topic_entries = 0
        self.service_fingerprints: frozenset[str] = frozenset()
        self.position = 0
        self.generation = 0
        self._log: deque[tuple[int, frozenset[str], frozenset[str]]] = deque(maxlen=CHANGE_LOG)

    # -- keeping current --------------------------------------------------
    def refresh(self) -> int:
        """Apply lookup rows written since our position; returns how many rows changed."""
        with self._lock:
            changes = self._source.lookup_changes(self.position)
            if not changes.certificates and not changes.policies:
                self.position = max(self.position, changes.position)
                return 0
            kick: set[str] = set()
            recheck: set[str] = set()
            for policy in changes.policies:
                kick |= self._apply_policy(policy)
            for row in changes.certificates:
                self._apply_cert(row, kick, recheck)
                self._resolve(row.fingerprint)
            # generation first: a decision computed meanwhile sees it moved and is not kept
            self.generation += 1
            self.bound.clear()
            self.allowed_cache.clear()
            self.topic_cache.clear()
            self.topic_entries = 0
            self.position = changes.position
            self._log.append((self.generation, frozenset(kick), frozenset(recheck - kick)))
            return len(changes.certificates) + len(changes.policies)

    def _apply_policy(self, row: PolicyRow) -> set[str]:
        key = (row.org_uid, row.policy_id)
        had = key in self._policies
        if row.deleted:
            self._policies.pop(key, None)
        else:
            sets = [PermissionSet.from_json(s) for s in row.permission_sets]
            self._policies[key] = CompiledPolicy(sets)
        return set(self._policy_users.get(key, ())) if had else set()

    def _apply_cert(self, row: CertRow, kick: set[str], recheck: set[str]) -> None:
        old_fp = self._fp_of.get(row.certificate_id)
        old = self._by_fp[old_fp].rows.get(row.certificate_id) if old_fp in self._by_fp else None
        if old is not None:
            self._policy_users.get((old.org_uid, old.policy_id or ""), set()).discard(
                old.fingerprint
            )
            if old.policy_id != row.policy_id:
                kick.add(row.fingerprint)
            else:
                recheck.add(row.fingerprint)
        entry = self._by_fp.setdefault(row.fingerprint, _Entry({}))
        entry.rows[row.certificate_id] = row
        self._fp_of[row.certificate_id] = row.fingerprint
        if row.policy_id and not row.deleted:
            self._policy_users.setdefault((row.org_uid, row.policy_id), set()).add(row.fingerprint)

    def changes_since(self, generation: int) -> Changes:
        with self._lock:
            current = self.generation
            if generation >= current:
                return Changes(current)
            if not self._log or self._log[0][0] > generation + 1:
                return Changes(current, recheck=frozenset(self._by_fp))
            kick: set[str] = set()
            recheck: set[str] = set()
            for gen, k, r in self._log:
                if gen > generation:
                    kick |= k
                    recheck |= r
            return Changes(current, frozenset(kick), frozenset(recheck - kick))

    # -- lookups ----------------------------------------------------------
    def row(self, fingerprint: str) -> CertRow | Decision:
        """The one live row for a fingerprint, or the deny decision explaining why not."""
        found = self.resolved.get(fingerprint)
        if found is None:
            return deny("unknown-certificate", "the certificate is not registered", fp=fingerprint)
        return found

    def _resolve(self, fingerprint: str) -> None:
        found = self._compute_row(fingerprint)
        if isinstance(found, Decision) and found.reason == "unknown-certificate":
            self.resolved.pop(fingerprint, None)
        else:
            self.resolved[fingerprint] = found

    def _compute_row(self, fingerprint: str) -> CertRow | Decision:
        entry = self._by_fp.get(fingerprint)
        live = entry.live() if entry else []
        if not live:
            return deny("unknown-certificate", "the certificate is not registered", fp=fingerprint)
        if len(live) > 1:
            return deny(
                "ambiguous-certificate",
                "this CA certificate is registered in several organizations; "
                "a client must present a certificate registered in one",
                fp=fingerprint,
            )
        return live[0]

    def bound_policy(
        self, row: CertRow, client_id: str, generation: int | None = None
    ) -> BoundPolicy | None:
        """`generation`: the index generation read before `row` was (default: now)."""
        key = (row.certificate_id, client_id, row.pinned_component or "")
        bound = self.bound.get(key)
        if bound is None:
            generation = self.generation if generation is None else generation
            policy = self._policies.get((row.org_uid, row.policy_id or ""))
            if policy is None:
                return None
            values = {"org.uid": row.org_uid, "client.id": client_id}
            if row.pinned_component:
                values["component.id"] = row.pinned_component
            if row.common_name:
                values["cert.cn"] = row.common_name
            bound = policy.bind(values)
            if len(self.bound) >= SESSIONS:
                self.bound.clear()
            self.bound[key] = bound
            if self.generation != generation:  # refreshed meanwhile: do not keep it
                self.bound.pop(key, None)
        return bound

    def now(self) -> float:
        return self.clock()


class Authorization:
    """Implements the Authorizer port on top of the index. All decision logic lives here."""

    def __init__(
        self,
        index: AuthzIndex,
        on_first_connect: Callable[[str, str], None] | None = None,
    ) -> None:
        self.index = index
        self._on_first_connect = on_first_connect

    def certificate_usable(self, fingerprint: str, peer_ip: str | None) -> CertRow | Decision:
        """Chain, validity and host pin; no side effects."""
        found = self.index.row(fingerprint)
        if isinstance(found, Decision):
            return found
        row = found
        if not row.usable:
            return deny(row.blocked_reason.split(":", 1)[0], row.blocked_reason, row)
        now = self.index.now()
        if now < row.not_before:
            return deny("not-yet-valid", "a certificate of the chain is not valid yet", row)
        if now > row.not_after:
            return deny("expired", "a certificate of the chain has expired", row)
        if peer_ip is not None and row.pinned_host is not None and row.pinned_host != peer_ip:
            return deny("pinned-elsewhere", f"pinned to another host, not {peer_ip}", row)
        return row

    def authorize_connect(self, request: ConnectRequest) -> Decision:
        """Allow a TLS client in; the first successful connect pins the peer IP."""
        fingerprint = fingerprint_of_der(request.certificate_der)
        return self.check_connect(fingerprint, request.peer_ip, pin=True)

    def check_connect(self, fingerprint: str, peer_ip: str, pin: bool = False) -> Decision:
        if fingerprint in self.index.service_fingerprints:
            return Decision(True, "service", "certwarden service principal", fingerprint)
        found = self.certificate_usable(fingerprint, peer_ip)
        if isinstance(found, Decision):
            return found
        if found.policy_id is None:
            return deny("no-policy", "the certificate has no policy", found)
        first = found.pinned_host is None or not found.seen
        if pin and first and self._on_first_connect is not None:
            self._on_first_connect(found.certificate_id, peer_ip)
        return Decision(
            True,
            "allowed",
            "certificate usable",
            found.fingerprint,
            found.org_uid,
            found.certificate_id,
        )

    def authorize(self, request: AccessRequest) -> Decision:
        """PUBLISH / SUBSCRIBE / RECEIVE on a topic; everything outside {orgUid}/ is denied."""
        index = self.index
        if request.fingerprint in index.service_fingerprints:
            return self._service(request)
        # read before the row: a refresh replaces rows first and moves the generation after,
        # so a decision built on a row it replaced is never kept for later requests
        generation = index.generation
        # hot path inlined (the broker asks for every publish and delivery): the common case
        # is a usable, valid, correctly pinned certificate; anything else takes the full path
        row = index.resolved.get(request.fingerprint)
        now = index.clock()
        if (
            row is None
            or row.__class__ is not CertRow
            or not row.usable
            or not row.not_before <= now <= row.not_after
            or (row.pinned_host is not None and row.pinned_host != request.peer_ip)
        ):
            found = self.certificate_usable(request.fingerprint, request.peer_ip)
            if isinstance(found, Decision):
                return found
            row = found
        if TYPE_CHECKING:  # the fast path's class check narrows it at run time
            assert isinstance(row, CertRow)
        topic = request.topic
        if topic.startswith("manage/"):
            return self._myorg(request, row)
        org = row.org_uid
        if not (topic.startswith(org) and topic.startswith("/", len(org))):
            return deny("outside-namespace", f"topics must start with {row.org_uid}/", row)
        action = request.action
        session = (row.certificate_id, request.client_id)
        cache = index.topic_cache.get(session)
        seen = (action, request.retain, topic)
        if cache is not None:
            decision = cache.get(seen)
            if decision is not None:
                return decision
        decision = self._match(request, row, index, generation)
        if len(topic) > CACHED_TOPIC_LENGTH:
            return decision
        if index.topic_entries >= TOPIC_ENTRIES:
            index.topic_cache.clear()
            index.topic_entries = 0
            cache = None
        if cache is None or len(cache) >= TOPICS_PER_SESSION:
            cache = index.topic_cache[session] = {}
        cache[seen] = decision
        index.topic_entries += 1  # an upper bound (a replaced session's entries still count)
        if index.generation != generation:  # the index changed while we decided: the
            cache.pop(seen, None)  # answer stands for this request, not for later ones
        return decision

    def _match(
        self, request: AccessRequest, row: CertRow, index: AuthzIndex, generation: int
    ) -> Decision:
        """The policy's answer for a usable certificate on a topic of its organization."""
        topic = request.topic
        bound = index.bound_policy(row, request.client_id, generation)
        if bound is None:
            return deny("no-policy", "the certificate has no (existing) policy", row)
        action = request.action
        if action is Action.PUBLISH:
            match = bound.can_publish(topic, request.retain)
        elif action is Action.SUBSCRIBE:
            match = bound.can_subscribe(topic)
        else:
            match = bound.can_receive(topic)
        # decisions are immutable per (certificate, action, rule) until the index changes
        key = (row.certificate_id, action, request.retain, match.permission_set, match.pattern)
        cache = index.allowed_cache
        decision = cache.get(key)
        if decision is not None:
            return decision
        if len(cache) > 200_000:
            cache.clear()
        if not match.allowed:
            needed = "PUBLISH_RETAIN_MESSAGE" if request.retain else str(action)
            decision = deny(
                "no-matching-permission", f"no permission set grants {needed} here", row
            )
        else:
            decision = Decision(
                True,
                "allowed",
                f"permission set {match.permission_set} pattern {match.pattern!r}",
                row.fingerprint,
                row.org_uid,
                row.certificate_id,
                {
                    "policy_id": row.policy_id,
                    "permission_set": match.permission_set,
                    "pattern": match.pattern,
                },
            )
        cache[key] = decision
        if index.generation != generation:
            cache.pop(key, None)
        return decision

    def _myorg(self, request: AccessRequest, row: CertRow) -> Decision:
        """GroveStreams' org discovery, outside any org namespace: a usable certificate may
        publish `manage/cert/myorg/cid/{component}` and subscribe to / receive the reply on
        `manage/cert/myorg/client/{its own client id}/reply` (private to the connection)."""
        topic, action = request.topic, request.action
        if action is Action.PUBLISH and topic.startswith(MYORG_PREFIX) and not request.retain:
            rest = topic[len(MYORG_PREFIX) :]
            if rest and not any(c in rest for c in "/+#"):
                return Decision(
                    True,
                    "myorg",
                    "org discovery request",
                    row.fingerprint,
                    row.org_uid,
                    row.certificate_id,
                )
        if action is not Action.PUBLISH and topic == myorg_reply_topic(request.client_id):
            return Decision(
                True,
                "myorg",
                "org discovery reply",
                row.fingerprint,
                row.org_uid,
                row.certificate_id,
            )
        return deny("outside-namespace", f"topics must start with {row.org_uid}/", row)

    def _service(self, request: AccessRequest) -> Decision:
        levels = request.topic.split("/")
        ok = (
            request.action is Action.PUBLISH
            and len(levels) >= 3
            and (levels[1] in SERVICE_TOPICS or (levels[1] == "cid" and levels[-1] == "reply"))
        )
        if ok and all(level not in ("+", "#") for level in levels):
            return Decision(
                True, "service", "service principal: manage and reply topics", request.fingerprint
            )
        return deny(
            "service-restricted",
            "the service principal only publishes manage/reply topics",
            fp=request.fingerprint,
        )

    def changes_since(self, generation: int) -> Changes:
        return self.index.changes_since(generation)
