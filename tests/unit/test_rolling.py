"""Rolling over MQTT: register the next chain, retire the old one, bounded by the caller's chain."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from application.bootstrap import Certwarden
from application.ports import ConnectRequest
from domain.meta import Actor, ActorKind
from tests import factories as f

ADMIN = Actor(ActorKind.API_KEY, "key-1", "user-1", "req-1", "127.0.0.1")
POLICY = [{"topics": ["${org.uid}/manage/cert/+/cid/+"], "actions": ["PUBLISH"]}]


def fp(cert: f.Issued) -> str:
    return hashlib.sha256(cert.der).hexdigest()


def pems(*certs: f.Issued) -> list[str]:
    return [c.pem.decode() for c in certs]


@pytest.fixture
def fleet(cw: Certwarden) -> dict:
    org = cw.registry.create_organization(f"o-{uuid.uuid4().hex[:6]}", ADMIN).uid
    cw.registry.create_policy(org, "dev", "Devices", POLICY, ADMIN)
    root = f.make_root(f.unique_cn("root"))
    device_ca = f.make_intermediate(root, f.unique_cn("device-ca"))
    leaf = f.make_leaf(device_ca, f.unique_cn("dev-v1"))
    done = cw.registry.import_certificates(
        org, leaf.pem + device_ca.pem + root.pem, ADMIN, policy_id="dev", folder="/site"
    )
    leaf_id = done[0].certificate_id
    cw.registry.update_certificate(org, leaf_id, {"pinned_component": "dev-1"}, ADMIN)
    cw.sync()
    assert cw.authorization.authorize_connect(
        ConnectRequest(leaf.der, "dev-1", "127.0.0.1")
    ).allowed
    cw.sync()
    return {"org": org, "root": root, "ca": device_ca, "leaf": leaf, "leaf_id": leaf_id}


def send(cw: Certwarden, caller: f.Issued, org: str, verb: str, body: object) -> dict:
    replies = cw.enforcement.on_message(
        fp(caller),
        "dev-1",
        "127.0.0.1",
        f"{org}/manage/cert/{verb}/cid/dev-1",
        json.dumps(body).encode(),
    )
    assert len(replies) == 1 and replies[0].topic == f"{org}/cid/dev-1/reply"
    cw.sync()
    return json.loads(replies[0].payload)


def next_chain(fleet: dict) -> tuple[f.Issued, f.Issued]:
    ca2 = f.make_intermediate(fleet["root"], f.unique_cn("device-ca-v2"))
    return ca2, f.make_leaf(ca2, f.unique_cn("dev-v2"))


def test_a_registered_successor_inherits_settings_and_can_connect(
    cw: Certwarden, fleet: dict
) -> None:
    ca2, leaf2 = next_chain(fleet)
    reply = send(
        cw,
        fleet["leaf"],
        fleet["org"],
        "register",
        {"curCerts": pems(fleet["leaf"], fleet["ca"]), "newCerts": pems(leaf2, ca2)},
    )
    assert reply["success"], reply
    new_id = reply["certificateIds"][0]
    new = cw.registry.certificate(fleet["org"], new_id)
    assert (new.policy_id, new.pinned_component, new.folder, new.pinned_host) == (
        "dev",
        "dev-1",
        "/site",
        "127.0.0.1",
    )
    assert new.predecessor_id == fleet["leaf_id"]
    assert cw.registry.certificate(fleet["org"], fleet["leaf_id"]).successor_id == new_id
    assert cw.authorization.authorize_connect(
        ConnectRequest(leaf2.der, "dev-1", "127.0.0.1")
    ).allowed


def test_register_is_refused_when_cur_certs_are_not_the_callers_chain(
    cw: Certwarden, fleet: dict
) -> None:
    ca2, leaf2 = next_chain(fleet)
    stranger = f.make_self_signed_leaf(f.unique_cn())
    before = cw.registry.max_position()
    reply = send(
        cw,
        fleet["leaf"],
        fleet["org"],
        "register",
        {"curCerts": pems(stranger), "newCerts": pems(leaf2, ca2)},
    )
    assert not reply["success"] and "curCerts" in reply["reason"]
    assert cw.registry.max_position() == before


def test_register_with_key_material_or_garbage_is_refused(cw: Certwarden, fleet: dict) -> None:
    ca2, leaf2 = next_chain(fleet)
    before = cw.registry.max_position()
    secret = leaf2.key_pem.decode().splitlines()[1]
    for body in (
        {"curCerts": pems(fleet["leaf"]), "newCerts": [leaf2.key_pem.decode()]},
        {"curCerts": "nope", "newCerts": []},
        ["not", "an", "object"],
    ):
        reply = send(cw, fleet["leaf"], fleet["org"], "register", body)
        assert not reply["success"] and secret not in json.dumps(reply)
    assert cw.registry.max_position() == before


def test_unregistering_the_old_chain_retires_it(cw: Certwarden, fleet: dict) -> None:
    reply = send(
        cw, fleet["leaf"], fleet["org"], "unregister", {"certs": pems(fleet["leaf"], fleet["ca"])}
    )
    assert reply["success"], reply
    assert len(reply["certificateIds"]) == 2
    denied = cw.authorization.authorize_connect(
        ConnectRequest(fleet["leaf"].der, "dev-1", "127.0.0.1")
    )
    assert not denied.allowed


def test_unregistering_a_certificate_outside_the_callers_chain_is_refused(
    cw: Certwarden, fleet: dict
) -> None:
    other = f.make_leaf(fleet["ca"], f.unique_cn("neighbour"))
    cw.registry.import_certificates(fleet["org"], other.pem, ADMIN, policy_id="dev")
    cw.sync()
    reply = send(cw, fleet["leaf"], fleet["org"], "unregister", {"certs": pems(other)})
    assert not reply["success"] and "not in this connection's chain" in reply["reason"]


def test_a_shared_ca_cannot_be_unregistered_by_one_device(cw: Certwarden, fleet: dict) -> None:
    neighbour = f.make_leaf(fleet["ca"], f.unique_cn("neighbour"))
    cw.registry.import_certificates(fleet["org"], neighbour.pem, ADMIN, policy_id="dev")
    cw.sync()
    reply = send(cw, fleet["leaf"], fleet["org"], "unregister", {"certs": pems(fleet["ca"])})
    assert not reply["success"] and "depend" in reply["reason"]
    assert cw.authorization.authorize_connect(
        ConnectRequest(neighbour.der, "n", "127.0.0.1")
    ).allowed


def test_requests_for_another_organization_are_ignored(cw: Certwarden, fleet: dict) -> None:
    other_org = str(uuid.uuid4())
    assert (
        cw.enforcement.on_message(
            fp(fleet["leaf"]),
            "dev-1",
            "127.0.0.1",
            f"{other_org}/manage/cert/unregister/cid/dev-1",
            json.dumps({"certs": pems(fleet["leaf"])}).encode(),
        )
        == []
    )
