"""Backup, restore and the audit trail again, on the real PostgreSQL of this machine."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from adapters import catch_up_helper
from adapters.backup_file import services
from adapters.catch_up_helper import FeedProcess
from application.backup_format import BackupFormatError
from application.bootstrap import Certwarden, bootstrap
from domain.errors import Conflict
from tests.conftest import drop_schema, index_names, make_settings
from tests.unit import test_audit_trail, test_backup
from tests.unit.test_backup import backup_of, other_store, populate, read_models, restore_into

AUDIT_INDEXES = {"audit_trail_org", "audit_trail_entity", "audit_trail_key", "audit_trail_time"}


class TestBackupOnPostgres(test_backup.TestBackupInMemory):
    @pytest.fixture
    def store(self) -> str:
        return "postgres"

    def test_a_duplicate_found_by_the_database_mid_copy_rolls_everything_back(
        self, cw: Certwarden, target: Certwarden, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        made = populate(cw)
        data = backup_of(cw, made["org"])
        restorer = services(target)[1]
        restorer.batch = 4
        restorer.restore(io.BytesIO(data))
        before = target.registry.max_position()
        monkeypatch.setattr(restorer, "_check_target", lambda plan: [])  # let it reach COPY
        with pytest.raises(Conflict):
            restorer.restore(io.BytesIO(data))
        assert target.registry.max_position() == before

    def test_restored_events_get_new_positions_after_the_existing_ones(
        self, cw: Certwarden, target: Certwarden
    ) -> None:
        made = populate(cw)
        populate(target, "already-here")
        head = target.registry.max_position()
        services(target)[1].restore(io.BytesIO(backup_of(cw, made["org"])))
        rows, _ = target.audit.query(made["org"], newest_first=False, limit=1000)
        assert rows and min(r["position"] for r in rows) > head


class TestAuditTrailOnPostgres(test_audit_trail.TestAuditTrailInMemory):
    @pytest.fixture
    def store(self) -> str:
        return "postgres"


class Feeds:
    """The target's real helpers, keeping each restore feed they started."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.names = real.names
        self.fed: list[FeedProcess] = []

    def close(self) -> None:
        self.real.close()

    def start(self, names: Sequence[str], prepare: Any) -> Any:
        return self.real.start(names, prepare)

    def feed(self, names: Sequence[str], indexes: Sequence[str]) -> FeedProcess:
        run: FeedProcess = self.real.feed(names, indexes)
        self.fed.append(run)
        return run


class TestRestoreFedOnPostgres(TestBackupOnPostgres):
    """Every backup test again, with the restore's events fed to a helper process that fills
    the audit trail while they are written (the path of big restores, here from the first
    event on), and what the feed must never do: write what the restore did not."""

    @pytest.fixture
    def target(self, store: str, tmp_path: Path) -> Iterator[Certwarden]:
        for container in other_store(store, tmp_path):
            container.runner.bulk_from_zero = 1
            container.runner.helpers = Feeds(container.runner.helpers)
            yield container

    @staticmethod
    def feeds(target: Certwarden) -> list[FeedProcess]:
        helpers = target.runner.helpers
        assert isinstance(helpers, Feeds)
        return helpers.fed

    def test_the_helper_fills_the_audit_trail_and_builds_its_indexes(
        self, cw: Certwarden, target: Certwarden
    ) -> None:
        made = populate(cw)
        plan, _ = restore_into(target, backup_of(cw, made["org"]))
        (fed,) = self.feeds(target)
        assert fed.process.returncode == 0 and not fed.failed  # it filled and committed
        assert target.runner.fed == plan.restored  # and this process filled the rest
        expected = read_models(cw, made["org"])
        assert read_models(target, made["org"]) == expected
        head = target.registry.max_position()
        assert target.runner.position_of("audit") == target.runner.position_of("audit.b") == head
        assert AUDIT_INDEXES <= index_names(target)

    def test_positions_are_contiguous_and_the_store_goes_on_after_them(
        self, cw: Certwarden, target: Certwarden
    ) -> None:
        made = populate(cw)
        restore_into(target, backup_of(cw, made["org"]))
        notifications = target.registry.recorder.select_notifications(start=1, limit=10_000)
        positions = [n.id for n in notifications]
        assert positions == list(range(1, len(positions) + 1))
        target.registry.create_organization("after", test_backup.ADMIN)
        assert target.registry.max_position() == positions[-1] + 1

    def test_a_file_refused_at_its_end_leaves_no_audit_row_behind(
        self, cw: Certwarden, target: Certwarden
    ) -> None:
        made = populate(cw)
        lines = gzip.decompress(backup_of(cw, made["org"])).splitlines(keepends=True)
        cut_short = gzip.compress(b"".join(lines[:-1]))  # every event, then no trailer
        restorer = services(target)[1]
        restorer.batch = 4  # several batches reach the helper before the end
        with pytest.raises(BackupFormatError, match="trailer"):
            restorer.restore(io.BytesIO(cut_short))
        (fed,) = self.feeds(target)
        assert fed.process.wait(timeout=30) == 3  # rolled back: the restore never committed
        assert not target.db.query("SELECT 1 FROM audit_trail")
        assert target.registry.max_position() == 0
        restore_into(target, backup_of(cw, made["org"]))  # and the store is fine for a retry
        assert read_models(target, made["org"]) == read_models(cw, made["org"])

    def test_a_helper_killed_midway_only_costs_time(
        self, cw: Certwarden, target: Certwarden, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        made = populate(cw)
        restorer = services(target)[1]
        restorer.batch = 4
        sent = FeedProcess.send_share

        def send_then_die(self: FeedProcess, last: int, events: Any) -> None:
            sent(self, last, events)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

        monkeypatch.setattr(FeedProcess, "send_share", send_then_die)
        restorer.restore(io.BytesIO(backup_of(cw, made["org"])))
        (fed,) = self.feeds(target)
        assert fed.failed and fed.process.returncode != 0
        assert read_models(target, made["org"]) == read_models(cw, made["org"])
        assert AUDIT_INDEXES <= index_names(target)

    def test_read_models_behind_the_restore_s_start_are_left_to_the_catch_up(
        self, cw: Certwarden, target: Certwarden
    ) -> None:
        made = populate(cw)
        data = backup_of(cw, made["org"])
        target.registry.create_organization("unsynced", test_backup.ADMIN)  # not caught up yet
        restore_into(target, data)
        (fed,) = self.feeds(target)
        assert fed.process.returncode == 4  # nothing written by it
        assert read_models(target, made["org"]) == read_models(cw, made["org"])
        head = target.registry.max_position()
        assert target.runner.position_of("audit") == head


def test_a_restore_into_a_running_server_is_fed_beside_its_runner_thread(
    cw: Certwarden, tmp_path: Path
) -> None:
    """The server's shape: the runner follows the log in its own thread meanwhile."""
    made = populate(cw)
    data = backup_of(cw, made["org"])
    settings = make_settings("postgres", tmp_path / "server")
    server = bootstrap(settings)
    try:
        server.runner.bulk_from_zero = 1
        server.runner.poll_interval = 0.01  # it keeps trying to catch up all along
        server.start(background=True)
        feeds = Feeds(server.runner.helpers)
        server.runner.helpers = feeds
        plan, _ = restore_into(server, data)
        assert feeds.fed and feeds.fed[0].process.returncode == 0
        assert server.runner.fed == plan.restored
        server.sync()
        assert read_models(server, made["org"]) == read_models(cw, made["org"])
        org = server.registry.create_organization("after", test_backup.ADMIN).uid
        server.sync()  # and it goes on following the log
        assert server.audit.query(org)[0]
    finally:
        server.close()
        drop_schema(settings)


def test_a_helper_that_takes_nothing_is_ended_and_never_blocks_the_restore(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(catch_up_helper, "STALL_SECONDS", 0.5)
    stuck = subprocess.Popen(["sleep", "60"], stdin=subprocess.PIPE)  # reads nothing
    assert stuck.stdin is not None
    os.set_blocking(stuck.stdin.fileno(), False)
    feed = FeedProcess(stuck)
    feed.begin(0)
    started = time.monotonic()
    for _ in range(100):  # ~6 MB: far more than a pipe holds
        feed.send_share(100, [(n, n, 1, "t", b"x" * 600) for n in range(100)])
    assert time.monotonic() - started < 10
    assert feed.failed
    assert stuck.wait(timeout=5) != 0
