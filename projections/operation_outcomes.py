"""Run progress and per-certificate outcomes: the workers' idempotency record (RunProgress port).

Not a projection of the log: workers write it, one transaction per page (outcomes + cursor
+ lease renewal), so it is never reset by `projections rebuild`. The event store keeps the
run lifecycle and its counts (RunRequested / RunCompleted / RunFailed)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from application.ports import CertificateOutcome, RunCheckpoint
from projections.db import Row, ViewDb

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS operation_run_progress ("
    " run_id TEXT PRIMARY KEY, org_uid TEXT NOT NULL, operation_id TEXT NOT NULL,"
    " next_cursor TEXT, pages INTEGER NOT NULL, done INTEGER NOT NULL, counts TEXT NOT NULL,"
    " lease_owner TEXT, lease_until DOUBLE PRECISION NOT NULL,"
    " updated_at DOUBLE PRECISION NOT NULL)",
    # One row per committed page: cheaper than a row per certificate (one insert per page,
    # also over a network), and a page is what a worker commits or redoes as a unit.
    "CREATE TABLE IF NOT EXISTS operation_run_pages ("
    " run_id TEXT NOT NULL, page INTEGER NOT NULL, first_seq BIGINT NOT NULL,"
    " last_seq BIGINT NOT NULL, kinds TEXT NOT NULL, outcomes TEXT NOT NULL,"
    " PRIMARY KEY (run_id, page))",
)


def _checkpoint(row: Row) -> RunCheckpoint:
    return RunCheckpoint(
        cursor=row[0], pages=int(row[1]), done=bool(row[2]), counts=json.loads(row[3])
    )


def _decode(values: list[Any]) -> CertificateOutcome:
    """From the JSON array a CertificateOutcome (a NamedTuple) was stored as."""
    item = CertificateOutcome(*values)
    return item._replace(topics=tuple(item.topics))


def _dumps(outcomes: Sequence[CertificateOutcome], chunk: int = 50) -> str:
    """JSON array of the page, encoded in small chunks: one json.dumps of a whole page holds
    the GIL for milliseconds, long enough to drain a 20-message MQTT window in the
    publishing thread."""
    parts = (
        json.dumps(outcomes[i : i + chunk], separators=(",", ":"))[1:-1]
        for i in range(0, len(outcomes), chunk)
    )
    return "[" + ",".join(parts) + "]"


def tally(counts: dict[str, int], outcomes: Sequence[CertificateOutcome]) -> dict[str, int]:
    """Counts per outcome, plus `skipped:<reason>` / `failed:<stage>` breakdowns."""
    out = dict(counts)
    for item in outcomes:
        out[item.outcome] = out.get(item.outcome, 0) + 1
        if item.outcome in ("skipped", "failed"):
            detail = item.reason.split(":", 1)[0] if item.outcome == "failed" else item.reason
            key = f"{item.outcome}:{detail}"
            out[key] = out.get(key, 0) + 1
    return out


class OutcomeStore:
    """RunProgress over the view database (SQLite embedded, PostgreSQL in production)."""

    def __init__(self, db: ViewDb) -> None:
        self.db = db
        with db.transaction() as tx:
            for statement in SCHEMA:
                tx.execute(statement)

    def acquire(
        self, run_id: str, org_uid: str, operation_id: str, worker: str, now: float, ttl: float
    ) -> RunCheckpoint | None:
        """Take the lease when free or expired; the row is created on the first attempt."""
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO operation_run_progress (run_id, org_uid, operation_id, next_cursor,"
                " pages, done, counts, lease_owner, lease_until, updated_at)"
                " VALUES (?, ?, ?, NULL, 0, 0, '{}', NULL, 0, ?) ON CONFLICT (run_id) DO NOTHING",
                (run_id, org_uid, operation_id, now),
            )
            rows = tx.execute(
                "UPDATE operation_run_progress SET lease_owner = ?, lease_until = ?"
                " WHERE run_id = ? AND (lease_owner IS NULL OR lease_until < ?)"
                " RETURNING next_cursor, pages, done, counts",
                (worker, now + ttl, run_id, now),
            )
        return _checkpoint(rows[0]) if rows else None

    def commit_page(
        self,
        run_id: str,
        worker: str,
        outcomes: Sequence[CertificateOutcome],
        cursor: str | None,
        done: bool,
        now: float,
        ttl: float,
    ) -> RunCheckpoint | None:
        """Outcomes + cursor + lease renewal in one transaction; None if the lease is gone."""
        with self.db.transaction() as tx:
            rows = tx.execute(
                "UPDATE operation_run_progress SET lease_until = ?"
                " WHERE run_id = ? AND lease_owner = ? RETURNING counts, pages",
                (now + ttl, run_id, worker),
            )
            if not rows:
                return None
            counts = tally(json.loads(rows[0][0]), outcomes)
            pages = int(rows[0][1]) + 1
            if outcomes:
                tx.execute(
                    "INSERT INTO operation_run_pages (run_id, page, first_seq, last_seq, kinds,"
                    " outcomes) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, page) DO NOTHING",
                    (
                        run_id,
                        pages,
                        outcomes[0].seq,
                        outcomes[-1].seq,
                        "," + ",".join(sorted({o.outcome for o in outcomes})) + ",",
                        _dumps(outcomes),
                    ),
                )
            tx.execute(
                "UPDATE operation_run_progress SET next_cursor = ?, pages = ?, done = ?,"
                " counts = ?, updated_at = ? WHERE run_id = ?",
                (cursor, pages, int(done), json.dumps(counts, sort_keys=True), now, run_id),
            )
        return RunCheckpoint(cursor, pages, done, counts)

    def release(self, run_id: str, worker: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE operation_run_progress SET lease_owner = NULL, lease_until = 0"
                " WHERE run_id = ? AND lease_owner = ?",
                (run_id, worker),
            )

    def checkpoint(self, run_id: str) -> RunCheckpoint | None:
        rows = self.db.query(
            "SELECT next_cursor, pages, done, counts FROM operation_run_progress WHERE run_id = ?",
            (run_id,),
        )
        return _checkpoint(rows[0]) if rows else None

    def leased(self, run_ids: Sequence[str], now: float) -> set[str]:
        """Which of these runs a live worker holds right now."""
        if not run_ids:
            return set()
        marks = ", ".join("?" for _ in run_ids)
        rows = self.db.query(
            "SELECT run_id FROM operation_run_progress"  # noqa: S608 - placeholders only
            f" WHERE run_id IN ({marks}) AND lease_owner IS NOT NULL AND lease_until >= ?",
            (*run_ids, now),
        )
        return {str(r[0]) for r in rows}

    def outcomes(
        self, run_id: str, *, outcome: str | None = None, after: int = -1, limit: int = 1000
    ) -> list[CertificateOutcome]:
        """Per-certificate outcomes in processing order (keyset on seq); pages without the
        wanted outcome are not decoded."""
        where, params = "run_id = ? AND last_seq > ?", [run_id, after]
        if outcome is not None:
            where += " AND kinds LIKE ?"
            params.append(f"%,{outcome},%")
        out: list[CertificateOutcome] = []
        last_page = 0
        while len(out) < limit:
            rows = self.db.query(
                f"SELECT page, outcomes FROM operation_run_pages WHERE {where}"  # noqa: S608
                " AND page > ? ORDER BY page LIMIT 10",
                (*params, last_page),
            )
            for page, encoded in rows:
                last_page = int(page)
                for values in json.loads(encoded):
                    item = _decode(values)
                    if item.seq > after and (outcome is None or item.outcome == outcome):
                        out.append(item)
            if len(rows) < 10:
                break
        return out[:limit]
