"""Two schedulers over one event store race on the same fire times: exactly one run each."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.scheduler import CroniterCalendar, Scheduler
from application.bootstrap import Certwarden, bootstrap
from application.operations import NoQueue, SystemClock
from application.registry import Registry
from tests.conftest import drop_schema, make_settings
from tests.operations_support import ADMIN, new_org, operation

OPERATIONS = 4
STEPS = 12


@pytest.fixture(params=["postgres", "sqlite"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Certwarden, Registry]]:
    """A container and a second, independent Registry application on the same store."""
    settings = make_settings(request.param, tmp_path)
    cw = bootstrap(settings)
    cw.start(background=False)
    other = Registry(env=settings.eventsourcing_env())
    other.calendar, other.clock, other.run_queue = CroniterCalendar(), SystemClock(), NoQueue()
    cw.registry.run_queue = NoQueue()
    try:
        yield cw, other
    finally:
        other.close()
        cw.close()
        if request.param == "postgres":
            drop_schema(settings)


def test_two_schedulers_racing_on_the_same_fire_times_request_exactly_one_run_each(
    pair: tuple[Certwarden, Registry],
) -> None:
    cw, other = pair
    org = new_org(cw)
    op_ids = []
    for _ in range(OPERATIONS):
        op_id = operation(cw, org, "ROLL_ALL")
        cw.registry.update_operation(org, op_id, {"schedule": {"cron": "* * * * *"}}, ADMIN)
        op_ids.append(op_id)
    cw.sync()
    start = datetime.now(UTC).replace(second=1, microsecond=0) + timedelta(minutes=2)
    instants = [start + timedelta(minutes=k) for k in range(STEPS)]
    schedulers = [
        Scheduler(app, cw.operations, CroniterCalendar(), SystemClock())
        for app in (cw.registry, other)
    ]
    barrier = threading.Barrier(2)
    requested: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def drive(index: int) -> None:
        try:
            for now in instants:
                barrier.wait(timeout=30)
                requested[index].extend(schedulers[index].tick(now))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    cw.sync()
    fires: Counter[tuple[str, str]] = Counter()
    for op_id in op_ids:
        runs, _ = cw.operations.runs(org, op_id, limit=500)
        fires.update((op_id, r["fire_time"]) for r in runs)
    expected = {
        (op_id, (at - timedelta(seconds=1)).isoformat()) for op_id in op_ids for at in instants
    }
    assert set(fires) == expected  # none missing
    assert set(fires.values()) == {1}  # none twice
    assert len(requested[0]) + len(requested[1]) == OPERATIONS * STEPS
