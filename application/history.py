"""What an entity looked like at a past moment, rebuilt from the event store (not read models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from application.base import RegistryBase
from application.policies import policy_key
from domain.certificate import Certificate
from domain.errors import NotFound
from domain.policy import Policy, check_policy_id
from domain.reservation import Reservation, reservation_id


class HistoryQueries(RegistryBase):
    def version_at(self, aggregate_id: UUID, moment: datetime) -> int | None:
        """The aggregate's version at `moment` (its events with timestamp <= moment), or None
        when it did not exist yet. Binary search: one aggregate's event times never decrease
        (its events are created one after the other), so O(log versions) reads."""
        last = self.recorder.select_events(aggregate_id, desc=True, limit=1)
        if not last:
            return None
        low, high = 0, last[0].originator_version  # version `low` is known to be <= moment
        while low < high:
            middle = (low + high + 1) // 2
            if self._event_time(aggregate_id, middle) <= moment:
                low = middle
            else:
                high = middle - 1
        return low or None

    def state_at(self, aggregate_id: str, version: int) -> dict[str, Any] | None:
        """An aggregate's attributes as they were at `version`; None when there is no such one."""
        try:
            aggregate: object = self.repository.get(UUID(aggregate_id), version=version)
        except (AggregateNotFoundError, ValueError):
            return None
        return dict(vars(aggregate))

    def _event_time(self, aggregate_id: UUID, version: int) -> datetime:
        stored = self.recorder.select_events(aggregate_id, gt=version - 1, lte=version)
        event: Any = self.mapper.to_domain_event(stored[0])
        moment: datetime = event.timestamp
        return moment

    def _as_of(self, aggregate_id: UUID, moment: datetime) -> object | None:
        version = self.version_at(aggregate_id, moment)
        return None if version is None else self.repository.get(aggregate_id, version=version)

    def certificate_as_of(self, org_uid: str, certificate_id: str, moment: datetime) -> Certificate:
        """The certificate as it was at `moment`. Raises NotFound when it is unknown, of
        another organization, not imported yet or already deleted at that moment."""
        try:
            uid = UUID(str(certificate_id))
        except ValueError:
            raise NotFound("certificate not found") from None
        cert = self._as_of(uid, moment)
        if not isinstance(cert, Certificate) or cert.org_uid != org_uid or cert.deleted:
            raise NotFound(f"certificate not found at {moment.isoformat()}")
        return cert

    def policy_as_of(self, org_uid: str, policy_id: str, moment: datetime) -> Policy:
        """The policy that held this policy id at `moment` (ids are reused after a delete: the
        id's uniqueness claim says which aggregate held it then). Raises NotFound."""
        check_policy_id(policy_id)
        claim = self._as_of(reservation_id(policy_key(org_uid, policy_id)), moment)
        owner = claim.owner if isinstance(claim, Reservation) else None
        policy = self._as_of(UUID(owner), moment) if owner else None
        if not isinstance(policy, Policy) or policy.org_uid != org_uid or policy.deleted:
            raise NotFound(f"policy {policy_id!r} not found at {moment.isoformat()}")
        return policy
