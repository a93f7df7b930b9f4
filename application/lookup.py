"""Rows of the authorization lookup table, as the projection writes and the index reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class CertRow:
    """One certificate as the broker needs it; chain-wide facts already folded in."""

    certificate_id: str
    org_uid: str
    fingerprint: str
    common_name: str | None
    usable: bool  # it and every certificate above it ACTIVE, chain reaches a root here
    blocked_reason: str  # why not usable ("" when usable)
    not_before: float  # epoch seconds, latest not_before along the chain
    not_after: float  # epoch seconds, earliest not_after along the chain
    policy_id: str | None
    pinned_host: str | None
    pinned_component: str | None
    deleted: bool
    seen: bool = False  # has connected successfully at least once


@dataclass(frozen=True, slots=True)
class PolicyRow:
    org_uid: str
    policy_id: str
    permission_sets: list[dict[str, Any]]
    deleted: bool


@dataclass(frozen=True, slots=True)
class LookupChanges:
    certificates: list[CertRow]
    policies: list[PolicyRow]
    position: int


class LookupSource(Protocol):
    """The lookup table, read incrementally: rows written after a position."""

    def lookup_changes(self, after: int) -> LookupChanges: ...
