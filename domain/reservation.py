"""Reservation: a uniqueness claim enforced by the event store itself.

Its id is uuid5(namespace, key). Saving a claim in the same save() as the
aggregate that needs it makes uniqueness atomic: two racing writers both try to
record the same (originator_id, version) and one of them fails.
"""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict

NAMESPACE = uuid5(NAMESPACE_URL, "https://certwarden.invalid/reservations")


def reservation_id(key: str) -> UUID:
    return uuid5(NAMESPACE, key)


class Reservation(Aggregate):
    """Emits Claimed, Released. owner is the id of the aggregate holding the key."""

    @staticmethod
    def create_id(key: str) -> UUID:
        return reservation_id(key)

    @event("Claimed")
    def __init__(self, key: str, owner: str, org_uid: str) -> None:
        self.key = key
        self.owner: str | None = owner
        self.org_uid: str | None = org_uid

    def claim(self, owner: str, org_uid: str) -> None:
        """Raises Conflict when another owner holds the key."""
        if self.owner is not None and self.owner != owner:
            raise Conflict("already taken", key=self.key, owner=self.owner, org_uid=self.org_uid)
        if self.owner is None:
            self._claimed_again(owner=owner, org_uid=org_uid)

    @event("Reclaimed")
    def _claimed_again(self, owner: str, org_uid: str) -> None:
        self.owner = owner
        self.org_uid = org_uid

    def release(self, owner: str) -> None:
        if self.owner == owner:
            self._released()

    @event("Released")
    def _released(self) -> None:
        self.owner = None
        self.org_uid = None
