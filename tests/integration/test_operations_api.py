"""Operations, action packages and notifications over HTTP (in-process ASGI client, SQLite)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from application.bootstrap import Certwarden
from domain.meta import Actor
from domain.notification import NotificationKind
from tests.operations_support import seed, use_fakes


@pytest.fixture
def store() -> str:
    return "sqlite"


@pytest.fixture
def client(cw: Certwarden) -> Iterator[TestClient]:
    with TestClient(create_app(cw)) as c:
        yield c


@pytest.fixture
def org_keys(cw: Certwarden, client: TestClient) -> tuple[str, dict[str, dict[str, str]]]:
    """An organization with /plant and one API key per role."""
    root = cw.registry.ensure_bootstrap_key()
    assert root is not None
    as_root = {"Authorization": f"Bearer {root.secret}"}
    org = client.post("/api/v1/orgs", json={"name": f"o-{uuid.uuid4().hex[:6]}"}, headers=as_root)
    uid = org.json()["uid"]
    keys = {}
    for role in ("viewer", "operator", "admin"):
        user = client.post(
            f"/api/v1/orgs/{uid}/users", json={"name": role, "role": role}, headers=as_root
        ).json()
        key = client.post(
            f"/api/v1/orgs/{uid}/users/{user['user_id']}/keys", json={}, headers=as_root
        ).json()["api_key"]
        keys[role] = {"Authorization": f"Bearer {key}"}
    assert client.post(
        f"/api/v1/orgs/{uid}/folders", json={"path": "/plant"}, headers=keys["admin"]
    ).status_code in (200, 201)
    return uid, keys


def problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return dict(response.json())


OPERATION = {
    "name": "nightly roll",
    "type": "ROLL_ALL",
    "folder": "/plant",
    "schedule": {"cron": "0 3 * * *", "timezone": "Europe/Paris"},
}


def test_an_admin_creates_an_operation_and_a_viewer_reads_it(
    client: TestClient, org_keys: tuple[str, dict]
) -> None:
    org, keys = org_keys
    created = client.post(f"/api/v1/orgs/{org}/operations", json=OPERATION, headers=keys["admin"])
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["expiring_window_days"] == 30 and body["include_subfolders"] is True
    assert body["schedule"]["next_fire_time"].endswith(("T01:00:00+00:00", "T02:00:00+00:00"))
    listed = client.get(f"/api/v1/orgs/{org}/operations", headers=keys["viewer"]).json()
    assert [o["operation_id"] for o in listed["items"]] == [body["operation_id"]]
    one = client.get(
        f"/api/v1/orgs/{org}/operations/{body['operation_id']}", headers=keys["viewer"]
    )
    assert one.headers["etag"] == f'"{body["version"]}"'


def test_changing_an_operation_needs_the_admin_role(
    client: TestClient, org_keys: tuple[str, dict]
) -> None:
    org, keys = org_keys
    problem(
        client.post(f"/api/v1/orgs/{org}/operations", json=OPERATION, headers=keys["operator"]), 403
    )
    op = client.post(f"/api/v1/orgs/{org}/operations", json=OPERATION, headers=keys["admin"]).json()
    url = f"/api/v1/orgs/{org}/operations/{op['operation_id']}"
    problem(client.patch(url, json={"name": "x"}, headers=keys["operator"]), 403)
    problem(client.delete(url, headers=keys["viewer"]), 403)
    patched = client.patch(url, json={"schedule": None}, headers=keys["admin"])
    assert patched.status_code == 200 and patched.json()["schedule"]["enabled"] is False


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"schedule": {"cron": "99 * * * *"}}, "invalid cron"),
        ({"schedule": {"cron": "0 3 * * *", "timezone": "Nowhere/Land"}}, "unknown time zone"),
        ({"folder": "/missing"}, "does not exist"),
        ({"type": "TAKE_ACTION"}, "needs an action package"),
    ],
)
def test_invalid_settings_get_a_422_problem(
    client: TestClient, org_keys: tuple[str, dict], change: dict, needle: str
) -> None:
    org, keys = org_keys
    body = problem(
        client.post(
            f"/api/v1/orgs/{org}/operations", json={**OPERATION, **change}, headers=keys["admin"]
        ),
        422,
    )
    assert needle in body["detail"]


def test_an_operator_executes_and_reads_the_run_with_per_certificate_outcomes(
    client: TestClient, org_keys: tuple[str, dict], cw: Certwarden
) -> None:
    org, keys = org_keys
    publisher = use_fakes(cw)
    pinned = seed(cw, org, 2)
    unpinned = seed(cw, org, 1, pinned=False)
    op = client.post(f"/api/v1/orgs/{org}/operations", json=OPERATION, headers=keys["admin"]).json()
    base = f"/api/v1/orgs/{org}/operations/{op['operation_id']}"
    problem(client.post(f"{base}/execute", headers=keys["viewer"]), 403)
    accepted = client.post(f"{base}/execute", headers=keys["operator"])
    assert accepted.status_code == 202
    run_id = accepted.json()["run_id"]
    runs = client.get(f"{base}/runs", headers=keys["viewer"]).json()["items"]
    assert [(r["run_id"], r["status"], r["trigger"]) for r in runs] == [
        (run_id, "requested", "now")
    ]
    assert cw.executor.execute(org, op["operation_id"], run_id) == "completed"
    cw.sync()
    detail = client.get(f"{base}/runs/{run_id}", headers=keys["viewer"]).json()
    assert detail["status"] == "completed" and detail["counts"]["published"] == 2
    by_cert = {c["certificate_id"]: c for c in detail["certificates"]}
    assert by_cert[unpinned[0]]["reason"] == "no-pinned-component"
    assert all(by_cert[c]["topics"][0].startswith(f"{org}/manage/cert/roll/cid/") for c in pinned)
    assert len(publisher.sent) == 2
    skipped = client.get(f"{base}/runs/{run_id}?outcome=skipped", headers=keys["viewer"]).json()
    assert [c["certificate_id"] for c in skipped["certificates"]] == unpinned


def test_a_run_of_another_operation_is_not_found(
    client: TestClient, org_keys: tuple[str, dict]
) -> None:
    org, keys = org_keys
    op = client.post(f"/api/v1/orgs/{org}/operations", json=OPERATION, headers=keys["admin"]).json()
    problem(
        client.get(
            f"/api/v1/orgs/{org}/operations/{op['operation_id']}/runs/{uuid.uuid4()}",
            headers=keys["viewer"],
        ),
        404,
    )


def test_action_packages_are_managed_by_admins_and_refuse_unknown_variables(
    client: TestClient, org_keys: tuple[str, dict]
) -> None:
    org, keys = org_keys
    url = f"/api/v1/orgs/{org}/action-packages"
    action = {"kind": "mqtt_publish", "topic": "[org.uid]/x/[component.id]", "payload": "[cert.dn]"}
    problem(
        client.post(url, json={"name": "p", "actions": [action]}, headers=keys["operator"]), 403
    )
    bad = {**action, "payload": "[device.secret]"}
    assert (
        "unknown variable"
        in problem(
            client.post(url, json={"name": "p", "actions": [bad]}, headers=keys["admin"]), 422
        )["detail"]
    )
    created = client.post(url, json={"name": "p", "actions": [action]}, headers=keys["admin"])
    assert created.status_code == 201
    package_id = created.json()["package_id"]
    op = {**OPERATION, "type": "TAKE_ACTION", "action_package_id": package_id}
    assert (
        client.post(f"/api/v1/orgs/{org}/operations", json=op, headers=keys["admin"]).status_code
        == 201
    )
    problem(client.delete(f"{url}/{package_id}", headers=keys["admin"]), 409)
    listed = client.get(url, headers=keys["viewer"]).json()["items"]
    assert [p["package_id"] for p in listed] == [package_id]


def test_notifications_are_listed_and_acknowledged_by_operators(
    client: TestClient, org_keys: tuple[str, dict], cw: Certwarden
) -> None:
    org, keys = org_keys
    note = cw.registry.raise_notification(
        org, NotificationKind.BROKER_UNREACHABLE, "broker down", Actor.system("test")
    )
    cw.sync()
    url = f"/api/v1/orgs/{org}/notifications"
    open_items = client.get(f"{url}?acknowledged=false", headers=keys["viewer"]).json()["items"]
    assert [(n["notification_id"], n["kind"]) for n in open_items] == [(note, "broker-unreachable")]
    problem(client.post(f"{url}/{note}/ack", headers=keys["viewer"]), 403)
    assert client.post(f"{url}/{note}/ack", headers=keys["operator"]).json()["acknowledged"] is True
    assert client.get(f"{url}?acknowledged=false", headers=keys["viewer"]).json()["items"] == []
