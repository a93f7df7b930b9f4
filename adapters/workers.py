"""Run workers on dramatiq: RedisBroker in production, StubBroker + in-process Worker embedded.

Delivery is at-least-once everywhere (no broker dedupes a message after completion), so the
message carries only (org, operation, run) ids and the RunExecutor makes redelivery safe.
The event store is the record: a RunRequested without RunCompleted/RunFailed is enqueued
again at start-up and by the periodic sweep; duplicates are harmless."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import TimeLimitExceeded

from application.operation_runs import RunExecutor
from domain.notification import NotificationKind
from projections.operation_outcomes import OutcomeStore
from projections.operations_view import OperationsView

log = logging.getLogger(__name__)


def make_broker(kind: str, redis_url: str = "", namespace: str = "certwarden") -> dramatiq.Broker:
    if kind == "redis":
        return RedisBroker(url=redis_url, namespace=namespace)  # type: ignore[no-untyped-call]
    return StubBroker()


class DramatiqWorkers:
    """The RunQueue port (enqueue), the in-process worker and the sweep."""

    def __init__(
        self,
        broker: dramatiq.Broker,
        executor: RunExecutor,
        view: OperationsView,
        progress: OutcomeStore,
        *,
        queue_name: str = "certwarden-runs",
        threads: int = 2,
        time_limit_seconds: float = 3600.0,
        max_retries: int = 3,
        sweep_grace_seconds: float = 30.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.executor = executor
        self.view = view
        self.progress = progress
        self.queue_name = queue_name
        self.threads = threads
        self.sweep_grace_seconds = sweep_grace_seconds
        self.wall = wall
        self.results: list[tuple[str, str]] = []  # (run id, outcome), most recent last
        self._worker: dramatiq.Worker | None = None
        self._booted = False
        self._lock = threading.Lock()
        self.actor: Any = dramatiq.actor(
            broker=broker,
            actor_name="certwarden_execute_run",
            queue_name=queue_name,
            time_limit=int(time_limit_seconds * 1000),
            max_retries=max_retries,
        )(self._perform)

    # -- RunQueue port ---------------------------------------------------------------
    def enqueue(self, org_uid: str, operation_id: str, run_id: str) -> None:
        self.actor.send(org_uid, operation_id, run_id)

    def _perform(self, org_uid: str, operation_id: str, run_id: str) -> None:
        try:
            outcome = self.executor.execute(org_uid, operation_id, run_id)
        except TimeLimitExceeded:
            self.executor.abort(
                org_uid,
                operation_id,
                run_id,
                "worker",
                NotificationKind.WORKER_CRASH,
                "time limit exceeded",
            )
            outcome = "failed"
        log.info("run %s: %s", run_id, outcome)
        with self._lock:
            self.results = [*self.results[-999:], (run_id, outcome)]

    # -- in-process worker -------------------------------------------------------------
    def start(self, threads: int | None = None) -> None:
        """Start consuming in this process. process_boot first, or time limits never fire."""
        with self._lock:
            if self._worker is not None:
                return
            if not self._booted:
                self.broker.emit_after("process_boot")
                self._booted = True
            worker = dramatiq.Worker(
                self.broker,
                queues={self.queue_name},
                worker_threads=threads or self.threads,
                worker_timeout=200,
            )
            worker.start()
            self._worker = worker

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """Stop consuming (Worker.join after stop can hang: not called)."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop(timeout=int(timeout_seconds * 1000))

    def drain(self, timeout_seconds: float = 30.0) -> None:
        """Tests and the embedded mode: wait until the stub queue is processed."""
        if isinstance(self.broker, StubBroker):
            self.broker.join(self.queue_name, timeout=int(timeout_seconds * 1000), fail_fast=True)

    # -- sweep -------------------------------------------------------------------------
    def sweep(self, grace_seconds: float | None = None) -> int:
        """Enqueue again every open run no live worker holds and older than the grace
        period (a run just requested is normally already queued). Returns how many."""
        grace = self.sweep_grace_seconds if grace_seconds is None else grace_seconds
        now = self.wall()
        open_runs = self.view.open_runs()
        leased = self.progress.leased([r.run_id for r in open_runs], now)
        count = 0
        for run in open_runs:
            requested = datetime.fromisoformat(run.requested_at).timestamp()
            if run.run_id in leased or requested > now - grace:
                continue
            self.enqueue(run.org_uid, run.operation_id, run.run_id)
            count += 1
        if count:
            log.info("sweep: %d open run(s) enqueued again", count)
        return count
