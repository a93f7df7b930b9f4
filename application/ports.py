"""Ports: what the application needs from the outside world, as Protocols."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class Clock(Protocol):
    """Source of the current time (aware UTC)."""

    def now(self) -> datetime: ...


class Action(StrEnum):
    """What a client asks to do on a topic."""

    PUBLISH = "PUBLISH"
    SUBSCRIBE = "SUBSCRIBE"
    RECEIVE = "RECEIVE"


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A TLS client presenting its leaf certificate to the broker."""

    certificate_der: bytes
    client_id: str
    peer_ip: str


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """A connected client asking to publish, subscribe or receive on a topic."""

    fingerprint: str  # lowercase hex SHA-256 of the leaf certificate DER
    client_id: str
    peer_ip: str
    action: Action
    topic: str  # topic name, or topic filter for SUBSCRIBE
    retain: bool = False
    qos: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """Allow or deny, and why (reason is a stable machine code, detail is for humans)."""

    allowed: bool
    reason: str
    detail: str = ""
    fingerprint: str | None = None
    org_uid: str | None = None
    certificate_id: str | None = None
    matched: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in the authorization index since a generation.

    kick: fingerprints whose live sessions must be disconnected now.
    recheck: fingerprints whose live sessions must be re-authorized (connect decision).
    Any change at all means cached ACL decisions must be dropped.
    """

    generation: int
    kick: frozenset[str] = frozenset()
    recheck: frozenset[str] = frozenset()


class Authorizer(Protocol):
    """The one decision point every broker adapter calls."""

    def authorize_connect(self, request: ConnectRequest) -> Decision: ...

    def authorize(self, request: AccessRequest) -> Decision: ...

    def changes_since(self, generation: int) -> Changes: ...


class PolicyUsage(Protocol):
    """Read-model question the registry asks before deleting a policy."""

    def count_using_policy(self, org_uid: str, policy_id: str) -> int: ...


class ProjectionSync(Protocol):
    """Read-your-writes: block until read models have processed a position."""

    def wait(self, position: int, timeout: float = 5.0) -> None: ...


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A refused connect or a denied publish/subscribe, as kept in the decision log."""

    at: float
    org_uid: str | None
    certificate_id: str | None
    fingerprint: str | None
    client_id: str
    peer_ip: str
    action: str  # CONNECT, PUBLISH, SUBSCRIBE, RECEIVE
    topic: str
    reason: str
    detail: str


class DecisionLog(Protocol):
    """Where denials and component activity go. Must never block the broker's hot path."""

    def record(self, entry: DecisionRecord) -> None: ...

    def seen(self, org_uid: str, component_id: str, at: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Publish:
    """A message certwarden asks the broker to publish (replies to device requests)."""

    topic: str
    payload: bytes
    qos: int = 1
    correlation_data: bytes | None = None


class TrustAnchors(Protocol):
    """Where the broker's TLS layer finds the CAs and self-signed device certificates it
    accepts. Adding works live (capath is read lazily); removal is enforced by the decision."""

    def replace(self, pems: list[str]) -> None: ...
