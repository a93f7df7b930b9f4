"""Fixtures for HTTP API tests: the app around a container, and a super-admin key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from application.bootstrap import Certwarden


@pytest.fixture
def client(cw: Certwarden) -> Iterator[TestClient]:
    with TestClient(create_app(cw)) as c:
        yield c


@pytest.fixture
def root_key(cw: Certwarden) -> str:
    issued = cw.registry.ensure_bootstrap_key()
    assert issued is not None
    return issued.secret
