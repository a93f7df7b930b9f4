"""Backup and restore over HTTP (in-process ASGI client, embedded SQLite stores)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from application.bootstrap import Certwarden, bootstrap
from tests.conftest import make_settings
from tests.unit.test_backup import populate, read_models


@pytest.fixture
def store() -> str:
    return "sqlite"


def started(tmp_path: Path, name: str) -> Certwarden:
    settings = make_settings("sqlite", tmp_path / name)
    settings.max_body_bytes = 1024  # restore bodies must not be held to this
    cw = bootstrap(settings)
    cw.start(background=False)
    return cw


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[TestClient, Certwarden, dict[str, str]]]:
    cw = started(tmp_path, "source")
    issued = cw.registry.ensure_bootstrap_key()
    assert issued is not None
    with TestClient(create_app(cw)) as client:
        yield client, cw, {"Authorization": f"Bearer {issued.secret}"}
    cw.close()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[TestClient, Certwarden, dict[str, str]]]:
    cw = started(tmp_path, "target")
    issued = cw.registry.ensure_bootstrap_key()
    assert issued is not None
    with TestClient(create_app(cw)) as client:
        yield client, cw, {"Authorization": f"Bearer {issued.secret}"}
    cw.close()


def key_with_role(client: TestClient, root: dict[str, str], org: str, role: str) -> dict[str, str]:
    user = client.post(
        f"/api/v1/orgs/{org}/users", json={"name": role, "role": role}, headers=root
    ).json()
    key = client.post(
        f"/api/v1/orgs/{org}/users/{user['user_id']}/keys", json={}, headers=root
    ).json()["api_key"]
    return {"Authorization": f"Bearer {key}"}


def test_an_admins_download_restores_through_the_api_with_equal_read_models(
    source: tuple[TestClient, Certwarden, dict[str, str]],
    target: tuple[TestClient, Certwarden, dict[str, str]],
) -> None:
    client, cw, root = source
    made = populate(cw)
    admin = key_with_role(client, root, made["org"], "admin")
    cw.sync()
    got = client.get(f"/api/v1/orgs/{made['org']}/backup", headers=admin)
    assert got.status_code == 200 and got.headers["content-type"] == "application/gzip"
    assert len(got.content) > 1024
    t_client, t_cw, t_root = target
    done = t_client.post("/api/v1/restore", content=got.content, headers=t_root)
    assert done.status_code == 200, done.text
    assert done.json()["events_restored"] == int(got.headers["X-Backup-Events"]) - 3
    assert read_models(t_cw, made["org"]) == read_models(cw, made["org"])


def test_a_viewer_cannot_download_a_backup(
    source: tuple[TestClient, Certwarden, dict[str, str]],
) -> None:
    client, cw, root = source
    made = populate(cw)
    viewer = key_with_role(client, root, made["org"], "viewer")
    assert client.get(f"/api/v1/orgs/{made['org']}/backup", headers=viewer).status_code == 403


def test_only_a_super_admin_backs_up_the_system_or_restores(
    source: tuple[TestClient, Certwarden, dict[str, str]],
) -> None:
    client, cw, root = source
    made = populate(cw)
    admin = key_with_role(client, root, made["org"], "admin")
    assert client.get("/api/v1/backup", headers=admin).status_code == 403
    assert client.post("/api/v1/restore", content=b"x", headers=admin).status_code == 403
    assert client.get("/api/v1/backup", headers=root).status_code == 200


def test_a_damaged_upload_is_a_422_problem_naming_the_line(
    source: tuple[TestClient, Certwarden, dict[str, str]],
    target: tuple[TestClient, Certwarden, dict[str, str]],
) -> None:
    client, cw, root = source
    made = populate(cw)
    lines = gzip.decompress(client.get(f"/api/v1/orgs/{made['org']}/backup", headers=root).content)
    damaged = lines.replace(b'"v":1,', b'"v":2,', 1)
    t_client, t_cw, t_root = target
    before = t_cw.registry.max_position()
    got = t_client.post("/api/v1/restore", content=gzip.compress(damaged), headers=t_root)
    assert got.status_code == 422
    assert got.headers["content-type"].startswith("application/problem+json")
    assert got.json()["detail"].startswith("line 2: ")
    assert t_cw.registry.max_position() == before


def test_restoring_an_existing_organization_is_a_409_listing_the_conflict(
    source: tuple[TestClient, Certwarden, dict[str, str]],
) -> None:
    client, cw, root = source
    made = populate(cw)
    data = client.get(f"/api/v1/orgs/{made['org']}/backup", headers=root).content
    got = client.post("/api/v1/restore", content=data, headers=root)
    assert got.status_code == 409
    assert f"organization {made['org']} already exists" in got.json()["detail"]
