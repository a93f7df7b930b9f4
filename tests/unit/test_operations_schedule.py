"""Schedules: fire times in the operation's zone, DST rules, one catch-up run after downtime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from adapters.scheduler import CroniterCalendar
from application.bootstrap import Certwarden
from tests.operations_support import ADMIN, new_org, operation

CAL = CroniterCalendar()


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def scheduled(cw: Certwarden, cron: str, zone: str, since: datetime) -> tuple[str, str]:
    """An organization with one operation scheduled at `since` (the schedule's start)."""
    cw.registry.clock = FakeClock(since)
    org = new_org(cw)
    op_id = operation(cw, org, "ROLL_ALL")
    schedule = {"cron": cron, "timezone": zone}
    cw.registry.update_operation(org, op_id, {"schedule": schedule}, ADMIN)
    return org, op_id


def fire_times(cw: Certwarden, org: str, op_id: str, start: datetime, hours: int) -> list[str]:
    """Call the scheduler command every 10 minutes; returns the fire times that got a run."""
    requested = []
    for step in range(hours * 6 + 1):
        now = start + timedelta(minutes=10 * step)
        if cw.registry.fire_schedule(org, op_id, now) is not None:
            requested.append(cw.registry.operation(org, op_id).last_fire_time)
    return [str(t) for t in requested]


def test_a_daily_job_in_the_repeated_hour_runs_once_on_the_fall_back_day(cw: Certwarden) -> None:
    org, op_id = scheduled(cw, "30 1 * * *", "America/New_York", utc("2024-11-02T12:00"))
    fired = fire_times(cw, org, op_id, utc("2024-11-03T00:00"), 12)
    assert fired == ["2024-11-03T05:30:00+00:00"]  # 01:30 EDT; 01:30 EST (06:30Z) skipped


def test_a_daily_job_in_the_skipped_hour_runs_once_shifted_forward(cw: Certwarden) -> None:
    org, op_id = scheduled(cw, "30 2 * * *", "America/New_York", utc("2024-03-09T12:00"))
    fired = fire_times(cw, org, op_id, utc("2024-03-10T00:00"), 12)
    assert fired == ["2024-03-10T07:30:00+00:00"]  # 02:30 does not exist: 03:30 EDT


def _fires(cron: str, zone: str, start: datetime, end: datetime) -> list[str]:
    out, current = [], start
    while (nxt := CAL.next_fire(cron, zone, current)) is not None and nxt <= end:
        out.append(nxt.strftime("%H:%M"))
        current = nxt
    return out


def test_a_quarter_hourly_job_does_not_repeat_the_repeated_hour() -> None:
    fires = _fires(
        "*/15 * * * *", "America/New_York", utc("2024-11-03T04:50"), utc("2024-11-03T07:10")
    )
    assert fires == ["05:00", "05:15", "05:30", "05:45", "07:00"]


def test_a_quarter_hourly_job_keeps_one_fire_per_instant_across_the_skipped_hour() -> None:
    fires = _fires(
        "*/15 * * * *", "America/New_York", utc("2024-03-10T06:40"), utc("2024-03-10T08:00")
    )
    assert fires == ["06:45", "07:00", "07:15", "07:30", "07:45", "08:00"]


def test_fire_times_follow_the_operations_zone_across_seasons() -> None:
    assert CAL.next_fire("0 9 * * *", "Europe/Paris", utc("2030-01-10T00:00")) == utc(
        "2030-01-10T08:00"
    )
    assert CAL.next_fire("0 9 * * *", "Europe/Paris", utc("2030-07-10T00:00")) == utc(
        "2030-07-10T07:00"
    )


def test_after_downtime_only_the_latest_missed_fire_runs(cw: Certwarden) -> None:
    org, op_id = scheduled(cw, "0 * * * *", "UTC", utc("2030-01-01T00:30"))
    first = cw.registry.fire_schedule(org, op_id, utc("2030-01-01T01:10"))
    catch_up = cw.registry.fire_schedule(org, op_id, utc("2030-01-01T06:10"))
    again = cw.registry.fire_schedule(org, op_id, utc("2030-01-01T06:20"))
    assert first is not None and catch_up is not None and again is None
    op = cw.registry.operation(org, op_id)
    assert op.last_fire_time == "2030-01-01T06:00:00+00:00"
    assert len(op.open_runs) == 2  # 01:00 and the one catch-up for 02:00..06:00


def test_fires_before_the_schedule_was_enabled_never_run(cw: Certwarden) -> None:
    org, op_id = scheduled(cw, "0 * * * *", "UTC", utc("2030-01-01T10:05"))
    assert cw.registry.fire_schedule(org, op_id, utc("2030-01-01T10:30")) is None
    assert cw.registry.fire_schedule(org, op_id, utc("2030-01-01T11:01")) is not None


def test_a_disabled_schedule_does_not_fire(cw: Certwarden) -> None:
    org, op_id = scheduled(cw, "0 * * * *", "UTC", utc("2030-01-01T00:30"))
    cw.registry.update_operation(
        org, op_id, {"schedule": {"cron": "0 * * * *", "enabled": False}}, ADMIN
    )
    assert cw.registry.fire_schedule(org, op_id, utc("2030-01-01T03:00")) is None


def test_the_same_fire_time_requested_twice_produces_one_run(cw: Certwarden) -> None:
    org, op_id = scheduled(cw, "0 * * * *", "UTC", utc("2030-01-01T00:30"))
    now = utc("2030-01-01T01:00:30")
    assert cw.registry.fire_schedule(org, op_id, now) is not None
    assert cw.registry.fire_schedule(org, op_id, now) is None
    assert len(cw.registry.operation(org, op_id).open_runs) == 1


def test_a_scheduler_tick_requests_only_the_due_runs(cw: Certwarden) -> None:
    org, due = scheduled(cw, "0 * * * *", "UTC", utc("2030-01-01T00:30"))
    later = operation(cw, org, "ROLL_ALL")
    cw.registry.update_operation(org, later, {"schedule": {"cron": "0 12 * * *"}}, ADMIN)
    operation(cw, org, "ROLL_ALL")  # not scheduled
    cw.sync()
    assert len(cw.scheduler.tick(utc("2030-01-01T01:00:05"))) == 1
    cw.sync()
    assert cw.scheduler.tick(utc("2030-01-01T01:00:10")) == []
    assert cw.registry.operation(org, due).last_fire_time == "2030-01-01T01:00:00+00:00"
    assert cw.registry.operation(org, later).last_fire_time is None


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata", "Pacific/Chatham"])
def test_latest_and_next_fire_bracket_any_instant(zone: str) -> None:
    at = utc("2030-04-06T13:37")
    latest, following = (
        CAL.latest_fire("*/20 * * * *", zone, at),
        CAL.next_fire("*/20 * * * *", zone, at),
    )
    assert latest is not None and following is not None
    assert latest <= at < following
    assert following - latest == timedelta(minutes=20)
