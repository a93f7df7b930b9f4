"""The broker-facing service: side effects of decisions (registration, myorg, decision log)."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from application.bootstrap import Certwarden
from application.ports import AccessRequest, Action, ConnectRequest, DecisionRecord
from domain.errors import InvalidInput
from domain.meta import Actor, ActorKind
from tests import factories as f

ADMIN = Actor(ActorKind.API_KEY, "key-1", "user-1", "req-1", "127.0.0.1")
FEED = [
    {"topics": ["${org.uid}/feed/cid/+/#"], "actions": ["PUBLISH"]},
    {"topics": ["${org.uid}/cid/+/reply"], "actions": ["SUBSCRIBE"]},
]


def device(cw: Certwarden, org: str, **update: object) -> tuple[str, f.Issued]:
    leaf = f.make_self_signed_leaf(f.unique_cn())
    cid = cw.registry.import_certificates(org, leaf.pem, ADMIN, policy_id="feed")[0].certificate_id
    if update:
        cw.registry.update_certificate(org, cid, dict(update), ADMIN)
    cw.sync()
    return cid, leaf


def fp(leaf: f.Issued) -> str:
    return hashlib.sha256(leaf.der).hexdigest()


@pytest.fixture
def org(cw: Certwarden) -> str:
    uid = cw.registry.create_organization(f"o-{uuid.uuid4().hex[:6]}", ADMIN).uid
    cw.registry.create_policy(uid, "feed", "Feed", FEED, ADMIN)
    cw.registry.create_template(uid, "sensor", "Sensor", "Sensor [component.id]", ADMIN)
    return uid


def publish(cw: Certwarden, leaf: f.Issued, topic: str) -> bool:
    request = AccessRequest(fp(leaf), "client-1", "127.0.0.1", Action.PUBLISH, topic)
    return cw.enforcement.authorize(request).allowed


def test_a_first_feed_publish_registers_the_component_in_the_initial_folder_and_pins_it(
    cw: Certwarden, org: str
) -> None:
    cid, leaf = device(
        cw, org, registration={"template_id": "sensor", "initial_folder": "/new/site"}
    )
    assert publish(cw, leaf, f"{org}/feed/cid/therm-1/sid/temp")
    cw.sync()
    component = cw.registry.component(org, "therm-1")
    assert component is not None and component.name == "Sensor therm-1"
    assert component.folder == "/new/site"
    assert cw.registry.folder_exists(org, "/new/site")
    cert = cw.registry.certificate(org, cid)
    assert cert.pinned_component == "therm-1"
    pinned, _ = cw.audit.query(org, entity_id=cid, event_type="ComponentPinned")
    assert pinned[0]["actor_kind"] == "certificate"


def test_without_a_template_no_component_is_created_but_the_certificate_is_pinned(
    cw: Certwarden, org: str
) -> None:
    cid, leaf = device(cw, org)
    assert publish(cw, leaf, f"{org}/feed/cid/plain-1")
    cw.sync()
    assert cw.registry.component(org, "plain-1") is None
    assert cw.registry.certificate(org, cid).pinned_component is None


def test_a_pinned_certificate_keeps_its_pin_when_publishing_for_another_component(
    cw: Certwarden, org: str
) -> None:
    cid, leaf = device(cw, org, registration={"template_id": "sensor"}, pinned_component="mine")
    assert publish(cw, leaf, f"{org}/feed/cid/other")
    cw.sync()
    assert cw.registry.component(org, "other") is not None
    assert cw.registry.certificate(org, cid).pinned_component == "mine"


def test_component_activity_is_tracked_as_last_seen(cw: Certwarden, org: str) -> None:
    _, leaf = device(cw, org, registration={"template_id": "sensor"})
    publish(cw, leaf, f"{org}/feed/cid/seen-1")
    cw.sync()
    cw.decisions.flush()
    rows = cw.components.components(org)
    assert rows[0]["component_id"] == "seen-1" and rows[0]["last_seen"] is not None


def test_an_unknown_registration_template_is_refused(cw: Certwarden, org: str) -> None:
    cid, _ = device(cw, org)
    with pytest.raises(InvalidInput):
        cw.registry.update_certificate(org, cid, {"registration": {"template_id": "nope"}}, ADMIN)


def test_myorg_replies_with_the_org_uid_on_the_response_topic_or_the_reply_topic(
    cw: Certwarden, org: str
) -> None:
    _, leaf = device(cw, org)
    topic = "manage/cert/myorg/cid/dev-7"
    assert publish(cw, leaf, topic)
    plain = cw.enforcement.on_message(fp(leaf), "c", "127.0.0.1", topic, b"")
    assert [(p.topic, p.payload) for p in plain] == [(f"{org}/cid/dev-7/reply", org.encode())]
    v5 = cw.enforcement.on_message(
        fp(leaf), "c", "127.0.0.1", topic, b"", f"{org}/cid/me/reply", b"corr"
    )
    assert (v5[0].topic, v5[0].correlation_data) == (f"{org}/cid/me/reply", b"corr")
    # a response topic the device could not receive on itself is not used
    feed = cw.enforcement.on_message(
        fp(leaf), "c", "127.0.0.1", topic, b"", f"{org}/feed/cid/x", b"c"
    )
    assert feed[0].topic == f"{org}/cid/dev-7/reply"
    hostile = cw.enforcement.on_message(fp(leaf), "c", "127.0.0.1", topic, b"", "other-org/x", b"c")
    assert hostile[0].topic == f"{org}/cid/dev-7/reply"


def test_myorg_is_not_answered_for_an_unregistered_certificate(cw: Certwarden) -> None:
    stranger = f.make_self_signed_leaf(f.unique_cn())
    assert (
        cw.enforcement.on_message(fp(stranger), "c", "1.2.3.4", "manage/cert/myorg/cid/x", b"")
        == []
    )


def test_denials_are_logged_with_reason_and_rate_limited_per_certificate(
    cw: Certwarden, org: str
) -> None:
    _, leaf = device(cw, org)
    for i in range(100):
        publish(cw, leaf, f"{org}/not-allowed/{i}")
    cw.enforcement.authorize_connect(
        ConnectRequest(f.make_self_signed_leaf(f.unique_cn()).der, "x", "10.0.0.9")
    )
    cw.decisions.flush()
    rows = cw.decisions.query(org, limit=1000)
    assert 1 <= len(rows) <= 21
    assert {r["reason"] for r in rows} == {"no-matching-permission"}


def test_the_rate_limit_reports_how_many_entries_it_suppressed(cw: Certwarden, org: str) -> None:
    def entry(at: float) -> DecisionRecord:
        return DecisionRecord(at, org, "c1", "fp1", "client", "127.0.0.1", "PUBLISH", "t", "r", "d")

    for i in range(30):  # burst of 20 passes, 10 are suppressed
        cw.decisions.record(entry(1000.0 + i * 0.01))
    cw.decisions.record(entry(1100.0))  # 100 s later the bucket has refilled
    cw.decisions.flush()
    rows = cw.decisions.query(org, limit=100)
    assert len(rows) == 21
    assert rows[0]["suppressed"] == 10


class RecordingAnchors:
    def __init__(self) -> None:
        self.pems: list[str] = []

    def replace(self, pems: list[str]) -> None:
        self.pems = pems


def test_trust_anchors_follow_registered_cas_and_self_signed_certificates(
    cw: Certwarden, org: str
) -> None:
    sink = RecordingAnchors()
    cw.trust_anchors.sink = sink
    root, inter, leaf = f.make_chain()
    ids = cw.registry.import_certificates(org, leaf.pem + inter.pem + root.pem, ADMIN)
    self_signed = f.make_self_signed_leaf(f.unique_cn())
    cw.registry.import_certificates(org, self_signed.pem, ADMIN)
    cw.sync()
    assert len(sink.pems) == 3 and leaf.pem.decode() not in sink.pems
    cw.registry.delete_certificate(org, ids[2].certificate_id, ADMIN)
    cw.sync()
    assert len(sink.pems) == 2 and root.pem.decode() not in sink.pems


def test_a_recheck_has_no_side_effects_but_sees_a_new_pin(cw: Certwarden, org: str) -> None:
    cid, leaf = device(cw, org)
    before = cw.registry.max_position()
    request = ConnectRequest(leaf.der, "c", "127.0.0.9")
    assert cw.enforcement.recheck_connect(request).allowed
    assert cw.registry.max_position() == before  # nothing pinned, nothing recorded
    cw.registry.update_certificate(org, cid, {"pinned_host": "127.0.0.1"}, ADMIN)
    cw.sync()
    assert cw.enforcement.recheck_connect(request).reason == "pinned-elsewhere"


def test_a_device_can_learn_its_org_on_a_reply_topic_private_to_its_connection(
    cw: Certwarden, org: str
) -> None:
    _, leaf = device(cw, org)
    mine = "manage/cert/myorg/client/client-1/reply"
    sub = AccessRequest(fp(leaf), "client-1", "127.0.0.1", Action.SUBSCRIBE, mine)
    assert cw.enforcement.authorize(sub).allowed
    other = AccessRequest(
        fp(leaf), "client-1", "127.0.0.1", Action.SUBSCRIBE, "manage/cert/myorg/client/x/reply"
    )
    assert not cw.enforcement.authorize(other).allowed
    wild = AccessRequest(
        fp(leaf), "client-1", "127.0.0.1", Action.SUBSCRIBE, "manage/cert/myorg/client/+/reply"
    )
    assert not cw.enforcement.authorize(wild).allowed
    replies = cw.enforcement.on_message(
        fp(leaf), "client-1", "127.0.0.1", "manage/cert/myorg/cid/d", b"", mine, b"k"
    )
    assert [(r.topic, r.payload) for r in replies] == [(mine, org.encode())]


def test_an_anchor_imported_and_deleted_within_one_batch_leaves_no_trace(
    cw: Certwarden, org: str
) -> None:
    sink = RecordingAnchors()
    cw.trust_anchors.sink = sink
    root = f.make_root(f.unique_cn("short-lived"))
    cid = cw.registry.import_certificates(org, root.pem, ADMIN)[0].certificate_id
    cw.registry.delete_certificate(org, cid, ADMIN)
    cw.sync()  # both events in one catch-up batch
    assert root.pem.decode() not in sink.pems
    assert (
        cw.db.query("SELECT COUNT(*) FROM trust_anchors WHERE certificate_id = ?", (cid,))[0][0]
        == 0
    )
