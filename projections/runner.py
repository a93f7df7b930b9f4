"""Runs projections over the event store's notification log, in batches, exactly once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from projections.base import ViewProjection
from projections.db import ViewDb

log = logging.getLogger(__name__)

TRACKING = (
    "CREATE TABLE IF NOT EXISTS projection_tracking ("
    " name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
)


class ProjectionRunner:
    """Polls `select_notifications` (SQLite has no subscriptions) and wakes early on saves.

    Each batch: decode events once, let every projection behind that position apply them,
    then one transaction writes all projections' rows and their tracking positions.
    """

    def __init__(
        self,
        app: Any,
        db: ViewDb,
        projections: Sequence[ViewProjection],
        batch_size: int = 5000,
        poll_interval: float = 0.2,
    ) -> None:
        self.app = app
        self.db = db
        self.projections = list(projections)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self._positions: dict[str, int] = {}
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.processed = 0
        self.error: BaseException | None = None
        self._setup()

    def _setup(self) -> None:
        """Create tables; a projection whose schema version changed is dropped and rebuilt."""
        with self.db.transaction() as tx:
            tx.execute(TRACKING)
            tx.execute(
                "CREATE TABLE IF NOT EXISTS projection_versions ("
                " name TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            known = dict(tx.execute("SELECT name, version FROM projection_versions"))
            for projection in self.projections:
                if known.get(projection.name, projection.version) != projection.version:
                    log.warning("read model %s changed shape: rebuilding it", projection.name)
                    for table in projection.tables:
                        tx.execute(f"DROP TABLE IF EXISTS {table}")
                    tx.execute("DELETE FROM projection_tracking WHERE name = ?", (projection.name,))
                for statement in projection.schema():
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO projection_versions (name, version) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET version = excluded.version",
                    (projection.name, projection.version),
                )
        for projection in self.projections:
            projection.prepare()
        self._reload()

    def _reload(self) -> None:
        rows: dict[str, int] = {
            str(r[0]): int(r[1])
            for r in self.db.query("SELECT name, position FROM projection_tracking")
        }
        for projection in self.projections:
            self._positions[projection.name] = int(rows.get(projection.name, 0))
            projection.load(self.db)

    @property
    def position(self) -> int:
        return min(self._positions.values(), default=0)

    def position_of(self, name: str) -> int:
        return self._positions[name]

    def run_once(self) -> int:
        """Process one batch; returns how many notifications were read."""
        start = self.position
        notifications = self.app.recorder.select_notifications(
            start=start, limit=self.batch_size, inclusive_of_start=False
        )
        if not notifications:
            return 0
        last = notifications[-1].id
        behind = [p for p in self.projections if self._positions[p.name] < last]
        try:
            for notification in notifications:
                event = self.app.mapper.to_domain_event(notification)
                for projection in behind:
                    if notification.id > self._positions[projection.name]:
                        projection.apply(event, notification.id)
            with self.db.transaction() as tx:
                for projection in behind:
                    projection.flush(tx)
                tx.executemany(
                    "INSERT INTO projection_tracking (name, position) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                    [(p.name, last) for p in behind],
                )
        except BaseException:
            self._reload()
            raise
        for projection in behind:
            projection.after_commit()  # before waking readers: the index and the trust
            # directory must reflect what a waiting HTTP request just wrote
        with self._cond:
            for projection in behind:
                self._positions[projection.name] = last
            self.processed += len(notifications)
            self._cond.notify_all()
        return len(notifications)

    def catch_up(self) -> int:
        total = 0
        while n := self.run_once():
            total += n
        return total

    def rebuild(self, names: Sequence[str] | None = None) -> int:
        """Drop the named (default: all) read models and replay the whole log into them."""
        chosen = [p for p in self.projections if names is None or p.name in names]
        with self.db.transaction() as tx:
            for projection in chosen:
                projection.reset(tx)
                tx.execute("DELETE FROM projection_tracking WHERE name = ?", (projection.name,))
        self._reload()
        return self.catch_up()

    # -- background ---------------------------------------------------------
    def poke(self, _position: int = 0) -> None:
        self._wake.set()

    def wait(self, position: int, timeout: float = 5.0) -> None:
        """Read-your-writes: block until every projection has processed `position`."""
        if self._thread is None:
            while self.position < position and self.run_once():
                pass
            return
        self.poke()
        with self._cond:
            self._cond.wait_for(
                lambda: self.position >= position or self.error is not None, timeout
            )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="projections", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                while self.run_once() and not self._stop.is_set():
                    pass
                self.error = None
            except Exception as exc:  # keep running; the next poll retries the batch
                log.exception("projection batch failed")
                self.error = exc
            self._wake.wait(self.poll_interval)
            self._wake.clear()
