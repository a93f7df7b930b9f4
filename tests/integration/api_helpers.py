"""Helpers for HTTP API tests."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_org(client: TestClient, root_key: str, role: str = "admin") -> tuple[str, str]:
    org = client.post(
        "/api/v1/orgs", json={"name": f"o-{uuid.uuid4().hex[:6]}"}, headers=auth(root_key)
    ).json()["uid"]
    user = client.post(
        f"/api/v1/orgs/{org}/users", json={"name": "alice", "role": role}, headers=auth(root_key)
    ).json()
    key = client.post(
        f"/api/v1/orgs/{org}/users/{user['user_id']}/keys", json={}, headers=auth(root_key)
    ).json()["api_key"]
    return org, key


def is_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body
