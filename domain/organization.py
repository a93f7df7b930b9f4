"""Organization: the tenant every other aggregate belongs to."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import InvalidInput

MAX_NAME = 200


def clean_name(name: str, what: str = "name") -> str:
    """A trimmed, non-empty, bounded display name; raises InvalidInput."""
    text = (name or "").strip()
    if not text:
        raise InvalidInput(f"{what} must not be empty")
    if len(text) > MAX_NAME:
        raise InvalidInput(f"{what} is longer than {MAX_NAME} characters")
    if any(ord(c) < 32 for c in text):
        raise InvalidInput(f"{what} contains control characters")
    return text


class Organization(Aggregate):
    """Emits Created, Renamed. The uid (used in MQTT topics) is the aggregate id."""

    @event("Created")
    def __init__(self, name: str, meta: dict[str, str]) -> None:
        self.name = name
        self.meta = meta

    @property
    def uid(self) -> str:
        return str(self.id)

    @staticmethod
    def create(name: str, meta: dict[str, str]) -> Organization:
        return Organization(name=clean_name(name, "organization name"), meta=meta)

    def rename(self, name: str, meta: dict[str, str]) -> None:
        self._renamed(name=clean_name(name, "organization name"), meta=meta)

    @event("Renamed")
    def _renamed(self, name: str, meta: dict[str, str]) -> None:
        self.name = name


def org_uuid(uid: str) -> UUID:
    """Parse an organization uid; raises InvalidInput."""
    try:
        return UUID(uid)
    except (ValueError, AttributeError, TypeError):
        raise InvalidInput(f"not an organization uid: {uid[:64]!r}") from None
