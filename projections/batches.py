"""The units of the projection runner's pipeline: a batch read, and a batch applied (with the
writes its projections asked for, to be committed later by the writer thread)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from projections.base import ViewProjection
from projections.db import Row


class RecordedWrites:
    """What the projections' `flush` asked for, kept to be written later by the writer thread.

    Rows are taken as they are at flush time (projections build fresh row lists of plain
    values), so the next batch can be applied in memory while this one is being written.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.calls.append(("execute", (sql, tuple(params))))
        return []  # flushes only write; nothing they run returns rows

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.calls.append(("executemany", (sql, list(rows))))

    def clear(self, table: str) -> None:
        self.calls.append(("clear", (table,)))

    def bulk_insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if rows:
            self.calls.append(("bulk_insert", (table, tuple(columns), list(rows))))

    def bulk_upsert(
        self, table: str, key: Sequence[str], columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if rows:
            self.calls.append(("bulk_upsert", (table, tuple(key), tuple(columns), list(rows))))

    def bulk_update(
        self, table: str, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if rows:
            self.calls.append(("bulk_update", (table, key, tuple(columns), list(rows))))


def succeeded(future: Future[None]) -> bool:
    """Wait for a write still running; True when it committed."""
    try:
        future.result()
    except BaseException:  # noqa: BLE001 - the caller re-raises its own error
        return False
    return True


@dataclass(slots=True)
class Read:
    """Notifications first..last (size of them), and the decoded events a read model needs."""

    first: int
    last: int
    size: int
    events: list[tuple[int, Any]]
    prefetched: Future[None] | None = None


class Batch:
    """One batch applied in memory: its writes, the projections it moved, its last position."""

    def __init__(self, writes: RecordedWrites, moved: list[ViewProjection], last: int, size: int):
        self.writes, self.moved, self.last, self.size = writes, moved, last, size
