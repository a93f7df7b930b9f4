"""Decision log (denials) and component activity, written off the broker's hot path.

Entries go through a bounded queue to a writer thread that inserts in batches. Each
certificate has a token bucket (burst 20, then 1 entry per 6 s): a misbehaving device
cannot flood the store; the next entry that gets through says how many were suppressed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from application.ports import DecisionRecord
from projections.db import ViewDb

log = logging.getLogger(__name__)

BURST = 20.0
REFILL_PER_SECOND = 1 / 6


class _Bucket:
    __slots__ = ("tokens", "updated", "suppressed")

    def __init__(self, now: float) -> None:
        self.tokens = BURST
        self.updated = now
        self.suppressed = 0


class SqlDecisionLog:
    """Implements the DecisionLog port on the view database."""

    def __init__(self, db: ViewDb, max_queue: int = 10_000) -> None:
        self.db = db
        self._queue: queue.Queue[tuple[str, tuple[Any, ...]]] = queue.Queue(max_queue)
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.dropped = 0
        with db.transaction() as tx:
            tx.execute(
                "CREATE TABLE IF NOT EXISTS decision_log (at DOUBLE PRECISION NOT NULL,"
                " org_uid TEXT, certificate_id TEXT, fingerprint TEXT, client_id TEXT NOT NULL,"
                " peer_ip TEXT NOT NULL, action TEXT NOT NULL, topic TEXT NOT NULL,"
                " reason TEXT NOT NULL, detail TEXT NOT NULL, suppressed INTEGER NOT NULL)"
            )
            tx.execute("CREATE INDEX IF NOT EXISTS decision_log_org ON decision_log (org_uid, at)")
            tx.execute(
                "CREATE TABLE IF NOT EXISTS component_activity (org_uid TEXT NOT NULL,"
                " component_id TEXT NOT NULL, last_seen DOUBLE PRECISION NOT NULL,"
                " PRIMARY KEY (org_uid, component_id))"
            )
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def record(self, entry: DecisionRecord) -> None:
        key = entry.fingerprint or entry.peer_ip
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) > 100_000:
                    self._buckets.clear()
                bucket = self._buckets[key] = _Bucket(entry.at)
            bucket.tokens = min(
                BURST, bucket.tokens + (entry.at - bucket.updated) * REFILL_PER_SECOND
            )
            bucket.updated = entry.at
            if bucket.tokens < 1:
                bucket.suppressed += 1
                return
            bucket.tokens -= 1
            suppressed, bucket.suppressed = bucket.suppressed, 0
        row = (
            entry.at,
            entry.org_uid,
            entry.certificate_id,
            entry.fingerprint,
            entry.client_id,
            entry.peer_ip,
            entry.action,
            entry.topic,
            entry.reason,
            entry.detail,
            suppressed,
        )
        self._put(("decision", row))

    def seen(self, org_uid: str, component_id: str, at: float) -> None:
        self._put(("seen", (org_uid, component_id, at)))

    def _put(self, item: tuple[str, tuple[Any, ...]]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.flush()
        self._stop.set()
        try:
            self._queue.put_nowait(("stop", ()))  # wake the writer now
        except queue.Full:
            pass
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < 500:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write(batch)
            except Exception:  # the log must never take the broker down; report and go on
                log.exception("decision log write failed (%d entries lost)", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _write(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        decisions = [row for kind, row in batch if kind == "decision"]
        if not decisions and not any(kind == "seen" for kind, _ in batch):
            return
        seen: dict[tuple[str, str], float] = {}
        for kind, row in batch:
            if kind == "seen":
                seen[(row[0], row[1])] = max(row[2], seen.get((row[0], row[1]), 0.0))
        with self.db.transaction() as tx:
            tx.executemany(
                "INSERT INTO decision_log (at, org_uid, certificate_id, fingerprint, client_id,"
                " peer_ip, action, topic, reason, detail, suppressed)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                decisions,
            )
            tx.executemany(
                "INSERT INTO component_activity (org_uid, component_id, last_seen) VALUES (?, ?, ?)"
                " ON CONFLICT (org_uid, component_id) DO UPDATE SET last_seen = excluded.last_seen",
                [(o, c, t) for (o, c), t in seen.items()],
            )

    def query(
        self,
        org_uid: str,
        certificate_id: str | None = None,
        limit: int = 100,
        before: float | None = None,
    ) -> list[dict[str, Any]]:
        where, params = ["org_uid = ?"], [org_uid]
        if certificate_id:
            where.append("certificate_id = ?")
            params.append(certificate_id)
        if before is not None:
            where.append("at < ?")
            params.append(before)  # type: ignore[arg-type]
        fields = (
            "at",
            "certificate_id",
            "fingerprint",
            "client_id",
            "peer_ip",
            "action",
            "topic",
            "reason",
            "detail",
            "suppressed",
        )
        rows = self.db.query(
            f"SELECT {', '.join(fields)} FROM decision_log WHERE {' AND '.join(where)}"  # noqa: S608
            " ORDER BY at DESC LIMIT ?",
            (*params, limit),
        )
        return [dict(zip(fields, r, strict=True)) for r in rows]
