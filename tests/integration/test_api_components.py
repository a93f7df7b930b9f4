"""HTTP: component templates, components with last-seen, the decision log."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from application.bootstrap import Certwarden
from application.ports import AccessRequest, Action
from tests import factories as f
from tests.integration.api_helpers import auth, is_problem, new_org

TEMPLATES = "/api/v1/orgs/{org}/component-templates"


@pytest.fixture
def store() -> str:
    return "sqlite"


def test_templates_are_created_listed_updated_and_deleted(
    client: TestClient, root_key: str
) -> None:
    org, key = new_org(client, root_key)
    url = TEMPLATES.format(org=org)
    created = client.post(
        url,
        json={"template_id": "sensor", "name_pattern": "Sensor [component.id]"},
        headers=auth(key),
    )
    assert created.status_code == 201
    assert [t["template_id"] for t in client.get(url, headers=auth(key)).json()["items"]] == [
        "sensor"
    ]
    patched = client.patch(
        f"{url}/sensor", json={"name_pattern": "Probe [component.id]"}, headers=auth(key)
    )
    assert patched.json()["name_pattern"] == "Probe [component.id]"
    assert client.delete(f"{url}/sensor", headers=auth(key)).status_code == 204
    is_problem(client.get(f"{url}/sensor", headers=auth(key)), 404)


def test_bad_templates_are_refused_with_a_clear_error(client: TestClient, root_key: str) -> None:
    org, key = new_org(client, root_key)
    url = TEMPLATES.format(org=org)
    for body in (
        {"template_id": "../etc"},
        {"template_id": "t", "name_pattern": "X [cert.secret]"},
        {"template_id": "t", "name_pattern": "x" * 500},
        {"template_id": "t", "extra": 1},
    ):
        is_problem(client.post(url, json=body, headers=auth(key)), 422)
    assert client.post(url, json={"template_id": "t"}, headers=auth(key)).status_code == 201
    is_problem(client.post(url, json={"template_id": "t"}, headers=auth(key)), 409)


def test_components_and_denials_are_visible_to_the_organization_only(
    client: TestClient, root_key: str, cw: Certwarden
) -> None:
    org, key = new_org(client, root_key)
    _other, other_key = new_org(client, root_key)
    client.post(TEMPLATES.format(org=org), json={"template_id": "sensor"}, headers=auth(key))
    client.post(
        f"/api/v1/orgs/{org}/policies",
        headers=auth(key),
        json={
            "policy_id": "p",
            "permission_sets": [{"topics": ["${org.uid}/feed/#"], "actions": ["PUBLISH"]}],
        },
    )
    leaf = f.make_self_signed_leaf(f.unique_cn())
    cid = client.post(
        f"/api/v1/orgs/{org}/certificates",
        json={"pem": leaf.pem.decode(), "policy_id": "p"},
        headers=auth(key),
    ).json()["certificates"][0]["certificate_id"]
    client.patch(
        f"/api/v1/orgs/{org}/certificates/{cid}",
        json={"registration": {"template_id": "sensor"}},
        headers=auth(key),
    )
    import hashlib

    fp = hashlib.sha256(leaf.der).hexdigest()
    cw.enforcement.authorize(
        AccessRequest(fp, "c", "127.0.0.1", Action.PUBLISH, f"{org}/feed/cid/probe-1")
    )
    cw.enforcement.authorize(AccessRequest(fp, "c", "127.0.0.1", Action.PUBLISH, f"{org}/nope"))
    cw.sync()
    cw.decisions.flush()
    comps = client.get(f"/api/v1/orgs/{org}/components", headers=auth(key)).json()["items"]
    assert [c["component_id"] for c in comps] == ["probe-1"] and comps[0]["last_seen"]
    denials = client.get(f"/api/v1/orgs/{org}/decisions", headers=auth(key)).json()["items"]
    assert [d["topic"] for d in denials] == [f"{org}/nope"]
    is_problem(client.get(f"/api/v1/orgs/{org}/components", headers=auth(other_key)), 404)
    is_problem(client.get(f"/api/v1/orgs/{org}/decisions", headers=auth(other_key)), 404)
