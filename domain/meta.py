"""Who did it and in which request: the metadata every event carries."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ActorKind(StrEnum):
    API_KEY = "api_key"
    CERTIFICATE = "certificate"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class Actor:
    """The principal behind a command, as recorded on events (never secrets)."""

    kind: ActorKind
    id: str
    owner: str = ""  # the user owning an API key, or the org of a certificate
    request_id: str = ""
    source_ip: str = ""

    def meta(self) -> dict[str, str]:
        """The JSON-safe form stored on every event."""
        return {
            "actor_kind": str(self.kind),
            "actor": self.id,
            "actor_owner": self.owner,
            "request_id": self.request_id,
            "source_ip": self.source_ip,
        }

    @classmethod
    def system(cls, what: str, request_id: str = "") -> Actor:
        return cls(ActorKind.SYSTEM, what, request_id=request_id)
