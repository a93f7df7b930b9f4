"""Backup, restore and the audit trail again, on the real PostgreSQL of this machine."""

from __future__ import annotations

import io

import pytest

from adapters.backup_file import services
from application.bootstrap import Certwarden
from domain.errors import Conflict
from tests.unit import test_audit_trail, test_backup
from tests.unit.test_backup import backup_of, populate


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
