"""Registry behaviour through the application layer; runs on every persistence flavour."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from application.bootstrap import Certwarden
from application.ports import AccessRequest, Action, ConnectRequest
from domain.errors import BadCertificateInput, Conflict, InvalidInput, NotFound, PreconditionFailed
from domain.meta import Actor, ActorKind
from tests import factories as f

ADMIN = Actor(ActorKind.API_KEY, "key-1", "user-1", "req-1", "127.0.0.1")
POLICY = [{"topics": ["${org.uid}/feed/#"], "actions": ["PUBLISH", "SUBSCRIBE"]}]


def new_org(cw: Certwarden, policy: bool = True) -> str:
    org = cw.registry.create_organization(f"org-{uuid.uuid4().hex[:6]}", ADMIN).uid
    if policy:
        cw.registry.create_policy(org, "devices", "Devices", POLICY, ADMIN)
    return org


def import_chain(
    cw: Certwarden, org: str, policy: str | None = "devices"
) -> tuple[list[str], f.Issued]:
    root, inter, leaf = f.make_chain()
    done = cw.registry.import_certificates(
        org, leaf.pem + inter.pem + root.pem, ADMIN, policy_id=policy
    )
    cw.sync()
    return [d.certificate_id for d in done], leaf


class TestRegistryInMemory:
    @pytest.fixture
    def store(self) -> str:
        return "memory"

    def test_a_bundle_becomes_one_certificate_per_member_with_ca_detected(
        self, cw: Certwarden
    ) -> None:
        org = new_org(cw)
        root, inter, leaf = f.make_chain()
        done = cw.registry.import_certificates(
            org, leaf.pem + inter.pem + root.pem, ADMIN, policy_id="devices"
        )
        assert [d.is_ca for d in done] == [False, True, True]
        assert all(d.created for d in done)
        cert = cw.registry.certificate(org, done[0].certificate_id)
        assert cert.name == leaf.cert.subject.rfc4514_string()
        assert cert.status == "ACTIVE"

    def test_reimporting_the_identical_certificate_returns_the_existing_id(
        self, cw: Certwarden
    ) -> None:
        org = new_org(cw)
        leaf = f.make_self_signed_leaf(f.unique_cn())
        first = cw.registry.import_certificates(org, leaf.pem, ADMIN)
        again = cw.registry.import_certificates(org, leaf.pem, ADMIN)
        assert again[0].certificate_id == first[0].certificate_id
        assert not again[0].created

    def test_a_device_dn_is_unique_across_organizations(self, cw: Certwarden) -> None:
        a, b = new_org(cw), new_org(cw)
        leaf = f.make_self_signed_leaf(f.unique_cn())
        cw.registry.import_certificates(a, leaf.pem, ADMIN)
        with pytest.raises(Conflict) as caught:
            cw.registry.import_certificates(b, leaf.pem, ADMIN)
        assert caught.value.extra["other_org_uid"] == a

    def test_a_ca_certificate_can_be_imported_into_several_organizations(
        self, cw: Certwarden
    ) -> None:
        a, b = new_org(cw), new_org(cw)
        root = f.make_root(f.unique_cn("root"))
        one = cw.registry.import_certificates(a, root.pem, ADMIN)
        two = cw.registry.import_certificates(b, root.pem, ADMIN)
        assert one[0].certificate_id != two[0].certificate_id

    def test_a_rejected_bundle_writes_nothing(self, cw: Certwarden) -> None:
        org = new_org(cw)
        before = cw.registry.max_position()
        leaf = f.make_self_signed_leaf(f.unique_cn())
        with pytest.raises(BadCertificateInput):
            cw.registry.import_certificates(org, leaf.pem + leaf.key_pem, ADMIN)
        assert cw.registry.max_position() == before

    def test_a_conflict_in_the_middle_of_a_bundle_writes_nothing(self, cw: Certwarden) -> None:
        a, b = new_org(cw), new_org(cw)
        taken = f.make_self_signed_leaf(f.unique_cn())
        cw.registry.import_certificates(a, taken.pem, ADMIN)
        before = cw.registry.max_position()
        fresh = f.make_root(f.unique_cn("root"))
        with pytest.raises(Conflict):
            cw.registry.import_certificates(b, fresh.pem + taken.pem, ADMIN)
        assert cw.registry.max_position() == before

    def test_importing_with_an_unknown_policy_is_refused(self, cw: Certwarden) -> None:
        org = new_org(cw)
        with pytest.raises(InvalidInput):
            cw.registry.import_certificates(
                org, f.make_root(f.unique_cn()).pem, ADMIN, policy_id="nope"
            )

    def test_a_chain_is_usable_until_its_intermediate_is_deactivated(self, cw: Certwarden) -> None:
        org = new_org(cw)
        ids, leaf = import_chain(cw, org)
        connect = ConnectRequest(leaf.der, "client-1", "127.0.0.1")
        assert cw.authorization.authorize_connect(connect).allowed
        cw.registry.update_certificate(org, ids[1], {"status": "INACTIVE"}, ADMIN)
        cw.sync()
        denied = cw.authorization.authorize_connect(connect)
        assert (denied.allowed, denied.reason) == (False, "inactive")
        cw.registry.update_certificate(org, ids[1], {"status": "ACTIVE"}, ADMIN)
        cw.sync()
        assert cw.authorization.authorize_connect(connect).allowed

    def test_a_leaf_imported_before_its_issuers_becomes_usable_when_they_arrive(
        self, cw: Certwarden
    ) -> None:
        org = new_org(cw)
        root, inter, leaf = f.make_chain()
        cw.registry.import_certificates(org, leaf.pem, ADMIN, policy_id="devices")
        cw.sync()
        connect = ConnectRequest(leaf.der, "c", "127.0.0.1")
        assert cw.authorization.authorize_connect(connect).reason == "incomplete-chain"
        cw.registry.import_certificates(org, inter.pem + root.pem, ADMIN)
        cw.sync()
        assert cw.authorization.authorize_connect(connect).allowed

    def test_an_issuer_with_the_same_name_and_key_id_but_another_key_is_not_the_parent(
        self, cw: Certwarden
    ) -> None:
        org = new_org(cw)
        root = f.make_root(f.unique_cn("root"))
        leaf = f.make_leaf(root, f.unique_cn())
        (impostor,) = cw.registry.import_certificates(org, f.make_impostor(root).pem, ADMIN)
        (placed,) = cw.registry.import_certificates(org, leaf.pem, ADMIN, policy_id="devices")
        cw.sync()
        connect = ConnectRequest(leaf.der, "c", "127.0.0.1")
        assert cw.authorization.authorize_connect(connect).reason == "incomplete-chain"
        cw.registry.delete_certificate(org, impostor.certificate_id, ADMIN)  # its DN is taken
        (real,) = cw.registry.import_certificates(org, root.pem, ADMIN)
        cw.sync()
        assert cw.authorization.authorize_connect(connect).allowed
        chain = cw.lookup.chain(placed.certificate_id)
        assert chain is not None and chain["issuer_id"] == real.certificate_id

    def test_a_chain_from_another_organization_does_not_count(self, cw: Certwarden) -> None:
        a, b = new_org(cw), new_org(cw)
        root, inter, leaf = f.make_chain()
        cw.registry.import_certificates(a, inter.pem + root.pem, ADMIN)
        cw.registry.import_certificates(b, leaf.pem, ADMIN, policy_id="devices")
        cw.sync()
        decision = cw.authorization.authorize_connect(ConnectRequest(leaf.der, "c", "127.0.0.1"))
        assert decision.reason == "incomplete-chain"

    def test_the_first_connect_pins_the_host_and_other_hosts_are_refused(
        self, cw: Certwarden
    ) -> None:
        org = new_org(cw)
        ids, leaf = import_chain(cw, org)
        assert cw.authorization.authorize_connect(
            ConnectRequest(leaf.der, "c", "127.0.0.1")
        ).allowed
        cw.sync()
        cert = cw.registry.certificate(org, ids[0])
        assert cert.pinned_host == "127.0.0.1"
        history, _ = cw.audit.query(org, entity_id=ids[0], event_type="HostPinned")
        assert history[0]["actor_kind"] == "certificate"
        seen, _ = cw.audit.query(org, entity_id=ids[0], event_type="FirstSeen")
        assert len(seen) == 1 and cert.seen
        other = cw.authorization.authorize_connect(ConnectRequest(leaf.der, "c", "127.0.0.2"))
        assert other.reason == "pinned-elsewhere"
        cw.registry.update_certificate(org, ids[0], {"pinned_host": None}, ADMIN)
        cw.sync()
        assert cw.authorization.authorize_connect(
            ConnectRequest(leaf.der, "c", "127.0.0.2")
        ).allowed

    def test_topics_outside_the_organization_are_denied_whatever_the_policy(
        self, cw: Certwarden
    ) -> None:
        org = new_org(cw, policy=False)
        cw.registry.create_policy(
            org, "all", "All", [{"topics": ["#"], "actions": ["PUBLISH", "SUBSCRIBE"]}], ADMIN
        )
        ids, leaf = import_chain(cw, org, policy="all")
        fp = leaf_fp(leaf)
        other = str(uuid.uuid4())
        ok = cw.authorization.authorize(
            AccessRequest(fp, "c", "127.0.0.1", Action.PUBLISH, f"{org}/x")
        )
        assert ok.allowed
        for action, topic in (
            (Action.PUBLISH, f"{other}/x"),
            (Action.SUBSCRIBE, "#"),
            (Action.SUBSCRIBE, "+/x"),
        ):
            denied = cw.authorization.authorize(AccessRequest(fp, "c", "127.0.0.1", action, topic))
            assert denied.reason == "outside-namespace", topic

    def test_a_retained_publish_needs_publish_retain_message(self, cw: Certwarden) -> None:
        org = new_org(cw)
        _, leaf = import_chain(cw, org)
        fp = leaf_fp(leaf)
        plain = AccessRequest(
            fp, "c", "127.0.0.1", Action.PUBLISH, f"{org}/feed/cid/1", retain=False
        )
        retained = AccessRequest(
            fp, "c", "127.0.0.1", Action.PUBLISH, f"{org}/feed/cid/1", retain=True
        )
        assert cw.authorization.authorize(plain).allowed
        assert cw.authorization.authorize(retained).reason == "no-matching-permission"

    def test_a_policy_change_is_seen_by_the_next_decision(self, cw: Certwarden) -> None:
        org = new_org(cw)
        _, leaf = import_chain(cw, org)
        request = AccessRequest(leaf_fp(leaf), "c", "127.0.0.1", Action.PUBLISH, f"{org}/other")
        assert not cw.authorization.authorize(request).allowed
        generation = cw.index.generation
        cw.registry.update_policy(
            org,
            "devices",
            ADMIN,
            permission_sets=[{"topics": ["${org.uid}/#"], "actions": ["PUBLISH"]}],
        )
        cw.sync()
        assert cw.authorization.authorize(request).allowed
        assert leaf_fp(leaf) in cw.index.changes_since(generation).kick

    def test_remembered_decisions_belong_to_one_client_id(self, cw: Certwarden) -> None:
        org = new_org(cw, policy=False)
        sets = [{"topics": ["${org.uid}/cid/${client.id}/reply"], "actions": ["SUBSCRIBE"]}]
        cw.registry.create_policy(org, "replies", "Replies", sets, ADMIN)
        _, leaf = import_chain(cw, org, policy="replies")
        topic = f"{org}/cid/alpha/reply"
        for _ in range(2):  # the second time from the remembered decisions
            for client, allowed in (("alpha", True), ("beta", False)):
                request = AccessRequest(leaf_fp(leaf), client, "127.0.0.1", Action.SUBSCRIBE, topic)
                assert cw.authorization.authorize(request).allowed is allowed, client

    def test_a_decision_made_while_the_index_changed_is_not_remembered(
        self, cw: Certwarden, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        org = new_org(cw)
        _, leaf = import_chain(cw, org)
        index = cw.index
        bind = index.bound_policy

        def during_a_refresh(row: Any, client_id: str, generation: Any = None) -> Any:
            index.generation += 1  # what a refresh on the projection thread does first
            return bind(row, client_id, generation)

        monkeypatch.setattr(index, "bound_policy", during_a_refresh)
        request = AccessRequest(
            leaf_fp(leaf), "c", "127.0.0.1", Action.PUBLISH, f"{org}/feed/cid/1"
        )
        assert cw.authorization.authorize(request).allowed
        assert not index.allowed_cache
        assert not any(index.topic_cache.values())

    def test_deleting_a_policy_in_use_is_refused(self, cw: Certwarden) -> None:
        org = new_org(cw)
        import_chain(cw, org)
        with pytest.raises(Conflict):
            cw.registry.delete_policy(org, "devices", ADMIN)

    def test_a_stale_version_is_refused(self, cw: Certwarden) -> None:
        org = new_org(cw)
        ids, _ = import_chain(cw, org)
        cert = cw.registry.certificate(org, ids[0])
        cw.registry.update_certificate(
            org, ids[0], {"name": "renamed"}, ADMIN, expected_version=cert.version
        )
        with pytest.raises(PreconditionFailed):
            cw.registry.update_certificate(
                org, ids[0], {"name": "again"}, ADMIN, expected_version=cert.version
            )

    def test_another_organizations_certificate_is_not_found(self, cw: Certwarden) -> None:
        a, b = new_org(cw), new_org(cw)
        ids, _ = import_chain(cw, a)
        with pytest.raises(NotFound):
            cw.registry.certificate(b, ids[0])

    def test_a_deleted_device_dn_can_be_registered_again_elsewhere(self, cw: Certwarden) -> None:
        a, b = new_org(cw), new_org(cw)
        leaf = f.make_self_signed_leaf(f.unique_cn())
        first = cw.registry.import_certificates(a, leaf.pem, ADMIN)
        cw.registry.delete_certificate(a, first[0].certificate_id, ADMIN)
        again = cw.registry.import_certificates(b, leaf.pem, ADMIN)
        assert again[0].created

    def test_the_catalogue_filters_by_folder_status_and_expiry(self, cw: Certwarden) -> None:
        org = new_org(cw)
        near = f.make_self_signed_leaf(f.unique_cn())
        cw.registry.import_certificates(org, near.pem, ADMIN, folder="/plant/line-1")
        cw.registry.import_certificates(
            org, f.make_root(f.unique_cn("r")).pem, ADMIN, folder="/plant", status="INACTIVE"
        )
        cw.sync()
        rows, _ = cw.catalogue.list_certificates(org, folder="/plant")
        assert len(rows) == 2
        rows, _ = cw.catalogue.list_certificates(org, folder="/plant", recursive=False)
        assert len(rows) == 1 and rows[0]["status"] == "INACTIVE"
        rows, _ = cw.catalogue.list_certificates(org, expiring_within_days=400, status="ACTIVE")
        assert len(rows) == 1

    def test_the_catalogue_pages_with_a_cursor(self, cw: Certwarden) -> None:
        org = new_org(cw)
        for _ in range(5):
            cw.registry.import_certificates(org, f.make_self_signed_leaf(f.unique_cn()).pem, ADMIN)
        cw.sync()
        seen, cursor = [], None
        while True:
            rows, cursor = cw.catalogue.list_certificates(org, limit=2, cursor=cursor)
            seen += [r["certificate_id"] for r in rows]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 5

    def test_every_event_reaches_the_audit_log_with_actor_and_request_id(
        self, cw: Certwarden
    ) -> None:
        org = new_org(cw)
        ids, _ = import_chain(cw, org)
        cw.registry.update_certificate(org, ids[0], {"name": "n1", "status": "INACTIVE"}, ADMIN)
        cw.sync()
        items, _ = cw.audit.query(org, entity_id=ids[0], newest_first=False)
        assert [i["event_type"] for i in items] == ["Imported", "Renamed", "Deactivated"]
        assert {(i["actor"], i["request_id"]) for i in items} == {("key-1", "req-1")}

    def test_rebuilding_the_read_models_gives_the_same_rows(self, cw: Certwarden) -> None:
        org = new_org(cw)
        import_chain(cw, org)
        cw.sync()
        before = cw.catalogue.list_certificates(org)[0], cw.audit.query(org)[0]
        cw.runner.rebuild()
        after = cw.catalogue.list_certificates(org)[0], cw.audit.query(org)[0]
        assert before == after


def leaf_fp(leaf: f.Issued) -> str:
    import hashlib

    return hashlib.sha256(leaf.der).hexdigest()


class TestRegistryOnSqlite(TestRegistryInMemory):
    @pytest.fixture
    def store(self) -> str:
        return "sqlite"


class TestFolderFilterIsAnExactPrefix:
    def test_underscores_and_percent_signs_in_folder_names_are_not_patterns(
        self, cw: Certwarden
    ) -> None:
        org = new_org(cw)
        for folder in ("/line_1/a", "/lineX1/b", "/Line_1/c"):
            cw.registry.import_certificates(
                org, f.make_self_signed_leaf(f.unique_cn()).pem, ADMIN, folder=folder
            )
        cw.sync()
        rows, _ = cw.catalogue.list_certificates(org, folder="/line_1")
        assert [r["folder"] for r in rows] == ["/line_1/a"]
