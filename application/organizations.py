"""Organizations, their users and API keys: commands and authentication."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from uuid import UUID

from application.base import RegistryBase
from domain.errors import Forbidden, InvalidInput, NotFound
from domain.meta import Actor, ActorKind
from domain.organization import Organization, clean_name
from domain.principal import ApiKey, Role, User, hash_secret

KEY_PREFIX = "cw"
BOOTSTRAP_KEY = "super-admin-bootstrap"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: an API key and the user (or super-admin) behind it."""

    key_id: str
    user_id: str | None
    org_uid: str | None
    role: Role
    name: str

    def actor(self, request_id: str = "", source_ip: str = "") -> Actor:
        return Actor(
            ActorKind.API_KEY, self.key_id, self.user_id or "super-admin", request_id, source_ip
        )

    def require(self, org_uid: str, needed: Role) -> None:
        """Raises NotFound for another tenant (never reveal it exists), Forbidden for a weak role."""
        if self.role is Role.SUPER_ADMIN:
            return
        if self.org_uid != org_uid:
            raise NotFound("organization not found")
        if not self.role.allows(needed):
            raise Forbidden(f"this needs the {needed} role; the key has {self.role}")


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: str
    secret: str  # shown once, never stored


class OrganizationCommands(RegistryBase):
    def create_organization(self, name: str, actor: Actor) -> Organization:
        """Emits Organization.Created."""
        org = Organization.create(name, actor.meta())
        self.commit(org)
        return org

    def rename_organization(self, org_uid: str, name: str, actor: Actor) -> Organization:
        org = self.organization(org_uid)
        org.rename(name, actor.meta())
        self.commit(org)
        return org

    def create_user(self, org_uid: str, name: str, role: str, actor: Actor) -> User:
        """Emits User.Created; user names are unique within the organization (409)."""
        self.organization(org_uid)
        user = User.create(org_uid, name, role, actor.meta())
        key = f"user:{org_uid}:{user.name.casefold()}"
        reservation = self.claim(key, str(user.id), org_uid, {})
        self.commit(user, reservation)
        return user

    def change_user_role(self, org_uid: str, user_id: str, role: str, actor: Actor) -> User:
        user = self.in_org(User, org_uid, user_id, "user")
        user.change_role(role, actor.meta())
        self.commit(user)
        return user

    def user(self, org_uid: str, user_id: str) -> User:
        return self.in_org(User, org_uid, user_id, "user")

    def issue_api_key(
        self, org_uid: str | None, user_id: str | None, label: str, actor: Actor
    ) -> IssuedKey:
        """Emits ApiKey.Issued. org/user None issues a super-admin key."""
        if (org_uid is None) != (user_id is None):
            raise InvalidInput(
                "a key belongs to a user of an organization, or to nobody (super-admin)"
            )
        if org_uid is not None and user_id is not None:
            self.in_org(User, org_uid, user_id, "user")
        secret = secrets.token_urlsafe(32)
        key = ApiKey(
            org_uid=org_uid,
            user_id=user_id,
            label=clean_name(label or "api key", "key label"),
            secret_hash=hash_secret(secret),
            meta=actor.meta(),
        )
        self.commit(key)
        return IssuedKey(str(key.id), f"{KEY_PREFIX}_{key.id.hex}_{secret}")

    def revoke_api_key(self, key_id: str, actor: Actor, org_uid: str | None = None) -> None:
        key = self.get_typed(ApiKey, key_id, "API key")
        if org_uid is not None and key.org_uid != org_uid:
            raise NotFound("API key not found")
        key.revoke(actor.meta())
        self.commit(key)

    def ensure_bootstrap_key(self) -> IssuedKey | None:
        """First start: issue the super-admin key once; later starts return None."""
        if self.owner_of(BOOTSTRAP_KEY) is not None:
            return None
        actor = Actor.system("bootstrap")
        issued = self.issue_api_key(None, None, "bootstrap super-admin", actor)
        reservation = self.claim(BOOTSTRAP_KEY, issued.key_id, "", {})
        self.commit(reservation)
        return issued

    def authenticate(self, token: str) -> Principal:
        """Resolve a Bearer token; raises Forbidden (401 at the edge) when unknown or revoked."""
        parts = token.split("_", 2) if token else []
        if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 32:
            raise Forbidden("invalid API key")
        try:
            key_id = UUID(hex=parts[1])
        except ValueError:
            raise Forbidden("invalid API key") from None
        key = self.find(ApiKey, key_id)
        if key is None or not key.verify(parts[2]):
            raise Forbidden("invalid API key")
        if key.user_id is None:
            return Principal(str(key.id), None, None, Role.SUPER_ADMIN, key.label)
        user = self.find(User, UUID(key.user_id))
        if user is None or user.deleted:
            raise Forbidden("invalid API key")
        return Principal(str(key.id), key.user_id, key.org_uid, Role(user.role), user.name)
