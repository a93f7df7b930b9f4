"""The audit trail read model: before -> after values, actors, queries, past states."""

from __future__ import annotations

import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from application.bootstrap import Certwarden, bootstrap
from domain.errors import InvalidInput, NotFound
from domain.meta import Actor, ActorKind
from projections.audit import AuditProjection
from tests import factories as f
from tests.conftest import index_names

ADMIN = Actor(ActorKind.API_KEY, "key-1", "user-1", "req-1", "10.1.2.3")
POLICY = [{"topics": ["${org.uid}/feed/#"], "actions": ["PUBLISH"]}]


def audit_lookups(cw: Certwarden) -> int:
    """Entities read back from the event store, over both shares of the audit trail."""
    return sum(p.lookups for p in cw.runner.projections if isinstance(p, AuditProjection))


def new_cert(cw: Certwarden) -> tuple[str, str]:
    org = cw.registry.create_organization(f"o-{uuid.uuid4().hex[:6]}", ADMIN).uid
    cid = cw.registry.import_certificates(org, f.make_self_signed_leaf(f.unique_cn()).pem, ADMIN)
    cw.sync()
    return org, cid[0].certificate_id


class TestAuditTrailInMemory:
    @pytest.fixture
    def store(self) -> str:
        return "memory"

    def test_each_event_records_the_fields_it_changed_before_and_after(
        self, cw: Certwarden
    ) -> None:
        org, cid = new_cert(cw)
        cw.registry.update_certificate(org, cid, {"name": "one", "status": "INACTIVE"}, ADMIN)
        cw.registry.update_certificate(org, cid, {"name": "two"}, ADMIN)
        cw.sync()
        items, _ = cw.audit.query(org, entity_id=cid, newest_first=False)
        renamed = [i["changes"] for i in items if i["event_type"] == "Renamed"]
        assert renamed[1] == {"name": {"before": "one", "after": "two"}}
        deactivated = next(i for i in items if i["event_type"] == "Deactivated")
        assert deactivated["changes"] == {"status": {"before": "ACTIVE", "after": "INACTIVE"}}

    def test_a_creation_event_records_its_fields_as_new(self, cw: Certwarden) -> None:
        org, cid = new_cert(cw)
        imported = cw.audit.query(org, entity_id=cid, event_type="Imported")[0][0]
        assert imported["changes"]["status"] == {"before": None, "after": "ACTIVE"}
        assert imported["changes"]["facts"]["after"]["fingerprint"] == imported["entity_key"]
        assert "pem" not in imported["changes"]["facts"]["after"]

    def test_each_row_names_the_actor_request_and_source_address(self, cw: Certwarden) -> None:
        org, cid = new_cert(cw)
        row = cw.audit.query(org, entity_id=cid)[0][0]
        assert (row["actor_kind"], row["actor"], row["actor_owner"]) == (
            "api_key",
            "key-1",
            "user-1",
        )
        assert (row["request_id"], row["source_ip"]) == ("req-1", "10.1.2.3")

    def test_api_key_secret_hashes_never_reach_the_audit_trail(self, cw: Certwarden) -> None:
        org, _ = new_cert(cw)
        user = cw.registry.create_user(org, "bob", "viewer", ADMIN)
        cw.registry.issue_api_key(org, str(user.id), "bob key", ADMIN)
        cw.sync()
        issued = cw.audit.query(org, entity_type="ApiKey")[0][0]
        assert issued["entity_key"] == "bob key" and "secret_hash" not in issued["changes"]
        shares = [p for p in cw.runner.projections if isinstance(p, AuditProjection)]
        cached = [e.fields for share in shares for e in share._cache.values()]
        assert cached and all("secret_hash" not in fields for fields in cached)

    def test_a_rebuild_from_zero_needs_no_lookups(self, cw: Certwarden) -> None:
        org, cid = new_cert(cw)
        cw.registry.update_certificate(org, cid, {"name": "renamed"}, ADMIN)
        cw.sync()
        before = cw.audit.query(org, newest_first=False)[0]
        cw.runner.rebuild(["audit"])
        assert audit_lookups(cw) == 0
        assert cw.audit.query(org, newest_first=False)[0] == before

    def test_a_rebuild_builds_the_secondary_indexes_again(self, cw: Certwarden) -> None:
        new_cert(cw)
        before = index_names(cw)
        assert {"audit_trail_org", "lookup_certificates_fp"} <= before
        cw.runner.rebuild()
        assert index_names(cw) == before

    def test_a_catch_up_from_empty_read_models_builds_the_indexes_at_the_end(
        self, cw: Certwarden, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        org, cid = new_cert(cw)
        cw.registry.update_certificate(org, cid, {"name": "renamed"}, ADMIN)
        cw.sync()
        expected = cw.audit.query(org, newest_first=False)[0]
        indexes = index_names(cw)
        runner = cw.runner
        with cw.db.transaction() as tx:  # as a new deployment on an existing store: no views
            for projection in runner.projections:
                projection.reset(tx)
            tx.execute("DELETE FROM projection_tracking")
        runner._reload()
        used = []
        bulk = runner._indexes_built_at_the_end

        def spy(projections: Any) -> Any:
            used.append(len(projections))
            return bulk(projections)

        monkeypatch.setattr(runner, "_indexes_built_at_the_end", spy)
        runner.bulk_from_zero = 1
        runner.catch_up()
        here = runner.projections  # the audit trail too, even beside a helper (PostgreSQL)
        assert used == [len(here)]
        assert cw.audit.query(org, newest_first=False)[0] == expected
        assert index_names(cw) == indexes
        runner.catch_up()  # nothing to do, not empty: no second drop
        assert used == [len(here)]

    def test_the_trail_filters_by_actor_kind_and_several_event_types(self, cw: Certwarden) -> None:
        org, cid = new_cert(cw)
        cw.registry.update_certificate(org, cid, {"status": "INACTIVE"}, ADMIN)
        cw.registry.pin_host_on_first_connect(cid, "10.9.9.9")
        cw.sync()
        by_device, _ = cw.audit.query(org, actor_kind="certificate")
        assert "HostPinned" in {i["event_type"] for i in by_device}
        assert {i["actor_kind"] for i in by_device} == {"certificate"}
        several, _ = cw.audit.query(org, entity_id=cid, event_type="Imported,HostPinned")
        assert {i["event_type"] for i in several} == {"Imported", "HostPinned"}

    def test_a_time_range_means_the_same_instants_whatever_the_offset(self, cw: Certwarden) -> None:
        org, cid = new_cert(cw)
        time.sleep(0.01)
        middle = datetime.now(UTC)
        time.sleep(0.01)
        cw.registry.update_certificate(org, cid, {"name": "later"}, ADMIN)
        cw.sync()
        utc, _ = cw.audit.query(org, since=middle.isoformat())
        paris = middle.astimezone(pytest.importorskip("zoneinfo").ZoneInfo("Europe/Paris"))
        local, _ = cw.audit.query(org, since=paris.isoformat())
        assert [i["event_type"] for i in utc] == [i["event_type"] for i in local] == ["Renamed"]
        earlier, _ = cw.audit.query(org, until=middle.isoformat().replace("+00:00", "Z"))
        assert "Renamed" not in {i["event_type"] for i in earlier}

    def test_an_unparseable_time_is_invalid_input(self, cw: Certwarden) -> None:
        with pytest.raises(InvalidInput):
            cw.audit.query(None, since="last tuesday")

    def test_pages_follow_each_other_without_gaps_or_repeats(self, cw: Certwarden) -> None:
        org, cid = new_cert(cw)
        for n in range(7):
            cw.registry.update_certificate(org, cid, {"name": f"n{n}"}, ADMIN)
        cw.sync()
        everything = [i["position"] for i in cw.audit.query(org, newest_first=False)[0]]
        seen: list[int] = []
        cursor = None
        while True:
            page, cursor = cw.audit.query(org, newest_first=False, limit=3, cursor=cursor)
            seen += [i["position"] for i in page]
            if cursor is None:
                break
        assert seen == everything and len(seen) > 7

    def test_a_certificate_as_it_was_before_a_change(self, cw: Certwarden) -> None:
        org, cid = new_cert(cw)
        time.sleep(0.01)
        moment = datetime.now(UTC)
        cw.registry.update_certificate(org, cid, {"name": "renamed", "status": "INACTIVE"}, ADMIN)
        then = cw.registry.certificate_as_of(org, cid, moment)
        assert then.name != "renamed" and then.status == "ACTIVE"
        assert cw.registry.certificate_as_of(org, cid, datetime.now(UTC)).name == "renamed"
        with pytest.raises(NotFound):
            cw.registry.certificate_as_of(org, cid, moment - timedelta(days=1))

    def test_a_deleted_certificate_is_not_found_after_its_deletion_but_is_before(
        self, cw: Certwarden
    ) -> None:
        org, cid = new_cert(cw)
        time.sleep(0.01)
        alive = datetime.now(UTC)
        cw.registry.delete_certificate(org, cid, ADMIN)
        assert cw.registry.certificate_as_of(org, cid, alive).deleted is False
        with pytest.raises(NotFound):
            cw.registry.certificate_as_of(org, cid, datetime.now(UTC))

    def test_a_reused_policy_id_resolves_to_the_policy_of_that_time(self, cw: Certwarden) -> None:
        org, _ = new_cert(cw)
        first = cw.registry.create_policy(org, "p", "First", POLICY, ADMIN)
        time.sleep(0.01)
        during_first = datetime.now(UTC)
        cw.registry.delete_policy(org, "p", ADMIN)
        time.sleep(0.01)
        gap = datetime.now(UTC)
        second = cw.registry.create_policy(org, "p", "Second", POLICY, ADMIN)
        assert cw.registry.policy_as_of(org, "p", during_first).id == first.id
        assert cw.registry.policy_as_of(org, "p", datetime.now(UTC)).id == second.id
        with pytest.raises(NotFound):
            cw.registry.policy_as_of(org, "p", gap)


class TestAuditTrailOnSqlite(TestAuditTrailInMemory):
    @pytest.fixture
    def store(self) -> str:
        return "sqlite"

    def test_after_a_restart_previous_values_are_read_back_once_per_entity(
        self, cw: Certwarden
    ) -> None:
        org, cid = new_cert(cw)
        cw.registry.update_certificate(org, cid, {"name": "before restart"}, ADMIN)
        cw.sync()
        again = bootstrap(cw.settings)
        try:
            again.start(background=False)
            again.registry.update_certificate(org, cid, {"name": "after"}, ADMIN)
            again.registry.update_certificate(org, cid, {"name": "after again"}, ADMIN)
            again.sync()
            assert audit_lookups(again) == 1
            last, _ = again.audit.query(org, entity_id=cid, event_type="Renamed", limit=2)
            assert last[1]["changes"] == {"name": {"before": "before restart", "after": "after"}}
        finally:
            again.close()

    def test_an_entity_key_is_its_key_after_each_event_warm_or_read_back(
        self, cw: Certwarden
    ) -> None:
        org = cw.registry.create_organization(f"o-{uuid.uuid4().hex[:6]}", ADMIN).uid
        cw.registry.rename_organization(org, "first name", ADMIN)
        cw.sync()
        again = bootstrap(cw.settings)  # a restart: the next rename is read back cold
        try:
            again.start(background=False)
            again.registry.rename_organization(org, "second name", ADMIN)
            again.sync()
            assert audit_lookups(again) == 1
            renamed, _ = again.audit.query(org, event_type="Renamed", newest_first=False)
            assert [r["entity_key"] for r in renamed] == ["first name", "second name"]
        finally:
            again.close()

    def test_the_first_audit_read_model_is_replaced_and_replayed(self, cw: Certwarden) -> None:
        org, cid = new_cert(cw)
        rows = len(cw.audit.query(org, limit=1000)[0])
        cw.close()
        views = sqlite3.connect(cw.settings.views_path)
        views.executescript(
            "DROP TABLE audit_trail; CREATE TABLE audit_log (position BIGINT PRIMARY KEY);"
        )
        views.close()
        again = bootstrap(cw.settings)
        try:
            again.start(background=False)
            assert len(again.audit.query(org, limit=1000)[0]) == rows
            tables = {r[0] for r in again.db.query("SELECT name FROM sqlite_master")}
            assert "audit_log" not in tables
        finally:
            again.close()
