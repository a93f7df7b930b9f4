"""SystemNotification: an operator-visible report of something that went wrong in the background."""

from __future__ import annotations

from enum import StrEnum

from eventsourcing.domain import Aggregate, event

MAX_MESSAGE = 2000


class NotificationKind(StrEnum):
    BROKER_UNREACHABLE = "broker-unreachable"
    SMTP_FAILURE = "smtp-failure"
    TEMPLATE_ERROR = "template-error"
    CERTIFICATE_FAILURES = "certificate-failures"
    WORKER_CRASH = "worker-crash"
    RUN_FAILED = "run-failed"
    ROLL_STUCK = "roll-stuck"


class Severity(StrEnum):
    WARNING = "warning"
    ERROR = "error"


class SystemNotification(Aggregate):
    """Emits Raised, Acknowledged. Acknowledging twice is a no-op."""

    @event("Raised")
    def __init__(
        self,
        org_uid: str,
        kind: str,
        severity: str,
        message: str,
        context: dict[str, str],
        meta: dict[str, str],
    ) -> None:
        self.org_uid = org_uid
        self.kind = kind
        self.severity = severity
        self.message = message
        self.context = context
        self.acknowledged = False
        self.deleted = False

    @staticmethod
    def raise_(
        org_uid: str,
        kind: NotificationKind,
        message: str,
        meta: dict[str, str],
        *,
        severity: Severity = Severity.ERROR,
        context: dict[str, str] | None = None,
    ) -> SystemNotification:
        """Emits Raised; the message is flattened to one line and bounded."""
        text = " ".join(message.split())[:MAX_MESSAGE] or kind.value
        return SystemNotification(
            org_uid=org_uid,
            kind=kind.value,
            severity=severity.value,
            message=text,
            context={str(k): str(v)[:200] for k, v in (context or {}).items()},
            meta=meta,
        )

    def acknowledge(self, meta: dict[str, str]) -> None:
        """Emits Acknowledged (with who did it in meta); a second call is a no-op."""
        if not self.acknowledged:
            self._acknowledged(meta=meta)

    @event("Acknowledged")
    def _acknowledged(self, meta: dict[str, str]) -> None:
        self.acknowledged = True
