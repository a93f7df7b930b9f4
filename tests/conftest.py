"""Shared fixtures: a certwarden container on in-memory, SQLite or PostgreSQL persistence."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from adapters.settings import Settings
from application.bootstrap import Certwarden, bootstrap

PG = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def make_settings(store: str, tmp_path: Path) -> Settings:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    return Settings(
        store=store,  # type: ignore[arg-type]
        data_dir=tmp_path / "var",
        postgres_db="test",
        postgres_schema=schema,
        projection_poll_seconds=0.05,
    )


def drop_schema(settings: Settings) -> None:
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.postgres_schema}" CASCADE')


@pytest.fixture
def store() -> str:
    return "memory"


@pytest.fixture
def cw(store: str, tmp_path: Path) -> Iterator[Certwarden]:
    settings = make_settings(store, tmp_path)
    container = bootstrap(settings)
    container.start(background=False)
    try:
        yield container
    finally:
        container.close()
        if store == "postgres":
            drop_schema(settings)


def index_names(cw: Certwarden) -> set[str]:
    """The read-model database's own (secondary) indexes, on SQLite or PostgreSQL."""
    query = (
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        if cw.db.dialect == "postgres"
        else "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    )
    return {str(r[0]) for r in cw.db.query(query)}
