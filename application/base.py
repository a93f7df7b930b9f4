"""The certwarden event-sourced application: persistence, typed getters, uniqueness claims."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from application.ports import PolicyUsage, ProjectionSync, RestoreFeed
from domain.errors import ConcurrentChange, NotFound, PreconditionFailed
from domain.organization import Organization, org_uuid
from domain.reservation import Reservation, reservation_id

A = TypeVar("A", bound=Aggregate)
T = TypeVar("T")


class _NoUsage:
    def count_using_policy(self, org_uid: str, policy_id: str) -> int:
        return 0


class _NoSync:
    def wait(self, position: int, timeout: float = 5.0) -> None:
        return None

    def expect(self, events: int) -> RestoreFeed | None:
        return None


class RegistryBase(Application[UUID]):
    """One event store for every aggregate, so read models follow one ordered log."""

    name = "certwarden"
    env = {
        "AGGREGATE_CACHE_MAXSIZE": "20000",
        "COMPRESSOR_TOPIC": "application.state_encoding:SmallStatesPlain",
    }

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self.policy_usage: PolicyUsage = _NoUsage()
        self.projections: ProjectionSync = _NoSync()
        self._listeners: list[Callable[[int], None]] = []
        self.known_folders: set[UUID] = set()  # folders seen alive in this process

    # -- persistence ------------------------------------------------------
    def on_saved(self, listener: Callable[[int], None]) -> None:
        """Call listener(max notification id) after each successful save (in-process wake-up)."""
        self._listeners.append(listener)

    def commit(self, *aggregates: Aggregate | None) -> int:
        """Save everything a command touched in ONE transaction; returns the last position.

        Raises Conflict when a concurrent writer got there first (nothing written).
        """
        try:
            recordings = self.save(*aggregates)
        except IntegrityError:
            raise ConcurrentChange("a concurrent change touched the same entity; retry") from None
        position = max((r.notification.id for r in recordings), default=0)
        for listener in self._listeners:
            listener(position)
        return position

    @staticmethod
    def retrying(command: Callable[[], T], attempts: int = 3) -> T:
        """Run a load-modify-save command again when a concurrent writer won the race
        (optimistic concurrency: nothing of the losing attempt was written)."""
        for _ in range(attempts - 1):
            try:
                return command()
            except ConcurrentChange:
                continue
        return command()

    def get_typed(self, cls: type[A], aggregate_id: UUID | str, what: str) -> A:
        """Load an aggregate of the given type; raises NotFound."""
        try:
            uid = aggregate_id if isinstance(aggregate_id, UUID) else UUID(str(aggregate_id))
            aggregate: object = self.repository.get(uid)
        except (AggregateNotFoundError, ValueError):
            raise NotFound(f"{what} not found") from None
        if not isinstance(aggregate, cls):
            raise NotFound(f"{what} not found")
        return aggregate

    def find(self, cls: type[A], aggregate_id: UUID) -> A | None:
        try:
            aggregate: object = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return aggregate if isinstance(aggregate, cls) else None

    def organization(self, org_uid: str) -> Organization:
        return self.get_typed(Organization, org_uuid(org_uid), "organization")

    def in_org(self, cls: type[A], org_uid: str, aggregate_id: UUID | str, what: str) -> A:
        """Tenant isolation: an entity of another organization is reported as not found."""
        aggregate = self.get_typed(cls, aggregate_id, what)
        if getattr(aggregate, "org_uid", None) != org_uid or getattr(aggregate, "deleted", False):
            raise NotFound(f"{what} not found")
        return aggregate

    # -- uniqueness ---------------------------------------------------------
    def reservation(self, key: str) -> Reservation | None:
        return self.find(Reservation, reservation_id(key))

    def claim(
        self, key: str, owner: str, org_uid: str, pending: dict[str, Reservation]
    ) -> Reservation:
        """Claim a unique key for owner (saved with the owner, atomically). Raises Conflict."""
        if key in pending:
            reservation = pending[key]
            reservation.claim(owner, org_uid)
            return reservation
        existing = self.reservation(key)
        if existing is None:
            reservation = Reservation(key=key, owner=owner, org_uid=org_uid)
        else:
            existing.claim(owner, org_uid)
            reservation = existing
        pending[key] = reservation
        return reservation

    def release(self, key: str, owner: str) -> Reservation | None:
        existing = self.reservation(key)
        if existing is None or existing.owner != owner:
            return None
        existing.release(owner)
        return existing

    def owner_of(self, key: str) -> str | None:
        existing = self.reservation(key)
        return existing.owner if existing else None

    @staticmethod
    def check_version(actual: int, expected: int | None) -> None:
        """If-Match: raises PreconditionFailed when the caller saw an older version."""
        if expected is not None and expected != actual:
            raise PreconditionFailed(
                f"the entity changed (version {actual}, you sent {expected}); reload and retry",
                version=actual,
            )

    def max_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    @staticmethod
    def flatten(*groups: Iterable[Any]) -> list[Any]:
        return [item for group in groups for item in group]
