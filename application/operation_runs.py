"""Executes one operation run: catalogue page by page, one command per certificate, outcomes
and cursor committed after each page, then the report and RunCompleted (or RunFailed)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from application.ports import (
    CertificateOutcome,
    CertificatePages,
    CommandPublisher,
    Mailer,
    MailError,
    PublishError,
    RunCheckpoint,
    RunProgress,
    ServerCertificate,
)
from application.registry import Registry
from application.run_actions import RunFailure, RunState, act_page
from application.run_pipeline import PageCommitter, PagePrefetcher
from application.run_report import build_report
from domain.action_package import ActionKind, uses
from domain.errors import DomainError
from domain.meta import Actor
from domain.notification import NotificationKind
from domain.operation import OperationType
from domain.run_plan import Outcome

log = logging.getLogger(__name__)
WORKER = Actor.system("operations-worker")


class LeaseLost(Exception):
    """Another worker took the run over (this one stalled past its lease)."""


@dataclass(frozen=True)
class RunLimits:
    page_size: int = 1000
    ack_timeout: float = 30.0
    lease_ttl: float = 120.0


class RunExecutor:
    """The worker's one entry point. At-least-once delivery is made safe here: a finished
    run is never re-run (the Operation knows its open runs), a lease keeps two deliveries
    from working at once, and a redelivered run resumes after its last committed page, so a
    certificate is commanded at most once more than needed and never skipped."""

    def __init__(
        self,
        registry: Registry,
        pages: CertificatePages,
        progress: RunProgress,
        publisher: Callable[[], CommandPublisher],
        mailer: Mailer,
        server_ca: ServerCertificate,
        limits: RunLimits | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.pages = pages
        self.progress = progress
        self.new_publisher = publisher
        self.mailer = mailer
        self.server_ca = server_ca
        self.limits = limits or RunLimits()
        self.wall = wall

    def execute(self, org_uid: str, operation_id: str, run_id: str) -> str:
        """Returns completed | failed | finished (nothing to do) | leased (another worker
        holds it) | lease-lost. Emits RunCompleted or RunFailed (+ SystemNotification)."""
        snapshot = self.registry.open_run(org_uid, operation_id, run_id)
        if snapshot is None:
            return "finished"
        holder = f"{uuid.uuid4().hex[:12]}"
        checkpoint = self.progress.acquire(
            run_id, org_uid, operation_id, holder, self.wall(), self.limits.lease_ttl
        )
        if checkpoint is None:
            return "leased"
        run = RunState(
            org_uid,
            operation_id,
            run_id,
            snapshot,
            OperationType(snapshot["op_type"]),
            datetime.fromisoformat(str(snapshot["expires_before"])),
            self.mailer,
            lambda component_id: self._component_name(org_uid, component_id),
        )
        try:
            if not checkpoint.done:
                self._prepare(run)
                checkpoint = self._walk(run, checkpoint, holder)
            self._finish(run, checkpoint)
            return "completed"
        except LeaseLost:
            log.warning("run %s: lease lost; another worker continues it", run_id)
            return "lease-lost"
        except RunFailure as failure:
            self.abort(org_uid, operation_id, run_id, failure.stage, failure.kind, failure.reason)
            return "failed"
        except Exception as exc:
            log.exception("run %s crashed", run_id)
            self.abort(
                org_uid, operation_id, run_id, "worker", NotificationKind.WORKER_CRASH, repr(exc)
            )
            return "failed"
        finally:
            if run.publisher is not None:
                run.publisher.close()
            self.progress.release(run_id, holder)

    def abort(
        self,
        org_uid: str,
        operation_id: str,
        run_id: str,
        stage: str,
        kind: NotificationKind,
        reason: str,
    ) -> None:
        """Emits RunFailed with the counts committed so far, and a SystemNotification."""
        counts = self._counts(run_id)
        if self.registry.fail_run(org_uid, operation_id, run_id, stage, reason, counts, WORKER):
            self.registry.raise_notification(
                org_uid,
                kind,
                f"run {run_id} failed ({stage}): {reason}",
                WORKER,
                context={"operation_id": operation_id, "run_id": run_id, "stage": stage},
            )

    # -- the walk -------------------------------------------------------------------
    def _prepare(self, run: RunState) -> None:
        if run.op_type is OperationType.UPDATE_TRUSTSTORE:
            try:
                run.truststore = self.server_ca.pem().encode("utf-8")
            except OSError as exc:
                raise RunFailure(
                    "prepare", NotificationKind.RUN_FAILED, f"server CA not available: {exc}"
                ) from None
        if run.op_type is OperationType.TAKE_ACTION:
            package_id = str(run.snapshot.get("action_package_id") or "")
            try:
                run.actions = self.registry.action_package(run.org_uid, package_id).actions
            except DomainError as exc:  # NotFound (deleted since the run was requested)
                raise RunFailure(
                    "prepare", NotificationKind.TEMPLATE_ERROR, f"action package: {exc}"
                ) from None
            texts = (str(v) for a in run.actions for v in a.values())
            run.needs_component_name = any(uses(t, "component.name") for t in texts)
        needs_mqtt = run.op_type is not OperationType.REPORT_EXPIRING and (
            run.op_type is not OperationType.TAKE_ACTION
            or any(a["kind"] == ActionKind.MQTT_PUBLISH for a in run.actions)
        )
        if needs_mqtt:
            publisher = self.new_publisher()
            try:
                publisher.open()
            except PublishError as exc:
                raise RunFailure("connect", NotificationKind.BROKER_UNREACHABLE, str(exc)) from None
            run.publisher = publisher

    def _fetch(self, run: RunState, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        return self.pages.list_certificates(
            run.org_uid,
            folder=str(run.snapshot["folder"]),
            recursive=bool(run.snapshot["recursive"]),
            limit=self.limits.page_size,
            cursor=cursor,
        )

    def _walk(self, run: RunState, checkpoint: RunCheckpoint, holder: str) -> RunCheckpoint:
        """Publish page after page while the next page is read ahead and acknowledged pages
        are committed behind (outcomes + cursor + lease, one transaction per page)."""
        seq = sum(v for k, v in checkpoint.counts.items() if ":" not in k)
        publisher = run.publisher

        def wait_acked(mark: int) -> None:
            if publisher is not None:
                publisher.wait_acked(mark, self.limits.ack_timeout)

        def commit(outcomes: Sequence[CertificateOutcome], cursor: str | None, done: bool) -> Any:
            wall, ttl = self.wall(), self.limits.lease_ttl
            return self.progress.commit_page(run.run_id, holder, outcomes, cursor, done, wall, ttl)

        pages = PagePrefetcher(lambda cursor: self._fetch(run, cursor), checkpoint.cursor)
        committer = PageCommitter(commit, wait_acked, lambda: LeaseLost(run.run_id))
        try:
            for rows, cursor in pages:
                committer.check()
                outcomes = act_page(run, rows, seq)
                seq += len(outcomes)
                mark = publisher.mark() if publisher is not None else 0
                committer.submit(outcomes, cursor, cursor is None, mark)
                run.component_names.clear()
            last = committer.finish()
        except PublishError as exc:
            raise RunFailure("publish", NotificationKind.BROKER_UNREACHABLE, str(exc)) from None
        finally:
            committer.stop()
            pages.stop()
        return last if last is not None else checkpoint

    def _component_name(self, org_uid: str, component_id: str) -> str | None:
        found = self.registry.component(org_uid, component_id)
        return found.name if found is not None else None

    # -- the end --------------------------------------------------------------------
    def _counts(self, run_id: str) -> dict[str, int]:
        checkpoint = self.progress.checkpoint(run_id)
        return dict(checkpoint.counts) if checkpoint is not None else {}

    def _finish(self, run: RunState, checkpoint: RunCheckpoint) -> None:
        counts = dict(checkpoint.counts)
        recipients = list(run.snapshot.get("recipients") or [])
        if recipients:
            email = build_report(run.snapshot, run.run_id, counts, recipients, self.progress)
            try:
                self.mailer.send(email)
            except MailError as exc:
                raise RunFailure("report", NotificationKind.SMTP_FAILURE, str(exc)) from None
        if counts.get(Outcome.FAILED.value):
            self._notify_failures(run, counts[Outcome.FAILED.value])
        self.registry.complete_run(run.org_uid, run.operation_id, run.run_id, counts, WORKER)

    def _notify_failures(self, run: RunState, failed: int) -> None:
        sample = self.progress.outcomes(run.run_id, outcome=Outcome.FAILED.value, limit=1000)
        reasons = sorted({o.reason for o in sample})
        smtp = any(r.startswith("smtp:") for r in reasons)
        kind = NotificationKind.SMTP_FAILURE if smtp else NotificationKind.TEMPLATE_ERROR
        self.registry.raise_notification(
            run.org_uid,
            kind,
            f"run {run.run_id}: {failed} certificate(s) failed; " + "; ".join(reasons[:3]),
            WORKER,
            context={"operation_id": run.operation_id, "run_id": run.run_id},
        )
