"""Backup and restore through the application layer; runs on every persistence flavour."""

from __future__ import annotations

import gzip
import io
import json
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.backup_file import services
from application.bootstrap import Certwarden, bootstrap
from application.restore import RestoreRefused
from domain.errors import Conflict, NotFound
from domain.meta import Actor, ActorKind
from domain.organization import org_uuid
from projections.audit_view import AUDIT_FIELDS
from projections.lookup import CERT_COLUMNS
from tests import factories as f
from tests.conftest import drop_schema, make_settings

ADMIN = Actor(ActorKind.API_KEY, "key-1", "user-1", "req-1", "127.0.0.1")
POLICY = [{"topics": ["${org.uid}/feed/#"], "actions": ["PUBLISH"]}]


def actor(request_id: str) -> Actor:
    return Actor(ActorKind.API_KEY, "key-1", "user-1", request_id, "127.0.0.1")


def populate(cw: Certwarden, name: str = "acme") -> dict[str, Any]:
    """An organization with a varied history (every aggregate type, updates, deletions)."""
    reg = cw.registry
    org = reg.create_organization(name, actor("r1")).uid
    reg.create_policy(org, "devices", "Devices", POLICY, actor("r2"))
    reg.update_policy(org, "devices", actor("r3"), name="Device fleet")
    reg.create_policy(org, "spare", "Spare", POLICY, actor("r4"))
    reg.delete_policy(org, "spare", actor("r5"))
    user = reg.create_user(org, "alice", "admin", actor("r6"))
    key = reg.issue_api_key(org, str(user.id), "alice key", actor("r7"))
    root, inter, leaf = f.make_chain()
    ids = [
        d.certificate_id
        for d in reg.import_certificates(
            org, leaf.pem + inter.pem + root.pem, actor("r8"), policy_id="devices", folder="/a/b"
        )
    ]
    reg.update_certificate(org, ids[0], {"name": "leaf", "pinned_host": "10.0.0.1"}, actor("r9"))
    reg.update_certificate(org, ids[1], {"status": "INACTIVE"}, actor("r10"))
    # a device certificate under the chain (a deleted self-signed one trips a known
    # trust_anchors bug when import and delete land in one catch-up batch)
    gone = f.make_leaf(inter, f.unique_cn())
    gone_id = reg.import_certificates(org, gone.pem, actor("r11"))[0].certificate_id
    reg.delete_certificate(org, gone_id, actor("r12"))
    reg.create_folder(org, "/empty", actor("r13"))
    reg.delete_folder(org, "/empty", actor("r14"), in_use=0)
    cw.sync()
    return {"org": org, "ids": ids, "leaf": leaf, "key": key, "gone": gone}


def backup_of(cw: Certwarden, org: str | None) -> bytes:
    sink = io.BytesIO()
    services(cw)[0].backup(sink, org)
    return sink.getvalue()


def restore_into(cw: Certwarden, data: bytes, **cut: Any) -> Any:
    return services(cw)[1].restore(io.BytesIO(data), **cut)


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gzip.decompress(data).splitlines()]


def read_models(cw: Certwarden, org: str) -> dict[str, list[Any]]:
    """Every read-model row of an organization, positions left out (a restore renumbers them)."""
    q = cw.db.query
    lookup = [c for c in CERT_COLUMNS if c != "position"]
    audit = [c for c in AUDIT_FIELDS if c != "position"]
    return {
        "catalogue": q(
            "SELECT * FROM catalogue_certificates WHERE org_uid = ? ORDER BY certificate_id", (org,)
        ),
        "policies": q(
            "SELECT * FROM catalogue_policies WHERE org_uid = ? ORDER BY aggregate_id", (org,)
        ),
        "folders": q(
            "SELECT * FROM catalogue_folders WHERE org_uid = ? ORDER BY folder_id", (org,)
        ),
        "lookup": q(
            f"SELECT {', '.join(lookup)} FROM lookup_certificates WHERE org_uid = ?"  # noqa: S608
            " ORDER BY certificate_id",
            (org,),
        ),
        "lookup_policies": q(
            "SELECT aggregate_id, policy_id, permission_sets, deleted FROM lookup_policies"
            " WHERE org_uid = ? ORDER BY policy_id",
            (org,),
        ),
        "audit": q(
            f"SELECT {', '.join(audit)} FROM audit_trail WHERE org_uid = ?"  # noqa: S608
            " ORDER BY position",
            (org,),
        ),
    }


def other_store(store: str, tmp_path: Path) -> Iterator[Certwarden]:
    """A second, independent store of the same flavour."""
    settings = make_settings(store, tmp_path / "target")
    container = bootstrap(settings)
    container.start(background=False)
    try:
        yield container
    finally:
        container.close()
        if store == "postgres":
            drop_schema(settings)


class TestBackupInMemory:
    @pytest.fixture
    def store(self) -> str:
        return "memory"

    @pytest.fixture
    def target(self, store: str, tmp_path: Path) -> Iterator[Certwarden]:
        yield from other_store(store, tmp_path)

    def test_a_restored_organization_has_the_same_read_models_as_the_source(
        self, cw: Certwarden, target: Certwarden
    ) -> None:
        made = populate(cw)
        plan, summary = restore_into(target, backup_of(cw, made["org"]))
        expected = read_models(cw, made["org"])
        assert all(expected.values())  # every read model has rows to compare
        for name, rows in read_models(target, made["org"]).items():
            assert rows == expected[name], name
        assert summary.events >= plan.restored > 20

    def test_an_organization_backup_holds_no_event_of_another_organization(
        self, cw: Certwarden
    ) -> None:
        mine, other = populate(cw, "mine"), populate(cw, "other")
        lines = lines_of(backup_of(cw, mine["org"]))
        text = json.dumps(lines)
        assert mine["org"] in text and other["org"] not in text
        assert other["ids"][0] not in {line.get("id") for line in lines}

    def test_the_manifest_counts_the_events_and_their_positions(self, cw: Certwarden) -> None:
        made = populate(cw)
        lines = lines_of(backup_of(cw, made["org"]))
        manifest, events, trailer = lines[0], lines[1:-1], lines[-1]
        assert manifest["org_uid"] == made["org"] and manifest["org_name"] == "acme"
        assert manifest["event_count"] == len(events) == trailer["count"]
        assert (manifest["first_position"], manifest["last_position"]) == (
            events[0]["pos"],
            events[-1]["pos"],
        )
        assert manifest["last_hash"] == trailer["hash"]
        assert datetime.fromisoformat(manifest["first_time"]) <= datetime.fromisoformat(
            manifest["last_time"]
        )

    def test_restored_api_keys_still_authenticate(self, cw: Certwarden, target: Certwarden) -> None:
        made = populate(cw)
        restore_into(target, backup_of(cw, made["org"]))
        principal = target.registry.authenticate(made["key"].secret)
        assert (principal.org_uid, principal.name) == (made["org"], "alice")

    def test_restoring_an_organization_that_exists_is_refused_and_writes_nothing(
        self, cw: Certwarden
    ) -> None:
        made = populate(cw)
        data = backup_of(cw, made["org"])
        before = cw.registry.max_position()
        with pytest.raises(RestoreRefused) as refused:
            restore_into(cw, data)
        assert (
            refused.value.conflicts[0] == f"organization {made['org']} already exists in this store"
        )
        assert cw.registry.max_position() == before

    def test_device_dns_registered_in_another_organization_refuse_the_restore_listing_each(
        self, cw: Certwarden, target: Certwarden
    ) -> None:
        made = populate(cw)
        second = f.make_self_signed_leaf(f.unique_cn())
        second_id = cw.registry.import_certificates(made["org"], second.pem, ADMIN)[0]
        data = backup_of(cw, made["org"])
        squatter = target.registry.create_organization("squatter", ADMIN).uid
        target.registry.import_certificates(squatter, made["leaf"].pem + second.pem, ADMIN)
        before = target.registry.max_position()
        with pytest.raises(RestoreRefused) as refused:
            restore_into(target, data)
        conflicts = refused.value.conflicts
        assert len(conflicts) == 2 and all(squatter in c for c in conflicts)
        for cid in (made["ids"][0], second_id.certificate_id):
            assert any(f"certificate {cid} " in c for c in conflicts)
        assert target.registry.max_position() == before

    def test_a_restored_device_dn_stays_unique_across_organizations(
        self, cw: Certwarden, target: Certwarden
    ) -> None:
        made = populate(cw)
        restore_into(target, backup_of(cw, made["org"]))
        other = target.registry.create_organization("other", ADMIN).uid
        with pytest.raises(Conflict):
            target.registry.import_certificates(other, made["leaf"].pem, ADMIN)

    def test_a_device_dn_released_in_the_target_is_claimed_again_by_the_restore(
        self, cw: Certwarden, target: Certwarden
    ) -> None:
        made = populate(cw)
        data = backup_of(cw, made["org"])
        earlier = target.registry.create_organization("earlier", ADMIN).uid
        cid = target.registry.import_certificates(earlier, made["leaf"].pem, ADMIN)[0]
        target.registry.delete_certificate(earlier, cid.certificate_id, ADMIN)
        restore_into(target, data)
        with pytest.raises(Conflict):
            target.registry.import_certificates(earlier, made["leaf"].pem, ADMIN)

    def test_a_reclaimed_device_dn_is_exported_without_the_other_organizations_claim(
        self, cw: Certwarden, target: Certwarden
    ) -> None:
        first = cw.registry.create_organization("first", ADMIN).uid
        device = f.make_self_signed_leaf(f.unique_cn())
        cid = cw.registry.import_certificates(first, device.pem, ADMIN)[0].certificate_id
        cw.registry.delete_certificate(first, cid, ADMIN)
        second = cw.registry.create_organization("second", ADMIN).uid
        cw.registry.import_certificates(second, device.pem, ADMIN)
        shared = [line for line in lines_of(backup_of(cw, second))[1:-1] if "shared" in line]
        assert [line["t"].rsplit(".", 1)[1] for line in shared] == ["Reclaimed"]
        assert first not in json.dumps(shared)
        restore_into(target, backup_of(cw, second))
        other = target.registry.create_organization("other", ADMIN).uid
        with pytest.raises(Conflict):
            target.registry.import_certificates(other, device.pem, ADMIN)

    def test_restoring_until_a_position_leaves_out_later_events(
        self, cw: Certwarden, target: Certwarden
    ) -> None:
        made = populate(cw)
        cut = cw.registry.max_position()
        cw.registry.update_certificate(made["org"], made["ids"][0], {"name": "later"}, ADMIN)
        plan, _ = restore_into(target, backup_of(cw, made["org"]), until_position=cut)
        assert plan.cut_position == cut
        assert target.registry.certificate(made["org"], made["ids"][0]).name == "leaf"

    def test_restoring_until_a_time_keeps_each_command_whole(
        self, cw: Certwarden, target: Certwarden
    ) -> None:
        org = cw.registry.create_organization("acme", actor("a")).uid
        device = f.make_self_signed_leaf(f.unique_cn())
        cid = cw.registry.import_certificates(org, device.pem, actor("b"))[0].certificate_id
        imported = cw.registry.certificate(org, cid).created_on  # claims come microseconds later
        cw.registry.update_certificate(org, cid, {"name": "later"}, actor("c"))
        restore_into(target, backup_of(cw, org), until=imported)
        assert target.registry.certificate(org, cid).name != "later"
        other = target.registry.create_organization("other", ADMIN).uid
        with pytest.raises(Conflict):  # the DN claim saved with the import came along
            target.registry.import_certificates(other, device.pem, ADMIN)

    def test_a_whole_system_backup_restores_every_organization(
        self, cw: Certwarden, target: Certwarden
    ) -> None:
        root_key = cw.registry.ensure_bootstrap_key()
        assert root_key is not None
        one, two = populate(cw, "one"), populate(cw, "two")
        target.registry.ensure_bootstrap_key()  # the target has its own first key: kept
        restore_into(target, backup_of(cw, None))
        for made in (one, two):
            assert read_models(target, made["org"]) == read_models(cw, made["org"])
        assert target.registry.authenticate(root_key.secret).org_uid is None

    def test_a_failure_while_writing_leaves_nothing_behind(
        self, cw: Certwarden, target: Certwarden, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        made = populate(cw)
        backups, restorer = services(target)
        restorer.batch = 3
        calls = iter(range(1000))

        def failing(plain: bytes) -> bytes:
            if next(calls) == 7:  # in the third batch: two were handed to the store already
                raise OSError("disk gone")
            return plain

        monkeypatch.setattr(restorer, "_compressor", lambda: failing)
        before = target.registry.max_position()
        with pytest.raises(OSError):
            restorer.restore(io.BytesIO(backup_of(cw, made["org"])))
        assert target.registry.max_position() == before
        assert not backups.store.existing([org_uuid(made["org"])])

    def test_a_device_dn_raced_while_a_restore_ends_is_held_by_one_organization(
        self, cw: Certwarden, target: Certwarden, store: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Another organization imports the restored device's certificate right after the
        restore checked this store. A store with a write transaction (SQLite, PostgreSQL)
        holds that writer off until the restore commits, so the racer loses; the in-memory
        store has none, so the restore's insert finds the claim taken and writes nothing."""
        made = populate(cw)
        restorer = services(target)[1]
        check = restorer._check_target
        racer: dict[str, Any] = {}

        def race() -> None:
            try:
                org = target.registry.create_organization("racer", ADMIN).uid
                target.registry.import_certificates(org, made["leaf"].pem, ADMIN)
                racer["won"] = True
            except Conflict:
                racer["won"] = False

        def check_then_race(plan: Any) -> Any:
            claims = check(plan)
            racer["thread"] = threading.Thread(target=race)
            racer["thread"].start()
            racer["thread"].join(timeout=1.0)  # no write transaction: it is done by now
            return claims

        monkeypatch.setattr(restorer, "_check_target", check_then_race)
        try:
            restorer.restore(io.BytesIO(backup_of(cw, made["org"])))
            restored = True
        except Conflict:
            restored = False
        racer["thread"].join(timeout=30)
        assert restored is (store != "memory") and racer["won"] is not restored
        if not restored:
            with pytest.raises(NotFound):
                target.registry.organization(made["org"])

    def test_a_backup_of_an_unknown_organization_is_refused(self, cw: Certwarden) -> None:
        with pytest.raises(NotFound):
            backup_of(cw, "6a8c1f4e-0000-4000-8000-000000000000")


class TestBackupOnSqlite(TestBackupInMemory):
    @pytest.fixture
    def store(self) -> str:
        return "sqlite"
