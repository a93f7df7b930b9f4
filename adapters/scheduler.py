"""Cron schedules: CroniterCalendar (the CronCalendar port) and the Scheduler loop.

DST rule (deliberate): cron expressions are read on the operation's local wall clock and
each wall time fires at most once.
- Repeated hour (fall back, e.g. 01:30 happens twice): only the first occurrence fires
  (fold=0), so a daily 01:30 job runs once; a `*/15` job pauses for the repeated hour.
- Skipped hour (spring forward, 02:30 does not exist): the wall time fires once, shifted
  forward by the gap (02:30 EST -> 03:30 EDT). Two wall times landing on the same instant
  (02:00 shifted, 03:00 real) are one fire time.
Fire times are stored in UTC; the Reservation key `run:{operation}:{fire UTC}` makes each
one produce exactly one run however many schedulers run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from croniter import croniter
from croniter.croniter import CroniterBadCronError, CroniterBadDateError

from application.ports import Clock
from domain.errors import Conflict, DomainError, InvalidInput
from projections.operations_view import OperationsView, ScheduledOperation

log = logging.getLogger(__name__)

MARGIN = timedelta(hours=3)  # more than any UTC offset change (DST moves clocks by <= 2 h)
MAX_STEPS = 5000


def wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """A naive local wall time as a UTC instant: fold=0 takes the first occurrence of a
    repeated time and moves a non-existent time forward by the gap."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


class CroniterCalendar:
    """croniter iterates naive wall-clock times; the zone is applied by `wall_to_utc`.
    Iterating in an aware zone instead fires a 01:30 job twice on fall-back (findings)."""

    def validate(self, expression: str) -> None:
        if not croniter.is_valid(expression):
            raise InvalidInput(f"invalid cron expression {expression!r}")
        try:
            croniter(expression, datetime(2001, 1, 1)).get_next(datetime)
        except (CroniterBadCronError, CroniterBadDateError):
            raise InvalidInput(f"cron expression {expression!r} never fires") from None

    def latest_fire(self, expression: str, timezone: str, at: datetime) -> datetime | None:
        zone = ZoneInfo(timezone)
        local = at.astimezone(zone).replace(tzinfo=None)
        walker = croniter(expression, local + MARGIN)
        best: datetime | None = None
        for _ in range(MAX_STEPS):
            try:
                wall = walker.get_prev(datetime)
            except CroniterBadDateError:
                break
            instant = wall_to_utc(wall, zone)
            if instant <= at and (best is None or instant > best):
                best = instant
            if best is not None and wall < local - MARGIN:
                break
        return best

    def next_fire(self, expression: str, timezone: str, after: datetime) -> datetime | None:
        zone = ZoneInfo(timezone)
        local = after.astimezone(zone).replace(tzinfo=None)
        walker = croniter(expression, local - MARGIN)
        best: datetime | None = None
        for _ in range(MAX_STEPS):
            try:
                wall = walker.get_next(datetime)
            except CroniterBadDateError:
                break
            instant = wall_to_utc(wall, zone)
            if instant > after and (best is None or instant < best):
                best = instant
            if best is not None and wall > local + MARGIN:
                break
        return best


class Fires(Protocol):
    """The application command the scheduler calls (OperationCommands.fire_schedule)."""

    def fire_schedule(
        self, org_uid: str, operation_id: str, now: datetime | None = None
    ) -> str | None: ...


class Scheduler:
    """Each tick: for every enabled schedule whose next fire time has come, ask the
    application to request the run. The application picks the latest due fire (one
    catch-up run after downtime) and the event store arbitrates between schedulers."""

    def __init__(
        self,
        app: Fires,
        view: OperationsView,
        calendar: CroniterCalendar,
        clock: Clock,
        *,
        tick_seconds: float = 5.0,
        sweep: Callable[[], int] | None = None,
        sweep_seconds: float = 60.0,
    ) -> None:
        self.app = app
        self.view = view
        self.calendar = calendar
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.sweep = sweep
        self.sweep_seconds = sweep_seconds
        self.conflicts = 0  # fires another scheduler won (observability, tests)
        self._next: dict[tuple[str, int, str | None], datetime | None] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def due(self, item: ScheduledOperation, now: datetime) -> bool:
        key = (item.operation_id, item.version, item.floor)
        if key not in self._next:
            if len(self._next) > 100_000:
                self._next.clear()
            after = datetime.fromisoformat(item.floor) if item.floor else now
            try:
                self._next[key] = self.calendar.next_fire(item.cron, item.timezone, after)
            except (ValueError, KeyError, CroniterBadCronError):
                log.exception("schedule of operation %s is unusable", item.operation_id)
                self._next[key] = None
        fire = self._next[key]
        return fire is not None and fire <= now

    def tick(self, now: datetime | None = None) -> list[str]:
        """One pass over the schedules; returns the run ids this scheduler requested."""
        now = now or self.clock.now()
        requested = []
        for item in self.view.scheduled():
            if not self.due(item, now):
                continue
            try:
                run_id = self.app.fire_schedule(item.org_uid, item.operation_id, now)
            except Conflict:
                self.conflicts += 1
                continue
            except DomainError as exc:
                log.warning("schedule of %s not fired: %s", item.operation_id, exc.detail)
                continue
            if run_id is not None:
                requested.append(run_id)
        return requested

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def run_forever(self) -> None:
        self._loop()

    def _loop(self) -> None:
        last_sweep = 0.0
        elapsed = 0.0
        while not self._stop.is_set():
            try:
                self.tick()
                if self.sweep is not None and elapsed - last_sweep >= self.sweep_seconds:
                    self.sweep()
                    last_sweep = elapsed
            except Exception:  # keep scheduling; the next tick retries
                log.exception("scheduler tick failed")
            self._stop.wait(self.tick_seconds)
            elapsed += self.tick_seconds
