"""Action package commands: create, update, delete (refused while an operation uses it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from application.base import RegistryBase
from application.ports import PackageUsage
from domain.action_package import ActionPackage
from domain.errors import Conflict, InvalidInput, NotFound
from domain.meta import Actor


class _NoPackageUsage:
    def count_using_package(self, org_uid: str, package_id: str) -> int:
        return 0


class ActionPackageCommands(RegistryBase):
    package_usage: PackageUsage = _NoPackageUsage()

    def create_action_package(
        self, org_uid: str, name: str, actions: Sequence[Any], actor: Actor
    ) -> ActionPackage:
        """Emits ActionPackage.Created. Raises InvalidInput (unknown [variable], wildcard in a
        topic, bad address, no actions), NotFound (organization)."""
        self.organization(org_uid)
        package = ActionPackage.create(org_uid, name, actions, actor.meta())
        self.commit(package)
        return package

    def action_package(self, org_uid: str, package_id: str) -> ActionPackage:
        """Raises NotFound (also for another organization's package)."""
        return self.in_org(ActionPackage, org_uid, package_id, "action package")

    def require_action_package(self, org_uid: str, package_id: str | None) -> None:
        """Raises InvalidInput when an operation would reference a missing package."""
        if package_id is None:
            return
        try:
            self.action_package(org_uid, package_id)
        except NotFound:
            raise InvalidInput(
                f"action package {package_id!r} does not exist in this organization"
            ) from None

    def update_action_package(
        self,
        org_uid: str,
        package_id: str,
        actor: Actor,
        *,
        name: str | None = None,
        actions: Sequence[Any] | None = None,
        expected_version: int | None = None,
    ) -> ActionPackage:
        """Emits ActionPackage.Updated. Raises InvalidInput, NotFound, PreconditionFailed."""
        package = self.action_package(org_uid, package_id)
        self.check_version(package.version, expected_version)
        package.update(actor.meta(), name=name, actions=actions)
        self.commit(package)
        return package

    def delete_action_package(self, org_uid: str, package_id: str, actor: Actor) -> None:
        """Emits ActionPackage.Deleted. Raises Conflict while an operation uses it."""
        package = self.action_package(org_uid, package_id)
        self.projections.wait(self.max_position())
        in_use = self.package_usage.count_using_package(org_uid, package_id)
        if in_use:
            raise Conflict(
                f"action package is used by {in_use} operation(s); change them first",
                operations=in_use,
            )
        package.delete(actor.meta())
        self.commit(package)
