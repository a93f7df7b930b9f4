"""Operation commands: settings and schedule, runs requested now or by the scheduler, run outcome."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

from application.action_packages import ActionPackageCommands
from application.folders import FolderCommands
from application.notifications import NotificationCommands
from application.ports import Clock, CronCalendar, RunQueue
from domain.errors import Conflict, InvalidInput
from domain.meta import Actor
from domain.operation import Operation, Trigger, check_cron_shape

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRIES = 5


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class NoCalendar:
    """Until bootstrap wires a calendar, schedules are refused (never silently ignored)."""

    def validate(self, expression: str) -> None:
        raise InvalidInput("scheduling is not available in this process")

    def latest_fire(self, expression: str, timezone: str, at: datetime) -> datetime | None:
        return None

    def next_fire(self, expression: str, timezone: str, after: datetime) -> datetime | None:
        return None


class NoQueue:
    """Runs stay requested until a sweep hands them to a worker."""

    def enqueue(self, org_uid: str, operation_id: str, run_id: str) -> None:
        log.info("run %s requested; no worker queue in this process", run_id)


def run_key(operation_id: str, fire_time: datetime) -> str:
    """Reservation key making (operation, fire time) produce exactly one run."""
    return f"run:{operation_id}:{fire_time.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


class OperationCommands(ActionPackageCommands, NotificationCommands, FolderCommands):
    calendar: CronCalendar = NoCalendar()
    run_queue: RunQueue = NoQueue()
    clock: Clock = SystemClock()

    # -- settings ---------------------------------------------------------------
    def create_operation(
        self,
        org_uid: str,
        config: dict[str, Any],
        actor: Actor,
        schedule: dict[str, Any] | None = None,
    ) -> Operation:
        """Emits Operation.Created (+ Scheduled). Raises InvalidInput (bad settings, folder or
        action package that does not exist, malformed cron, unknown zone), NotFound (org)."""
        self.organization(org_uid)
        operation = Operation.create(org_uid, config, actor.meta())
        self._check_references(operation)
        if schedule is not None:
            self._set_schedule(operation, schedule, actor)
        self.commit(operation)
        return operation

    def operation(self, org_uid: str, operation_id: str) -> Operation:
        """Raises NotFound (deleted, or another organization's)."""
        return self.in_org(Operation, org_uid, operation_id, "operation")

    def update_operation(
        self,
        org_uid: str,
        operation_id: str,
        changes: dict[str, Any],
        actor: Actor,
        expected_version: int | None = None,
    ) -> Operation:
        """Partial update in one save; `schedule` (an object, or null to disable) may be among
        the changes. Emits Updated / Scheduled / Unscheduled. Raises InvalidInput, NotFound,
        PreconditionFailed."""
        operation = self.operation(org_uid, operation_id)
        self.check_version(operation.version, expected_version)
        settings = {k: v for k, v in changes.items() if k != "schedule"}
        if settings and operation.update(settings, actor.meta()):
            self._check_references(operation)
        if "schedule" in changes:
            if changes["schedule"] is None:
                operation.unschedule(actor.meta())
            else:
                self._set_schedule(operation, changes["schedule"], actor)
        self.commit(operation)
        return operation

    def _check_references(self, operation: Operation) -> None:
        folder = str(operation.config["folder"])
        if not self.folder_exists(operation.org_uid, folder):
            raise InvalidInput(f"folder {folder!r} does not exist in this organization")
        self.require_action_package(operation.org_uid, operation.action_package_id)

    def _set_schedule(self, operation: Operation, schedule: dict[str, Any], actor: Actor) -> None:
        if not isinstance(schedule, dict):
            raise InvalidInput("schedule must be an object with cron, timezone and enabled")
        cron = str(schedule.get("cron") or "")
        timezone = str(schedule.get("timezone") or "UTC")
        enabled = bool(schedule.get("enabled", True))
        self.calendar.validate(check_cron_shape(cron))
        operation.schedule(cron, timezone, enabled, self.clock.now(), actor.meta())

    def delete_operation(self, org_uid: str, operation_id: str, actor: Actor) -> None:
        """Emits RunFailed (cancelled) for each open run, then Operation.Deleted."""
        operation = self.operation(org_uid, operation_id)
        operation.delete(self.clock.now(), actor.meta())
        self.commit(operation)

    def next_fire(self, operation: Operation) -> datetime | None:
        """When the schedule fires next (None: not scheduled)."""
        if not operation.schedule_enabled or not operation.cron or not operation.timezone:
            return None
        return self.calendar.next_fire(operation.cron, operation.timezone, self.clock.now())

    # -- runs ---------------------------------------------------------------------
    def execute_operation(self, org_uid: str, operation_id: str, actor: Actor) -> str:
        """Run now: emits RunRequested (trigger now) and hands the run to a worker; returns the
        run id. Raises NotFound, InvalidInput (folder or package gone)."""
        operation = self.operation(org_uid, operation_id)
        self._check_references(operation)
        run_id = str(uuid4())
        operation.request_run(run_id, Trigger.NOW, self.clock.now(), actor.meta())
        self.commit(operation)
        self._enqueue(org_uid, operation_id, run_id)
        return run_id

    def fire_schedule(
        self,
        org_uid: str,
        operation_id: str,
        now: datetime | None = None,
        actor: Actor | None = None,
    ) -> str | None:
        """Request the run of the latest fire time at or before `now`, if it has not run.

        After downtime only the latest missed fire runs (one catch-up run, not a burst).
        Emits RunRequested (trigger schedule) + Reservation.Claimed `run:{op}:{fire UTC}`
        in one save, so two schedulers racing on the same fire produce one run: the loser
        gets Conflict. Returns the run id, or None when nothing is due."""
        operation = self.operation(org_uid, operation_id)
        if not operation.schedule_enabled or not operation.cron or not operation.timezone:
            return None
        now = now or self.clock.now()
        fire = self.calendar.latest_fire(operation.cron, operation.timezone, now)
        floor = operation.schedule_floor
        if fire is None or (floor is not None and fire <= floor):
            return None
        actor = actor or Actor.system("scheduler")
        run_id = str(uuid4())
        key = run_key(operation_id, fire)
        if self.reservation(key) is not None:
            raise Conflict("this fire time already has a run", key=key)
        reservation = self.claim(key, run_id, org_uid, {})
        operation.request_run(run_id, Trigger.SCHEDULE, now, actor.meta(), fire_time=fire)
        self.commit(operation, reservation)
        self._enqueue(org_uid, operation_id, run_id)
        return run_id

    def _enqueue(self, org_uid: str, operation_id: str, run_id: str) -> None:
        try:
            self.run_queue.enqueue(org_uid, operation_id, run_id)
        except Exception:  # the event store holds the run; the sweep enqueues it again
            log.exception("could not enqueue run %s; the sweep will retry", run_id)

    def open_run(self, org_uid: str, operation_id: str, run_id: str) -> dict[str, Any] | None:
        """The run's snapshot while it is open; None once finished (or unknown, or deleted)."""
        operation = self.find(Operation, _uuid(operation_id))
        if operation is None or operation.org_uid != org_uid or operation.deleted:
            return None
        snapshot = operation.open_runs.get(run_id)
        return dict(snapshot) if snapshot is not None else None

    def complete_run(
        self, org_uid: str, operation_id: str, run_id: str, counts: dict[str, int], actor: Actor
    ) -> bool:
        """Emits RunCompleted with the counts (never per-certificate data). False when the
        run was already closed. Retries when a concurrent edit of the operation won."""

        def attempt() -> bool:
            operation = self.operation(org_uid, operation_id)
            done = operation.complete_run(run_id, counts, self.clock.now(), actor.meta())
            if done:
                self.commit(operation)
            return done

        return self._retrying(attempt)

    def fail_run(
        self,
        org_uid: str,
        operation_id: str,
        run_id: str,
        stage: str,
        reason: str,
        counts: dict[str, int],
        actor: Actor,
    ) -> bool:
        """Emits RunFailed (stage, reason, counts so far). False when already closed."""

        def attempt() -> bool:
            operation = self.operation(org_uid, operation_id)
            now = self.clock.now()
            done = operation.fail_run(run_id, stage, reason, counts, now, actor.meta())
            if done:
                self.commit(operation)
            return done

        return self._retrying(attempt)

    @staticmethod
    def _retrying(attempt: Callable[[], T]) -> T:
        for _ in range(RETRIES - 1):
            try:
                return attempt()
            except Conflict:
                continue
        return attempt()


def _uuid(value: str) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        return UUID(int=0)
