"""Audit export and history endpoints through the HTTP API (in-process, in-memory store)."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from application.bootstrap import Certwarden
from tests import factories as f

POLICY = {"policy_id": "devices", "permission_sets": [{"topics": ["a/#"], "actions": ["PUBLISH"]}]}


@pytest.fixture
def client(cw: Certwarden) -> Iterator[TestClient]:
    with TestClient(create_app(cw)) as c:
        yield c


@pytest.fixture
def root(cw: Certwarden) -> dict[str, str]:
    issued = cw.registry.ensure_bootstrap_key()
    assert issued is not None
    return {"Authorization": f"Bearer {issued.secret}"}


@pytest.fixture
def org(client: TestClient, root: dict[str, str]) -> str:
    uid: str = client.post("/api/v1/orgs", json={"name": "acme"}, headers=root).json()["uid"]
    return uid


def viewer(client: TestClient, root: dict[str, str], org: str) -> dict[str, str]:
    user = client.post(
        f"/api/v1/orgs/{org}/users", json={"name": "val", "role": "viewer"}, headers=root
    ).json()
    key = client.post(
        f"/api/v1/orgs/{org}/users/{user['user_id']}/keys", json={}, headers=root
    ).json()["api_key"]
    return {"Authorization": f"Bearer {key}"}


def test_the_export_streams_every_matching_row_as_json_lines(
    client: TestClient, root: dict[str, str], org: str
) -> None:
    for _ in range(3):
        pem = f.make_self_signed_leaf(f.unique_cn()).pem.decode()
        client.post(f"/api/v1/orgs/{org}/certificates", json={"pem": pem}, headers=root)
    got = client.get(f"/api/v1/orgs/{org}/audit/export?event_type=Imported", headers=root)
    assert got.status_code == 200 and got.headers["content-type"] == "application/x-ndjson"
    rows = [json.loads(line) for line in got.text.splitlines()]
    assert len(rows) == 3 and {r["event_type"] for r in rows} == {"Imported"}
    assert [r["position"] for r in rows] == sorted(r["position"] for r in rows)


def test_the_csv_export_neutralises_spreadsheet_formulas(
    client: TestClient, root: dict[str, str], org: str
) -> None:
    evil = "=HYPERLINK(1)"
    client.post(f"/api/v1/orgs/{org}/users", json={"name": evil, "role": "viewer"}, headers=root)
    got = client.get(f"/api/v1/orgs/{org}/audit/export?format=csv", headers=root)
    assert got.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(got.text)))
    user = next(row for row in rows if row["entity_type"] == "User")
    assert user["entity_key"] == "'" + evil
    assert json.loads(user["changes"])["name"]["after"] == evil  # inside JSON: harmless


def test_an_export_with_a_bad_time_is_a_422_before_any_row(
    client: TestClient, root: dict[str, str], org: str
) -> None:
    got = client.get(f"/api/v1/orgs/{org}/audit/export?since=yesterday", headers=root)
    assert got.status_code == 422
    assert got.headers["content-type"].startswith("application/problem+json")


def test_a_key_of_another_organization_cannot_export(
    client: TestClient, root: dict[str, str], org: str
) -> None:
    other = client.post("/api/v1/orgs", json={"name": "other"}, headers=root).json()["uid"]
    got = client.get(f"/api/v1/orgs/{org}/audit/export", headers=viewer(client, root, other))
    assert got.status_code == 404


def test_a_policy_history_spans_every_policy_that_held_the_id(
    client: TestClient, root: dict[str, str], org: str
) -> None:
    client.post(f"/api/v1/orgs/{org}/policies", json=POLICY, headers=root)
    client.delete(f"/api/v1/orgs/{org}/policies/devices", headers=root)
    client.post(f"/api/v1/orgs/{org}/policies", json=POLICY, headers=root)
    items = client.get(f"/api/v1/orgs/{org}/policies/devices/history", headers=root).json()["items"]
    assert [i["event_type"] for i in items] == ["Created", "Deleted", "Created"]
    assert len({i["entity_id"] for i in items}) == 2


def test_the_history_of_an_unknown_policy_is_a_404(
    client: TestClient, root: dict[str, str], org: str
) -> None:
    assert client.get(f"/api/v1/orgs/{org}/policies/nope/history", headers=root).status_code == 404


def test_folder_and_user_histories_list_their_events(
    client: TestClient, root: dict[str, str], org: str
) -> None:
    client.post(f"/api/v1/orgs/{org}/folders", json={"path": "/plant"}, headers=root)
    client.delete(f"/api/v1/orgs/{org}/folders?path=/plant", headers=root)
    folder = client.get(f"/api/v1/orgs/{org}/folders/history?path=plant", headers=root).json()
    assert [i["event_type"] for i in folder["items"]] == ["Created", "Deleted"]
    user = client.post(
        f"/api/v1/orgs/{org}/users", json={"name": "u", "role": "viewer"}, headers=root
    ).json()
    got = client.get(f"/api/v1/orgs/{org}/users/{user['user_id']}/history", headers=root).json()
    assert [i["event_type"] for i in got["items"]] == ["Created"]


def test_a_certificate_state_as_of_a_time_shows_the_values_of_then(
    client: TestClient, root: dict[str, str], org: str
) -> None:
    pem = f.make_self_signed_leaf(f.unique_cn()).pem.decode()
    done = client.post(f"/api/v1/orgs/{org}/certificates", json={"pem": pem}, headers=root)
    cid = done.json()["certificates"][0]["certificate_id"]
    time.sleep(0.01)
    then = datetime.now(UTC).isoformat()
    client.patch(f"/api/v1/orgs/{org}/certificates/{cid}", json={"name": "new"}, headers=root)
    url = f"/api/v1/orgs/{org}/certificates/{cid}/state"
    old = client.get(url, params={"as_of": then}, headers=root).json()
    assert old["name"] != "new" and old["version"] == 1 and old["as_of"] == then
    assert client.get(url, params={"as_of": "2001-01-01"}, headers=root).status_code == 404


def test_a_policy_state_as_of_a_time_shows_the_permissions_of_then(
    client: TestClient, root: dict[str, str], org: str
) -> None:
    client.post(f"/api/v1/orgs/{org}/policies", json=POLICY, headers=root)
    time.sleep(0.01)
    then = datetime.now(UTC).isoformat()
    sets = [{"topics": ["b/#"], "actions": ["SUBSCRIBE"]}]
    client.patch(
        f"/api/v1/orgs/{org}/policies/devices", json={"permission_sets": sets}, headers=root
    )
    old = client.get(
        f"/api/v1/orgs/{org}/policies/devices/state", params={"as_of": then}, headers=root
    ).json()
    assert old["permission_sets"][0]["topics"] == ["a/#"]


def test_an_unknown_certificate_id_as_of_any_time_is_a_404(
    client: TestClient, root: dict[str, str], org: str
) -> None:
    url = f"/api/v1/orgs/{org}/certificates/{uuid.uuid4()}/state?as_of=2030-01-01T00:00:00Z"
    assert client.get(url, headers=root).status_code == 404
