"""Users (organization-scoped principals with a role) and their API keys."""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum

from eventsourcing.domain import Aggregate, event

from domain.errors import InvalidInput
from domain.organization import clean_name


class Role(StrEnum):
    """viewer reads; operator also changes status, pins and runs operations; admin does all."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    SUPER_ADMIN = "super_admin"  # manages organizations; belongs to none

    def allows(self, needed: Role) -> bool:
        return _RANK[self] >= _RANK[needed]


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2, Role.SUPER_ADMIN: 3}


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise InvalidInput(
            f"unknown role {value[:40]!r}; expected one of viewer, operator, admin"
        ) from None


class User(Aggregate):
    """Emits Created, RoleChanged, Deleted."""

    @event("Created")
    def __init__(self, org_uid: str, name: str, role: str, meta: dict[str, str]) -> None:
        self.org_uid = org_uid
        self.name = name
        self.role = role
        self.deleted = False

    @staticmethod
    def create(org_uid: str, name: str, role: str, meta: dict[str, str]) -> User:
        parsed = parse_role(role)
        if parsed is Role.SUPER_ADMIN:
            raise InvalidInput("organization users cannot be super-admins")
        return User(org_uid=org_uid, name=clean_name(name, "user name"), role=parsed, meta=meta)

    def change_role(self, role: str, meta: dict[str, str]) -> None:
        parsed = parse_role(role)
        if parsed is Role.SUPER_ADMIN:
            raise InvalidInput("organization users cannot be super-admins")
        if parsed != self.role:
            self._role_changed(role=str(parsed), meta=meta)

    @event("RoleChanged")
    def _role_changed(self, role: str, meta: dict[str, str]) -> None:
        self.role = role

    def delete(self, meta: dict[str, str]) -> None:
        if not self.deleted:
            self._deleted(meta=meta)

    @event("Deleted")
    def _deleted(self, meta: dict[str, str]) -> None:
        self.deleted = True


def hash_secret(secret: str) -> str:
    """API key secrets are 256-bit random: a plain SHA-256 is enough (no password stretching)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKey(Aggregate):
    """Emits Issued, Revoked. Only the secret's hash is stored; user_id None = super-admin."""

    @event("Issued")
    def __init__(
        self,
        org_uid: str | None,
        user_id: str | None,
        label: str,
        secret_hash: str,
        meta: dict[str, str],
    ) -> None:
        self.org_uid = org_uid
        self.user_id = user_id
        self.label = label
        self.secret_hash = secret_hash
        self.revoked = False

    def verify(self, secret: str) -> bool:
        return not self.revoked and hmac.compare_digest(self.secret_hash, hash_secret(secret))

    def revoke(self, meta: dict[str, str]) -> None:
        if not self.revoked:
            self._revoked(meta=meta)

    @event("Revoked")
    def _revoked(self, meta: dict[str, str]) -> None:
        self.revoked = True
