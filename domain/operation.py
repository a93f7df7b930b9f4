"""Operation: a batch process over the certificates of a folder, run now or on a schedule."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from eventsourcing.domain import Aggregate, event

from domain.errors import Conflict, InvalidInput
from domain.folder import normalise_folder
from domain.organization import clean_name

DEFAULT_WINDOW_DAYS = 30
MAX_WINDOW_DAYS = 3650
MAX_RECIPIENTS = 50
MAX_CRON = 120
EMAIL = re.compile(r"^[^@\s<>,;\"]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z0-9-]{2,63}$")
CRON_ALIASES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


class OperationType(StrEnum):
    REPORT_EXPIRING = "REPORT_EXPIRING"
    ROLL_EXPIRING = "ROLL_EXPIRING"
    ROLL_ALL = "ROLL_ALL"
    UPDATE_TRUSTSTORE = "UPDATE_TRUSTSTORE"
    TAKE_ACTION = "TAKE_ACTION"


class Trigger(StrEnum):
    NOW = "now"
    SCHEDULE = "schedule"


def parse_type(value: str) -> OperationType:
    try:
        return OperationType(str(value).upper())
    except ValueError:
        names = ", ".join(t.value for t in OperationType)
        raise InvalidInput(f"operation type must be one of {names}") from None


def check_recipients(recipients: Any) -> list[str]:
    """A list of plain e-mail addresses (no display names, no duplicates)."""
    if recipients is None:
        return []
    if isinstance(recipients, str) or not isinstance(recipients, list | tuple):
        raise InvalidInput("email recipients must be a list of addresses")
    if len(recipients) > MAX_RECIPIENTS:
        raise InvalidInput(f"at most {MAX_RECIPIENTS} email recipients")
    out: list[str] = []
    for address in recipients:
        text = str(address).strip()
        if not EMAIL.match(text):
            raise InvalidInput(f"not an email address: {text[:80]!r}")
        if text.lower() not in (o.lower() for o in out):
            out.append(text)
    return out


def check_window(days: Any) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= MAX_WINDOW_DAYS:
        raise InvalidInput(
            f"expiring window must be a whole number of days in 0..{MAX_WINDOW_DAYS}"
        )
    return days


def check_timezone(name: str) -> str:
    """An IANA zone name ('Europe/Paris', 'UTC'); raises InvalidInput."""
    text = (name or "").strip()
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {text[:64]!r} (use an IANA name)") from None
    return text


def check_cron_shape(expression: str) -> str:
    """Five cron fields or an @alias; the calendar port checks the field values."""
    text = " ".join((expression or "").split())
    if not text or len(text) > MAX_CRON:
        raise InvalidInput(f"a cron expression has 1..{MAX_CRON} characters")
    if text.startswith("@"):
        if text.lower() not in CRON_ALIASES:
            raise InvalidInput(f"unknown cron alias {text!r}")
        return text.lower()
    if len(text.split(" ")) != 5:
        raise InvalidInput("a cron expression has five fields: minute hour day month weekday")
    return text


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """Normalise an operation's settings; raises InvalidInput. Folder/package existence is the
    application's check (it needs the store)."""
    op_type = parse_type(config.get("op_type", ""))
    package = config.get("action_package_id") or None
    if op_type is OperationType.TAKE_ACTION and not package:
        raise InvalidInput("a TAKE_ACTION operation needs an action package")
    return {
        "name": clean_name(config.get("name", ""), "operation name"),
        "op_type": op_type.value,
        "folder": normalise_folder(config.get("folder") or "/"),
        "recursive": bool(config.get("recursive", True)),
        "window_days": check_window(config.get("window_days", DEFAULT_WINDOW_DAYS)),
        "action_package_id": str(package) if op_type is OperationType.TAKE_ACTION else None,
        "recipients": check_recipients(config.get("recipients")),
    }


CONFIG_FIELDS = ("name", "op_type", "folder", "recursive", "window_days", "action_package_id")
UPDATABLE = {*CONFIG_FIELDS, "recipients"}


class Operation(Aggregate):
    """Emits Created, Updated, Scheduled, Unscheduled, RunRequested, RunCompleted, RunFailed,
    Deleted. A deleted operation accepts no command; a finished run never reopens."""

    @event("Created")
    def __init__(self, org_uid: str, config: dict[str, Any], meta: dict[str, str]) -> None:
        self.org_uid = org_uid
        self.config = config
        self.cron: str | None = None
        self.timezone: str | None = None
        self.schedule_enabled = False
        self.schedule_since: str | None = None
        self.last_fire_time: str | None = None
        self.open_runs: dict[str, dict[str, Any]] = {}
        self.deleted = False

    @staticmethod
    def create(org_uid: str, config: dict[str, Any], meta: dict[str, str]) -> Operation:
        """Raises InvalidInput on bad settings."""
        return Operation(org_uid=org_uid, config=check_config(config), meta=meta)

    # -- read helpers -------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.config["name"])

    @property
    def op_type(self) -> OperationType:
        return OperationType(self.config["op_type"])

    @property
    def action_package_id(self) -> str | None:
        value = self.config.get("action_package_id")
        return str(value) if value else None

    @property
    def schedule_floor(self) -> datetime | None:
        """Fires at or before this instant are done (or predate the schedule)."""
        stamps = [s for s in (self.last_fire_time, self.schedule_since) if s]
        return max(datetime.fromisoformat(s) for s in stamps) if stamps else None

    def _alive(self) -> None:
        if self.deleted:
            raise Conflict("the operation is deleted")

    # -- settings -------------------------------------------------------------
    def update(self, changes: dict[str, Any], meta: dict[str, str]) -> dict[str, Any]:
        """Partial update; emits Updated with the fields that changed. Raises InvalidInput."""
        self._alive()
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
        merged = check_config({**self.config, **changes})
        changed = {k: v for k, v in merged.items() if self.config.get(k) != v}
        if changed:
            self._updated(changes=changed, meta=meta)
        return changed

    @event("Updated")
    def _updated(self, changes: dict[str, Any], meta: dict[str, str]) -> None:
        self.config = {**self.config, **changes}

    def schedule(
        self, cron: str, timezone: str, enabled: bool, since: datetime, meta: dict[str, str]
    ) -> None:
        """Set the schedule; when it is (re-)enabled, fires at or before `since` never run
        (no catch-up of a time it was off). The application's calendar checks the cron
        field values; this checks the shape and the zone. Raises InvalidInput, Conflict."""
        self._alive()
        cron, timezone = check_cron_shape(cron), check_timezone(timezone)
        if (cron, timezone, bool(enabled)) == (self.cron, self.timezone, self.schedule_enabled):
            return
        self._scheduled(
            cron=cron, timezone=timezone, enabled=bool(enabled), since=since.isoformat(), meta=meta
        )

    @event("Scheduled")
    def _scheduled(
        self, cron: str, timezone: str, enabled: bool, since: str, meta: dict[str, str]
    ) -> None:
        self.cron, self.timezone, self.schedule_since = cron, timezone, since
        self.schedule_enabled = enabled

    def unschedule(self, meta: dict[str, str]) -> None:
        """Emits Unscheduled (cron and zone are kept). Raises Conflict when deleted."""
        self._alive()
        if self.schedule_enabled:
            self._unscheduled(meta=meta)

    @event("Unscheduled")
    def _unscheduled(self, meta: dict[str, str]) -> None:
        self.schedule_enabled = False

    # -- runs -------------------------------------------------------------------
    def request_run(
        self,
        run_id: str,
        trigger: Trigger,
        requested_at: datetime,
        meta: dict[str, str],
        fire_time: datetime | None = None,
    ) -> None:
        """Open a run with a snapshot of the settings (a later edit does not change it).

        A scheduled run needs an enabled schedule and a fire time after the schedule floor.
        Raises Conflict (deleted, duplicate run id, stale fire time)."""
        self._alive()
        if run_id in self.open_runs:
            raise Conflict("run already requested")
        if trigger is Trigger.SCHEDULE:
            floor = self.schedule_floor
            if not self.schedule_enabled or fire_time is None:
                raise Conflict("the operation is not scheduled")
            if floor is not None and fire_time <= floor:
                raise Conflict("this fire time has already run")
        fire = fire_time or requested_at
        expires_before = requested_at + timedelta(days=int(self.config["window_days"]))
        snapshot = {**self.config, "expires_before": expires_before.isoformat()}
        self._run_requested(
            run_id=run_id,
            trigger=trigger.value,
            fire_time=fire.isoformat(),
            requested_at=requested_at.isoformat(),
            snapshot=snapshot,
            meta=meta,
        )

    @event("RunRequested")
    def _run_requested(
        self,
        run_id: str,
        trigger: str,
        fire_time: str,
        requested_at: str,
        snapshot: dict[str, Any],
        meta: dict[str, str],
    ) -> None:
        self.open_runs[run_id] = {
            **snapshot,
            "trigger": trigger,
            "fire_time": fire_time,
            "requested_at": requested_at,
        }
        if trigger == Trigger.SCHEDULE.value:
            self.last_fire_time = fire_time

    def complete_run(
        self, run_id: str, counts: dict[str, int], finished_at: datetime, meta: dict[str, str]
    ) -> bool:
        """Close an open run with its counts; False (no event) when it is already closed."""
        if run_id not in self.open_runs:
            return False
        self._run_completed(
            run_id=run_id, counts=dict(counts), finished_at=finished_at.isoformat(), meta=meta
        )
        return True

    @event("RunCompleted")
    def _run_completed(
        self, run_id: str, counts: dict[str, int], finished_at: str, meta: dict[str, str]
    ) -> None:
        self.open_runs.pop(run_id, None)

    def fail_run(
        self,
        run_id: str,
        stage: str,
        reason: str,
        counts: dict[str, int],
        finished_at: datetime,
        meta: dict[str, str],
    ) -> bool:
        """Close an open run as failed; False (no event) when it is already closed."""
        if run_id not in self.open_runs:
            return False
        self._run_failed(
            run_id=run_id,
            stage=stage,
            reason=reason[:2000],
            counts=dict(counts),
            finished_at=finished_at.isoformat(),
            meta=meta,
        )
        return True

    @event("RunFailed")
    def _run_failed(
        self,
        run_id: str,
        stage: str,
        reason: str,
        counts: dict[str, int],
        finished_at: str,
        meta: dict[str, str],
    ) -> None:
        self.open_runs.pop(run_id, None)

    def delete(self, finished_at: datetime, meta: dict[str, str]) -> None:
        """Emits RunFailed for every open run (reason: deleted), then Deleted."""
        if self.deleted:
            return
        for run_id in list(self.open_runs):
            self.fail_run(run_id, "cancelled", "the operation was deleted", {}, finished_at, meta)
        self._deleted(meta=meta)

    @event("Deleted")
    def _deleted(self, meta: dict[str, str]) -> None:
        self.deleted = True
