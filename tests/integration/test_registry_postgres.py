"""The registry suite again, on the real PostgreSQL of this machine."""

from __future__ import annotations

import pytest

from tests.unit import test_registry as suite


class TestRegistryOnPostgres(suite.TestRegistryInMemory):
    @pytest.fixture
    def store(self) -> str:
        return "postgres"
