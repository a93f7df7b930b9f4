"""Policy commands: create, rename, replace permission sets, delete (refused while in use)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from application.base import RegistryBase
from domain.errors import Conflict, InvalidInput, NotFound
from domain.meta import Actor
from domain.policy import Policy, check_policy_id


def policy_key(org_uid: str, policy_id: str) -> str:
    return f"policy:{org_uid}:{policy_id}"


class PolicyCommands(RegistryBase):
    def create_policy(
        self, org_uid: str, policy_id: str, name: str, permission_sets: Sequence[Any], actor: Actor
    ) -> Policy:
        """Emits Policy.Created. Raises Conflict when the id is taken in the organization."""
        self.organization(org_uid)
        policy = Policy.create(org_uid, policy_id, name, permission_sets, actor.meta())
        try:
            reservation = self.claim(policy_key(org_uid, policy_id), str(policy.id), org_uid, {})
        except Conflict:
            raise Conflict(f"policy id {policy_id!r} already exists in this organization") from None
        self.commit(policy, reservation)
        return policy

    def policy(self, org_uid: str, policy_id: str) -> Policy:
        """The live policy with this organization-unique id; raises NotFound."""
        check_policy_id(policy_id)
        owner = self.owner_of(policy_key(org_uid, policy_id))
        if owner is None:
            raise NotFound(f"policy {policy_id!r} not found")
        return self.in_org(Policy, org_uid, owner, "policy")

    def require_policy(self, org_uid: str, policy_id: str | None) -> None:
        """Raises InvalidInput when a certificate would reference a missing policy."""
        if policy_id is None:
            return
        try:
            self.policy(org_uid, policy_id)
        except NotFound:
            raise InvalidInput(
                f"policy {policy_id!r} does not exist in this organization"
            ) from None

    def update_policy(
        self,
        org_uid: str,
        policy_id: str,
        actor: Actor,
        *,
        name: str | None = None,
        permission_sets: Sequence[Any] | None = None,
        expected_version: int | None = None,
    ) -> Policy:
        """Emits Renamed / PermissionSetsReplaced. Raises PreconditionFailed when stale."""
        policy = self.policy(org_uid, policy_id)
        self.check_version(policy.version, expected_version)
        if name is not None:
            policy.rename(name, actor.meta())
        if permission_sets is not None:
            policy.replace_permission_sets(permission_sets, actor.meta())
        self.commit(policy)
        return policy

    def delete_policy(self, org_uid: str, policy_id: str, actor: Actor) -> None:
        """Emits Policy.Deleted and frees the id. Raises Conflict while certificates use it."""
        policy = self.policy(org_uid, policy_id)
        self.projections.wait(self.max_position())
        in_use = self.policy_usage.count_using_policy(org_uid, policy_id)
        if in_use:
            raise Conflict(
                f"policy {policy_id!r} is assigned to {in_use} certificate(s); reassign them first",
                certificates=in_use,
            )
        policy.delete(actor.meta())
        self.commit(policy, self.release(policy_key(org_uid, policy_id), str(policy.id)))
