"""System notifications: raised by background work (runs, scheduler), acknowledged by operators."""

from __future__ import annotations

import logging

from application.base import RegistryBase
from domain.meta import Actor
from domain.notification import NotificationKind, Severity, SystemNotification

log = logging.getLogger(__name__)


class NotificationCommands(RegistryBase):
    def raise_notification(
        self,
        org_uid: str,
        kind: NotificationKind,
        message: str,
        actor: Actor,
        *,
        severity: Severity = Severity.ERROR,
        context: dict[str, str] | None = None,
    ) -> str:
        """Emits SystemNotification.Raised; returns its id. Also logged, so a failure to save
        (store down) still leaves a trace."""
        log.warning("notification %s for %s: %s", kind.value, org_uid, message)
        notification = SystemNotification.raise_(
            org_uid, kind, message, actor.meta(), severity=severity, context=context
        )
        self.commit(notification)
        return str(notification.id)

    def notification(self, org_uid: str, notification_id: str) -> SystemNotification:
        """Raises NotFound (also for another organization's notification)."""
        return self.in_org(SystemNotification, org_uid, notification_id, "notification")

    def acknowledge_notification(
        self, org_uid: str, notification_id: str, actor: Actor
    ) -> SystemNotification:
        """Emits Acknowledged (once; acknowledging again is a no-op). Raises NotFound."""
        notification = self.notification(org_uid, notification_id)
        notification.acknowledge(actor.meta())
        self.commit(notification)
        return notification
