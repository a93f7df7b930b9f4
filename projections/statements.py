"""Pending SQL statements of a batch, grouped so each run of the same statement is one executemany."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from projections.db import Tx


class Pending:
    def __init__(self) -> None:
        self._ops: list[tuple[str, list[Sequence[Any]]]] = []

    def add(self, sql: str, params: Sequence[Any]) -> None:
        if self._ops and self._ops[-1][0] == sql:
            self._ops[-1][1].append(params)
        else:
            self._ops.append((sql, [params]))

    def flush(self, tx: Tx) -> None:
        for sql, rows in self._ops:
            tx.executemany(sql, rows)
        self._ops.clear()

    def clear(self) -> None:
        self._ops.clear()
