"""Ports: what the application needs from the outside world, as Protocols."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple, Protocol
from uuid import UUID


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

    def recheck_connect(self, request: ConnectRequest) -> Decision:
        """Re-authorize a live session after a change; no side effects (no pinning, no log)."""
        ...

    def authorize(self, request: AccessRequest) -> Decision: ...

    def changes_since(self, generation: int) -> Changes: ...

    def on_message(
        self,
        fingerprint: str,
        client_id: str,
        peer_ip: str,
        topic: str,
        payload: bytes,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> list[Publish]:
        """A request a connected device published; returns the replies to publish as the broker.

        The broker forwards only `manage/cert/myorg/cid/+`, `+/manage/cert/register/cid/+` and
        `+/manage/cert/unregister/cid/+` messages it already allowed (PUBLISH), with the
        MQTT 5 response topic and correlation data when given (None otherwise). Returns [] for
        anything not handled; replies go only to subscribers allowed to RECEIVE them. Must be
        thread-safe; an exception means no reply.
        """
        ...


class PolicyUsage(Protocol):
    """Read-model question the registry asks before deleting a policy."""

    def count_using_policy(self, org_uid: str, policy_id: str) -> int: ...


class ProjectionSync(Protocol):
    """Read-your-writes: block until read models have processed a position."""

    def wait(self, position: int, timeout: float = 5.0) -> None: ...

    def expect(self, events: int) -> RestoreFeed | None:
        """About this many events are about to be appended at once (a restore): get ready
        to catch up on them. May return a feed to send the events to as they are written
        (where another process can fill read models from them meanwhile), or None."""
        ...


class RestoreFeed(Protocol):
    """Read models filled from a restore's events while the events are being written (a
    helper process, on PostgreSQL). The events go in in position order before they are
    committed; whatever the feed writes commits only after commit() - which the restore
    calls once its own transaction has committed - and never after abort(). A feed that
    fails only costs time: the read models catch up from the event store as usual."""

    def begin(self, base: int) -> None:
        """The events sent next take positions base + 1, base + 2, ... in order."""
        ...

    def send(self, events: Sequence[tuple[UUID, int, str, bytes, dict[str, Any] | None]]) -> None:
        """(aggregate id, version, topic, the state as stored, the state as the transcoder
        decodes it - or None if not at hand) for each event, in order."""
        ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


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


# -- certificate operations ------------------------------------------------------------


class PublishError(Exception):
    """The MQTT broker is unreachable, refused the client, or did not acknowledge in time."""


class CommandPublisher(Protocol):
    """Publishes operation commands through the broker as certwarden's service identity.

    publish() hands one message over (blocking while the in-flight window is full);
    mark() numbers the messages published so far; wait_acked(mark) returns once every
    QoS>0 message up to that mark is acknowledged. open(), publish() and wait_acked()
    raise PublishError; publish() and wait_acked() may be called from different threads."""

    def open(self) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None: ...

    def mark(self) -> int: ...

    def wait_acked(self, mark: int, timeout: float) -> None: ...

    def close(self) -> None: ...


class PackageUsage(Protocol):
    """Read-model question asked before deleting an action package."""

    def count_using_package(self, org_uid: str, package_id: str) -> int: ...


class MailError(Exception):
    """The SMTP server is unreachable, refused the login or the message."""


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str  # e.g. "text/csv"
    data: bytes


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    to: tuple[str, ...]
    subject: str
    text: str
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()


class Mailer(Protocol):
    """Sends one message to every recipient; raises MailError."""

    def send(self, email: OutgoingEmail) -> None: ...


class CronCalendar(Protocol):
    """Cron arithmetic in an IANA zone; instants in and out are aware UTC datetimes.
    validate() raises InvalidInput for expressions that are malformed or never fire."""

    def validate(self, expression: str) -> None: ...

    def latest_fire(self, expression: str, timezone: str, at: datetime) -> datetime | None: ...

    def next_fire(self, expression: str, timezone: str, after: datetime) -> datetime | None: ...


class RunQueue(Protocol):
    """Hands a requested run to a worker: at-least-once, the worker is idempotent."""

    def enqueue(self, org_uid: str, operation_id: str, run_id: str) -> None: ...


class ServerCertificate(Protocol):
    """The server CA certificate (PEM) devices keep in their truststore; raises OSError."""

    def pem(self) -> str: ...


class CertificatePages(Protocol):
    """Catalogue pages in a stable order with an opaque cursor (read model)."""

    def list_certificates(
        self,
        org_uid: str,
        *,
        folder: str | None = None,
        recursive: bool = True,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]: ...


class CertificateOutcome(NamedTuple):
    """What a run did with one certificate (a tuple: one is made per certificate, and a
    page of them serialises as JSON arrays without conversion)."""

    certificate_id: str
    name: str
    subject: str
    not_after: str
    status: str
    component_id: str | None
    outcome: str  # domain.run_plan.Outcome
    reason: str = ""
    topics: tuple[str, ...] = ()
    seq: int = 0  # processing order within the run


@dataclass(frozen=True, slots=True)
class RunCheckpoint:
    """Committed progress of a run: the catalogue cursor after the last committed page."""

    cursor: str | None
    pages: int
    done: bool
    counts: dict[str, int]


class RunProgress(Protocol):
    """The idempotency record of runs: a lease, the cursor and per-certificate outcomes,
    committed in one transaction after each page. acquire() returns None while another
    live worker holds the lease; commit_page() returns None when this worker lost it."""

    def acquire(
        self, run_id: str, org_uid: str, operation_id: str, worker: str, now: float, ttl: float
    ) -> RunCheckpoint | None: ...

    def commit_page(
        self,
        run_id: str,
        worker: str,
        outcomes: Sequence[CertificateOutcome],
        cursor: str | None,
        done: bool,
        now: float,
        ttl: float,
    ) -> RunCheckpoint | None: ...

    def release(self, run_id: str, worker: str) -> None: ...

    def checkpoint(self, run_id: str) -> RunCheckpoint | None: ...

    def outcomes(
        self, run_id: str, *, outcome: str | None = None, after: int = -1, limit: int = 1000
    ) -> list[CertificateOutcome]: ...
