"""The HTTP API end to end (in-process ASGI client) on the embedded SQLite default."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from application.bootstrap import Certwarden
from tests import factories as f
from tests.integration.api_helpers import auth, is_problem, new_org

POLICY = {
    "policy_id": "devices",
    "permission_sets": [{"topics": ["${org.uid}/feed/#"], "actions": ["PUBLISH"]}],
}


@pytest.fixture
def store() -> str:
    return "sqlite"


def test_requests_without_a_key_get_401(client: TestClient) -> None:
    is_problem(client.get(f"/api/v1/orgs/{uuid.uuid4()}/certificates"), 401)
    is_problem(
        client.get(f"/api/v1/orgs/{uuid.uuid4()}/certificates", headers=auth("cw_garbage")), 401
    )


def test_importing_a_chain_as_json_returns_each_certificate_and_its_chain(
    client: TestClient, root_key: str
) -> None:
    org, key = new_org(client, root_key)
    assert (
        client.post(f"/api/v1/orgs/{org}/policies", json=POLICY, headers=auth(key)).status_code
        == 201
    )
    root, inter, leaf = f.make_chain()
    pem = (leaf.pem + inter.pem + root.pem).decode()
    r = client.post(
        f"/api/v1/orgs/{org}/certificates",
        json={"pem": pem, "policy_id": "devices"},
        headers=auth(key),
    )
    assert r.status_code == 201, r.text
    ids = [c["certificate_id"] for c in r.json()["certificates"]]
    one = client.get(f"/api/v1/orgs/{org}/certificates/{ids[0]}", headers=auth(key))
    assert one.status_code == 200
    body = one.json()
    assert body["chain"] == ids
    assert body["effective_status"] == {"usable": True, "reason": None}
    assert one.headers["etag"] == f'"{body["version"]}"'


def test_raw_pem_and_der_bodies_are_accepted(client: TestClient, root_key: str) -> None:
    org, key = new_org(client, root_key)
    pem_cert = f.make_self_signed_leaf(f.unique_cn())
    der_cert = f.make_self_signed_leaf(f.unique_cn())
    r1 = client.post(
        f"/api/v1/orgs/{org}/certificates?folder=/a/b",
        content=pem_cert.pem,
        headers={**auth(key), "content-type": "application/x-pem-file"},
    )
    r2 = client.post(
        f"/api/v1/orgs/{org}/certificates",
        content=der_cert.der,
        headers={**auth(key), "content-type": "application/pkix-cert"},
    )
    assert (r1.status_code, r2.status_code) == (201, 201)
    tree = client.get(f"/api/v1/orgs/{org}/folders", headers=auth(key)).json()["items"]
    assert [t["path"] for t in tree] == ["/", "/a", "/a/b"]


@pytest.mark.parametrize(
    "body, needle",
    [
        (b"hello world", "neither pem nor der"),
        (b"-----BEGIN CERTIFICATE-----\nMIIB!!!garbled\n-----END CERTIFICATE-----\n", "base64"),
        (b"", "empty"),
    ],
)
def test_bad_certificate_bodies_get_a_clear_422_and_nothing_is_written(
    client: TestClient, root_key: str, cw: Certwarden, body: bytes, needle: str
) -> None:
    org, key = new_org(client, root_key)
    before = cw.registry.max_position()
    r = client.post(
        f"/api/v1/orgs/{org}/certificates",
        content=body,
        headers={**auth(key), "content-type": "application/x-pem-file"},
    )
    problem = is_problem(r, 422)
    assert needle in problem["detail"].lower()
    assert cw.registry.max_position() == before


def test_a_private_key_in_the_bundle_is_refused_and_never_echoed(
    client: TestClient, root_key: str
) -> None:
    org, key = new_org(client, root_key)
    leaf = f.make_self_signed_leaf(f.unique_cn())
    r = client.post(
        f"/api/v1/orgs/{org}/certificates",
        json={"pem": (leaf.pem + leaf.key_pem).decode()},
        headers=auth(key),
    )
    problem = is_problem(r, 422)
    assert "private key" in problem["detail"]
    secret_line = leaf.key_pem.decode().splitlines()[1]
    assert secret_line not in r.text


def test_bodies_over_one_mebibyte_get_413(client: TestClient, root_key: str) -> None:
    org, key = new_org(client, root_key)
    r = client.post(
        f"/api/v1/orgs/{org}/certificates",
        content=b"x" * ((1 << 20) + 1),
        headers={**auth(key), "content-type": "application/x-pem-file"},
    )
    is_problem(r, 413)


def test_bundles_over_100_certificates_are_refused(client: TestClient, root_key: str) -> None:
    org, key = new_org(client, root_key)
    root = f.make_root(f.unique_cn("r"))
    pem = b"".join(f.make_leaf(root, f.unique_cn()).pem for _ in range(101))
    problem = is_problem(
        client.post(
            f"/api/v1/orgs/{org}/certificates",
            content=pem,
            headers={**auth(key), "content-type": "application/x-pem-file"},
        ),
        422,
    )
    assert "100" in problem["detail"]


def test_a_device_dn_conflict_reveals_the_other_org_only_to_a_super_admin(
    client: TestClient, root_key: str
) -> None:
    org_a, key_a = new_org(client, root_key)
    org_b, key_b = new_org(client, root_key)
    leaf = f.make_self_signed_leaf(f.unique_cn())
    assert (
        client.post(
            f"/api/v1/orgs/{org_a}/certificates",
            json={"pem": leaf.pem.decode()},
            headers=auth(key_a),
        ).status_code
        == 201
    )
    as_b = is_problem(
        client.post(
            f"/api/v1/orgs/{org_b}/certificates",
            json={"pem": leaf.pem.decode()},
            headers=auth(key_b),
        ),
        409,
    )
    assert "other_org_uid" not in as_b and org_a not in str(as_b)
    as_root = is_problem(
        client.post(
            f"/api/v1/orgs/{org_b}/certificates",
            json={"pem": leaf.pem.decode()},
            headers=auth(root_key),
        ),
        409,
    )
    assert as_root["other_org_uid"] == org_a


def test_another_tenants_key_gets_404_for_everything(client: TestClient, root_key: str) -> None:
    org_a, key_a = new_org(client, root_key)
    _org_b, key_b = new_org(client, root_key)
    leaf = f.make_self_signed_leaf(f.unique_cn())
    cid = client.post(
        f"/api/v1/orgs/{org_a}/certificates", json={"pem": leaf.pem.decode()}, headers=auth(key_a)
    ).json()["certificates"][0]["certificate_id"]
    for method, path in [
        ("GET", f"/api/v1/orgs/{org_a}/certificates"),
        ("GET", f"/api/v1/orgs/{org_a}/certificates/{cid}"),
        ("DELETE", f"/api/v1/orgs/{org_a}/certificates/{cid}"),
        ("GET", f"/api/v1/orgs/{org_a}/policies"),
        ("GET", f"/api/v1/orgs/{org_a}/audit"),
    ]:
        is_problem(client.request(method, path, headers=auth(key_b)), 404)


def test_a_viewer_cannot_change_anything(client: TestClient, root_key: str) -> None:
    org, key = new_org(client, root_key, role="viewer")
    is_problem(client.post(f"/api/v1/orgs/{org}/policies", json=POLICY, headers=auth(key)), 403)


def test_patch_with_a_stale_if_match_gets_412(client: TestClient, root_key: str) -> None:
    org, key = new_org(client, root_key)
    leaf = f.make_self_signed_leaf(f.unique_cn())
    cid = client.post(
        f"/api/v1/orgs/{org}/certificates", json={"pem": leaf.pem.decode()}, headers=auth(key)
    ).json()["certificates"][0]["certificate_id"]
    url = f"/api/v1/orgs/{org}/certificates/{cid}"
    etag = client.get(url, headers=auth(key)).headers["etag"]
    ok = client.patch(url, json={"status": "INACTIVE"}, headers={**auth(key), "If-Match": etag})
    assert ok.status_code == 200 and ok.json()["status"] == "INACTIVE"
    is_problem(client.patch(url, json={"name": "x"}, headers={**auth(key), "If-Match": etag}), 412)


def test_unknown_fields_and_bad_values_are_refused(client: TestClient, root_key: str) -> None:
    org, key = new_org(client, root_key)
    leaf = f.make_self_signed_leaf(f.unique_cn())
    cid = client.post(
        f"/api/v1/orgs/{org}/certificates", json={"pem": leaf.pem.decode()}, headers=auth(key)
    ).json()["certificates"][0]["certificate_id"]
    url = f"/api/v1/orgs/{org}/certificates/{cid}"
    is_problem(client.patch(url, json={"owner": "me"}, headers=auth(key)), 422)
    is_problem(client.patch(url, json={"pinned_host": "not-an-ip"}, headers=auth(key)), 422)
    is_problem(client.patch(url, json={"policy_id": "missing"}, headers=auth(key)), 422)


def test_invalid_topic_patterns_are_refused_at_save_time(client: TestClient, root_key: str) -> None:
    org, key = new_org(client, root_key)
    for topic in ["a/#/b", "a+/b", "${nope}/x", ""]:
        body = {"policy_id": "p", "permission_sets": [{"topics": [topic], "actions": ["PUBLISH"]}]}
        is_problem(client.post(f"/api/v1/orgs/{org}/policies", json=body, headers=auth(key)), 422)


def test_deleting_a_policy_still_assigned_gets_409(client: TestClient, root_key: str) -> None:
    org, key = new_org(client, root_key)
    client.post(f"/api/v1/orgs/{org}/policies", json=POLICY, headers=auth(key))
    leaf = f.make_self_signed_leaf(f.unique_cn())
    client.post(
        f"/api/v1/orgs/{org}/certificates",
        json={"pem": leaf.pem.decode(), "policy_id": "devices"},
        headers=auth(key),
    )
    is_problem(client.delete(f"/api/v1/orgs/{org}/policies/devices", headers=auth(key)), 409)


def test_explain_tells_which_rule_matched_or_why_not(client: TestClient, root_key: str) -> None:
    org, key = new_org(client, root_key)
    client.post(f"/api/v1/orgs/{org}/policies", json=POLICY, headers=auth(key))
    leaf = f.make_self_signed_leaf(f.unique_cn())
    cid = client.post(
        f"/api/v1/orgs/{org}/certificates",
        json={"pem": leaf.pem.decode(), "policy_id": "devices"},
        headers=auth(key),
    ).json()["certificates"][0]["certificate_id"]
    url = f"/api/v1/orgs/{org}/authorize/explain"
    ok = client.post(
        url,
        json={"certificate_id": cid, "action": "PUBLISH", "topic": f"{org}/feed/cid/7"},
        headers=auth(key),
    ).json()
    assert ok["allowed"] and ok["matched"]["pattern"] == "${org.uid}/feed/#"
    no = client.post(
        url,
        json={"certificate_id": cid, "action": "SUBSCRIBE", "topic": f"{org}/feed/#"},
        headers=auth(key),
    ).json()
    assert (no["allowed"], no["reason"]) == (False, "no-matching-permission")


def test_the_audit_log_filters_by_event_type_and_pages(client: TestClient, root_key: str) -> None:
    org, key = new_org(client, root_key)
    for _ in range(3):
        client.post(
            f"/api/v1/orgs/{org}/certificates",
            json={"pem": f.make_self_signed_leaf(f.unique_cn()).pem.decode()},
            headers=auth(key),
        )
    page = client.get(
        f"/api/v1/orgs/{org}/audit?event_type=Imported&limit=2", headers=auth(key)
    ).json()
    assert len(page["items"]) == 2 and page["next_cursor"] is not None
    rest = client.get(
        f"/api/v1/orgs/{org}/audit?event_type=Imported&limit=2&cursor={page['next_cursor']}",
        headers=auth(key),
    ).json()
    assert len(rest["items"]) == 1


def test_the_openapi_document_is_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/api/v1/orgs/{org}/certificates" in spec["paths"]


def test_der_garbage_after_the_certificate_is_refused(client: TestClient, root_key: str) -> None:
    org, key = new_org(client, root_key)
    leaf = f.make_self_signed_leaf(f.unique_cn())
    is_problem(
        client.post(
            f"/api/v1/orgs/{org}/certificates",
            content=leaf.der + b"\x00\x01",
            headers={**auth(key), "content-type": "application/pkix-cert"},
        ),
        422,
    )


def test_keys_are_listed_without_secrets_and_a_revoked_key_stops_working(
    client: TestClient, root_key: str
) -> None:
    org, key = new_org(client, root_key)
    users = client.get(f"/api/v1/orgs/{org}/users", headers=auth(key)).json()["items"]
    keys = client.get(f"/api/v1/orgs/{org}/keys", headers=auth(key)).json()["items"]
    assert [u["name"] for u in users] == ["alice"] and len(keys) == 1
    assert key.split("_", 2)[2] not in str(keys)  # the secret may contain "_" itself
    assert (
        client.delete(
            f"/api/v1/orgs/{org}/keys/{keys[0]['key_id']}", headers=auth(root_key)
        ).status_code
        == 204
    )
    is_problem(client.get(f"/api/v1/orgs/{org}/users", headers=auth(key)), 401)
