"""Runs projections over the event store's notification log, in batches, exactly once."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.utils import resolve_topic

from application.allocation import fewer_young_collections
from application.ports import RestoreFeed
from projections.base import Handler, ViewProjection
from projections.batches import Batch, Read, RecordedWrites, succeeded
from projections.db import Tx, ViewDb
from projections.event_feed import bucket_counts_for, event_decoder, event_maker, feed_for

log = logging.getLogger(__name__)

TRACKING = (
    "CREATE TABLE IF NOT EXISTS projection_tracking ("
    " name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
)
# A read model's position moves on only from where this runner had it: another process
# writing the same read models (a CLI restore beside a running server, say) has moved it
# first, and the batch rolls back instead of applying those events a second time.
ADVANCE = (
    "INSERT INTO projection_tracking (name, position) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET position = excluded.position"
    " WHERE projection_tracking.position = ? RETURNING position"
)


class MovedElsewhere(Exception):
    """A read model's tracking position is not where this runner had it: someone else
    applied those events. The batch rolls back; the runner reloads and carries on from there."""


def write_batch(tx: Tx, writes: RecordedWrites) -> None:
    """A batch's writes in `tx`, its positions first (compare-and-set, see ADVANCE)."""
    for method, args in writes.calls:
        if method == "advance":
            for name, before, after in args[0]:
                if not tx.execute(ADVANCE, (name, after, before)):
                    raise MovedElsewhere(f"read model {name} is no longer at {before}")
        else:
            getattr(tx, method)(*args)


_SECONDARY_INDEX = "CREATE INDEX IF NOT EXISTS "
BULK_FROM_ZERO = 50_000  # notifications: from empty read models, build indexes at the end
FEED_LOCK_SECONDS = 30.0  # a restore waits this long for a batch in progress to end
MOVED_ELSEWHERE_RETRIES = 5  # catch-up attempts when another process moves read models too
_AWAY = sys.maxsize  # "applied" position of a read model a helper process is filling


def _group(projection: ViewProjection) -> str:
    return projection.group or projection.name


class HelperRun(Protocol):
    def wait(self, stop: threading.Event | None) -> bool:
        """Block until the helper ends; True if it caught its read models up to the end of
        the log without error. If `stop` is set meanwhile, end the helper and return False."""
        ...

    def end(self) -> None:
        """End the helper now (what it committed stays) and wait until it has."""
        ...


class FeedRun(HelperRun, Protocol):
    """A helper process filled from a restore: the feed's side (begin, send_share,
    commit_share, abort) and the runner's (running, wait, end)."""

    def begin(self, base: int) -> None: ...

    def send_share(self, last: int, events: Sequence[tuple[int, int, int, str, bytes]]) -> None:
        """Its share of a batch that ends at position `last`: (position, aggregate id as an
        int, version, topic, state as stored) each; its read models move on to `last`."""
        ...

    def commit_share(self) -> None:
        """The restore has committed: commit."""
        ...

    def abort(self) -> None: ...

    def running(self) -> bool: ...


class Helpers(Protocol):
    """Another process that fills some read models from zero beside this one (a port: the
    wiring decides if there is one). Its rows and tracking positions reach the same tables
    in its own transactions, so each read model is still written exactly once."""

    names: Sequence[str]  # the read models a helper takes

    def close(self) -> None: ...

    def feed(self, names: Sequence[str], indexes: Sequence[str]) -> FeedRun:
        """Start a helper that fills `names` (empty, at the position the restore starts
        from) from the restore's events it is sent, commits only when told to (after the
        restore did), then builds `indexes`."""
        ...

    def start(self, names: Sequence[str], prepare: Callable[[], None]) -> HelperRun:
        """Start a helper for `names`. `prepare` runs once the helper exists and before it
        reads anything of the read models (the runner deals the audit split there, while the
        child interpreter is still importing)."""
        ...


class ProjectionRunner:
    """Polls `select_notifications` (SQLite has no subscriptions) and wakes early on saves.

    Each batch: decode events once, let every projection behind that position apply them,
    then one transaction writes all projections' rows and their tracking positions.

    Catching up is a three-stage pipeline over two threads: the next batch is read from the
    event store while the current one is applied in memory, and the previous one is written
    by the writer thread (still one transaction per batch, rows with their positions). If a
    write fails, every projection is reloaded from its tables and the batch is read again.
    """

    def __init__(
        self,
        app: Any,
        db: ViewDb,
        projections: Sequence[ViewProjection],
        batch_size: int = 5000,
        poll_interval: float = 0.2,
        bulk_from_zero: int = BULK_FROM_ZERO,
        helpers: Helpers | None = None,
        setup: bool = True,
    ) -> None:
        self.app = app
        self.db = db
        self.projections = list(projections)
        self.batch_size = batch_size
        self.bulk_from_zero = bulk_from_zero
        self.helpers = helpers
        self._away: set[str] = set()  # read models a helper process is filling right now
        self._feed: tuple[RestoreFeedRun, list[str], list[str]] | None = None  # names, indexes
        self._feed_tx: tuple[Any, Tx] | None = None  # this process's share of a restore
        self._stale = False  # in-memory state must be reloaded before the next batch
        self._feed_moved: set[str] = set()
        self._feed_last = 0
        self._feed_size = 0
        self.poll_interval = poll_interval
        self._positions: dict[str, int] = {}  # committed
        self._applied: dict[str, int] = {}  # applied in memory (>= committed)
        self._cond = threading.Condition()
        self._lock = threading.RLock()  # one batch at a time: catch-up, wait() and the loop
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prefetching = [
            p for p in self.projections if type(p).prefetch is not ViewProjection.prefetch
        ]
        self._fetch = feed_for(app.recorder)
        self._to_event = event_decoder(app.mapper)
        self._bucket_counts = bucket_counts_for(app.recorder)
        self._narrowing = (  # every read model here takes some entities only (a helper's)
            [p.wants for p in self.projections]
            if self.projections
            and all(type(p).wants is not ViewProjection.wants for p in self.projections)
            else None
        )
        self._wanted: dict[str, bool] = {}
        self._missing_indexes: list[
            str
        ] = []  # dropped for a bulk load, not built yet  # topic -> some read model handles it
        self._io: ThreadPoolExecutor | None = None
        self._ahead: ThreadPoolExecutor | None = (
            None  # prefetch work, during catch-up  # reader + writer of the catch-up pipeline
        )
        self.processed = 0
        self.fed = 0  # events applied from a restore's feed rather than read from the log
        self.error: BaseException | None = None
        if setup:  # not in a helper process: the tables are the parent's (indexes dropped)
            self._create_schema()
        for projection in self.projections:
            projection.prepare()
        self._reload()

    def _create_schema(self) -> None:
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

    def _reload(self, names: Sequence[str] | None = None) -> None:
        """Positions and in-memory state from the tables (all read models, or the named)."""
        rows: dict[str, int] = {
            str(r[0]): int(r[1])
            for r in self.db.query("SELECT name, position FROM projection_tracking")
        }
        for projection in self.projections:
            if names is not None and projection.name not in names:
                continue
            self._positions[projection.name] = int(rows.get(projection.name, 0))
            if projection.name in self._away:
                self._applied[projection.name] = _AWAY  # a helper is writing it: hands off
                continue
            projection.load(self.db)
            self._applied[projection.name] = self._positions[projection.name]

    @property
    def position(self) -> int:
        return min(self._positions.values(), default=0)

    def position_of(self, name: str) -> int:
        return self._positions[name]

    # -- one batch, in three steps --------------------------------------------------
    def _read(self, after: int) -> Read:
        """The next batch, decoded here, off the apply thread (decompression releases the
        GIL). Events no read model handles (uniqueness claims, say) are not decoded at all."""
        notifications = self._fetch(after, self.batch_size)
        if not notifications:
            return Read(0, 0, 0, [])
        to_event = self._to_event
        wanted = self._wanted
        narrowing = self._narrowing
        events = []
        for n in notifications:
            needed = wanted.get(n.topic)
            if needed is None:
                needed = wanted[n.topic] = self._handled(n.topic)
            if needed and (narrowing is None or any(w(n.originator_id) for w in narrowing)):
                events.append((n.id, to_event(n)))
        read = Read(notifications[0].id, notifications[-1].id, len(notifications), events)
        if self._prefetching:
            if self._ahead is None:
                self._prefetch(events)
            else:  # beside the decoding of the next batch; `_apply` waits for it
                read.prefetched = self._ahead.submit(self._prefetch, events)
        return read

    def _prefetch(self, events: list[tuple[int, Any]]) -> None:
        for projection in self._prefetching:
            projection.prefetch(events)

    def _handled(self, topic: str) -> bool:
        try:
            cls = resolve_topic(topic)
        except Exception:  # noqa: BLE001 - decoding will say what is wrong with it
            return True
        return any(p.handler_for(cls) is not None for p in self.projections)

    def _apply(self, read: Read) -> Batch:
        """Apply in memory and take the rows to write; nothing is written yet."""
        if read.prefetched is not None:
            read.prefetched.result()
        last = read.last
        applied = self._applied
        moved = [p for p in self.projections if applied[p.name] < last]
        whole = [p for p in moved if applied[p.name] < read.first]  # the usual case: all
        part = [p for p in moved if applied[p.name] >= read.first]
        handlers: dict[type[Any], list[Handler]] = {}  # per event class, of `whole`
        for position, event in read.events:
            cls = type(event)
            found = handlers.get(cls)
            if found is None:
                found = handlers[cls] = [h for p in whole if (h := p.handler_for(cls)) is not None]
            for handler in found:
                handler(event, position)
            for projection in part:
                if position > applied[projection.name]:
                    projection.apply(event, position)
        writes = RecordedWrites()
        for projection in moved:
            projection.flush(writes)
        # positions first: the tracking rows are locked from the start of the transaction, and
        # a batch someone else has applied stops before any of its rows (see ADVANCE)
        writes.calls.insert(0, ("advance", ([(p.name, applied[p.name], last) for p in moved],)))
        for projection in moved:
            applied[projection.name] = last
        return Batch(writes, moved, last, read.size)

    def _write(self, batch: Batch) -> None:
        with self.db.transaction() as tx:
            write_batch(tx, batch.writes)

    def _committed(self, batch: Batch) -> None:
        """The batch is in the tables: run the hooks, then publish its positions (even if a
        hook failed: the rows are committed whatever a listener thinks of them)."""
        try:
            for projection in batch.moved:
                projection.after_commit()  # before waking readers: the index and the trust
                # directory must reflect what a waiting HTTP request just wrote
        finally:
            with self._cond:
                for projection in batch.moved:
                    self._positions[projection.name] = batch.last
                self.processed += batch.size
                self._cond.notify_all()

    def write_in(self, tx: Tx, read: Read) -> None:
        """Apply events handed in (not read from the log: a restore's, see expect) and write
        their rows and positions in the caller's transaction."""
        with self._lock:
            write_batch(tx, self._apply(read).writes)

    def fed_by_restore(self) -> None:
        """The events applied from here on are a restore's, handed in (write_in): see
        ViewProjection.fed_by_restore."""
        for projection in self.projections:
            projection.fed_by_restore()

    def run_once(self) -> int:
        """Process one batch; returns how many notifications were read."""
        with self._lock:
            if self._stale:
                self._reload()
                self._stale = False
            read = self._read(min(self._applied.values(), default=0))
            if not read.size:
                return 0
            try:
                batch = self._apply(read)
                self._write(batch)
            except BaseException:
                self._reload()
                raise
            self._committed(batch)
            return batch.size

    def catch_up(self, stop: threading.Event | None = None) -> int:
        """Process every batch there is (or until `stop` is set), in a read/apply/write pipeline.
        Where another process moved a read model first, carry on from where it left it."""
        for attempt in range(MOVED_ELSEWHERE_RETRIES):
            try:
                return self._catch_up(stop)
            except MovedElsewhere as exc:
                if attempt == MOVED_ELSEWHERE_RETRIES - 1:
                    raise
                log.info("%s; reloaded, carrying on", exc)
        return 0

    def _catch_up(self, stop: threading.Event | None) -> int:
        with self._lock:
            if self._stale:
                self._reload()
                self._stale = False
            self._finish_feed(stop)
            empty = self._empty_and_far_behind_ones()
            if empty:
                return self._bulk(empty, stop)
            return self._pipeline(stop)

    def follow_to_end(self, stop: threading.Event | None = None) -> int:
        """A helper process's catch-up: the plain pipeline, no bulk set-up of its own."""
        with self._lock:
            return self._pipeline(stop)

    def _bulk(self, among: Sequence[ViewProjection], stop: threading.Event | None) -> int:
        """Filling read models from zero. With a helper process (PostgreSQL), the read models
        it takes fill there, on the other core, while the rest fill here; afterwards this
        runner takes them back at whatever position the helper committed, and the pipeline
        that follows catches them up from there (so a helper that failed, or never started,
        only costs time). Indexes: see _indexes_built_at_the_end, for the helper's read
        models too (with the audit trail split so that both processes are busy to the end,
        keeping its indexes live cost ~5 s more at 1M than two builds side by side after)."""
        helped = [p.name for p in among if self.helpers and p.name in self.helpers.names]
        with self._indexes_built_at_the_end(among):
            total = self._with_helper(helped, stop) + self._pipeline(stop)
            self._finish_feed(stop)  # a restore's feed: its read models come back
            return total

    def _with_helper(self, names: list[str], stop: threading.Event | None) -> int:
        if self.helpers is None or not names:
            return 0
        try:
            run = self.helpers.start(names, lambda: self._split_for_helper(names))
        except Exception:  # noqa: BLE001 - the read models still fill, in this process
            log.exception("could not start a catch-up helper; catching up in this process")
            return 0
        self._away.update(names)
        for name in names:
            self._applied[name] = _AWAY
        ended = False
        try:
            total = self._pipeline(stop)
            if not run.wait(stop):
                log.warning("catch-up helper did not finish %s; continuing here", names)
            ended = True
            return total
        finally:
            if not ended:  # this catch-up failed: end the helper before taking them back
                run.end()
            self._away.difference_update(names)
            self._reload(names)

    def _split_for_helper(self, names: list[str]) -> None:
        """Read models kept in shares (the audit trail) re-deal their entities before a helper
        takes one share: once per group, before the helper reads its split."""
        groups = {_group(p) for p in self.projections if p.name in names}
        first: dict[str, ViewProjection] = {}  # one member per group deals for all of it
        for projection in self.projections:
            if _group(projection) in groups:
                first.setdefault(_group(projection), projection)
        try:
            with self.db.transaction() as tx:
                for projection in first.values():
                    projection.split_for_helper(tx, self._bucket_counts)
        except Exception:  # noqa: BLE001 - the split in place still holds; only balance suffers
            log.exception("could not re-split read models for a helper; keeping the split")
        finally:  # what is committed, as the helper will read it
            self._reload([p.name for p in self.projections if _group(p) in groups])

    def _pipeline(self, stop: threading.Event | None) -> int:
        with self._lock, fewer_young_collections():
            self._build_missing_indexes()  # a bulk load whose index build failed
            return self._batches(stop)

    def _batches(self, stop: threading.Event | None) -> int:
        total = 0
        with self._lock:
            if self._io is None:
                self._io = ThreadPoolExecutor(2, thread_name_prefix="projections-io")
                self._ahead = ThreadPoolExecutor(1, thread_name_prefix="projections-ahead")
            io = self._io
            writing: tuple[Future[None], Batch] | None = None
            try:
                reading = io.submit(self._read, min(self._applied.values(), default=0))
                while (read := reading.result()).size and not (stop and stop.is_set()):
                    reading = io.submit(self._read, read.last)
                    batch = self._apply(read)
                    if writing is not None:
                        done, writing = writing, None  # finished once, whatever happens
                        total += self._finish(*done)
                    writing = (io.submit(self._write, batch), batch)
                if writing is not None:
                    done, writing = writing, None
                    total += self._finish(*done)
            except BaseException:
                # memory may hold a batch applied but never written: back to the tables
                try:
                    if writing is not None and succeeded(writing[0]):
                        self._committed(writing[1])  # it is in the tables: let readers know
                finally:
                    self._reload()
                raise
        return total

    def _finish(self, writing: Future[None], batch: Batch) -> int:
        writing.result()
        self._committed(batch)
        return batch.size

    def rebuild(self, names: Sequence[str] | None = None) -> int:
        """Drop the named (default: all) read models and replay the whole log into them. A
        name can be a group's (audit): the read models sharing tables go together."""
        named = {
            _group(p) for p in self.projections if names is None or {p.name, _group(p)} & set(names)
        }
        chosen = [p for p in self.projections if _group(p) in named]
        with self._lock:
            with self.db.transaction() as tx:
                for projection in chosen:
                    projection.reset(tx)
                    tx.execute("DELETE FROM projection_tracking WHERE name = ?", (projection.name,))
            self._reload()
            return self._bulk(chosen, None)

    @contextlib.contextmanager
    def _indexes_built_at_the_end(self, projections: Sequence[ViewProjection]) -> Iterator[None]:
        """Filling read models from zero: secondary indexes are dropped first and built once
        at the end, several times cheaper than keeping them up to date row by row. Indexes a
        projection reads while catching up (`live_indexes`) stay. If the build fails, the
        next catch-up tries again; if the process dies, the schema brings them back."""
        indexes = self._drop_indexes(projections)
        self._missing_indexes = [s for s in self._missing_indexes if s not in indexes]  # below
        try:
            yield
        finally:
            self._missing_indexes.extend(indexes)
            self._build_missing_indexes()

    def _drop_indexes(self, projections: Sequence[ViewProjection]) -> list[str]:
        """Drop the read models' secondary indexes (not their live ones); returns the
        statements that build them again."""
        indexes = list(
            dict.fromkeys(  # once each: read models sharing tables (audit) share indexes too
                statement
                for p in projections
                for statement in p.schema()
                if statement.startswith(_SECONDARY_INDEX)
                and statement.split()[5] not in p.live_indexes
            )
        )
        with self.db.transaction() as tx:
            for statement in indexes:
                tx.execute(f"DROP INDEX IF EXISTS {statement.split()[5]}")
        return indexes

    def build_indexes(self, statements: Sequence[str]) -> bool:
        """Build these indexes now (see _build_missing_indexes); True if all were built."""
        with self._lock:
            self._missing_indexes.extend(statements)
            self._build_missing_indexes()
            return not self._missing_indexes

    def _build_missing_indexes(self) -> None:
        """Each index in its own transaction; on PostgreSQL two at a time (two sessions, two
        cores: the audit trail's four indexes at 1M rows take ~11 s one after the other).
        An index that fails stays missing (logged); the next catch-up tries it again."""
        missing, self._missing_indexes = list(dict.fromkeys(self._missing_indexes)), []
        if not missing:
            return
        built = [False] * len(missing)
        try:
            with ThreadPoolExecutor(
                2 if self.db.dialect == "postgres" else 1, thread_name_prefix="index-build"
            ) as pool:
                built = list(pool.map(self._build_index, missing))
        finally:
            self._missing_indexes = [s for s, ok in zip(missing, built, strict=True) if not ok]

    def _build_index(self, statement: str) -> bool:
        try:
            with self.db.transaction() as tx:
                tx.execute(statement)
        except Exception:  # never hide the catch-up's own error; the next one retries
            log.exception("could not build a read-model index; will retry: %s", statement)
            return False
        return True

    def _empty_and_far_behind_ones(self) -> list[ViewProjection]:
        """The read models still empty, if a long log is behind them: all of them on a first
        start or after a restore into a new store; the audit trail alone after a restore
        whose feed filled everything but it (a helper that failed)."""
        empty = [
            p for p in self.projections if p.name not in self._away and not self._applied[p.name]
        ]
        if not empty or int(self.app.recorder.max_notification_id() or 0) < self.bulk_from_zero:
            return []
        return empty

    def _empty_and_far_behind(self, coming: int = 0) -> bool:
        """Every read model empty and a long log to read (counting `coming` events about to
        be appended): a first start on an existing store, or the catch-up after restoring
        into a new one."""
        if any(v for name, v in self._applied.items() if name not in self._away):
            return False
        head = self.app.recorder.max_notification_id() or 0
        return int(head) + coming >= self.bulk_from_zero

    def expect(self, events: int) -> RestoreFeed | None:
        """See ProjectionSync.expect. When those events will make a bulk catch-up from zero
        with a helper, the read models fill from the restore's own events as they are
        written (see RestoreFeedRun): the helper takes its read models' whole group (the
        audit trail, both shares) on the other core, and this process the rest, from the
        states the restore has already decoded. Nothing is read back from the event store,
        and nothing is decoded twice."""
        if self.helpers is None or not self._empty_and_far_behind(events):
            return None
        with self._lock:
            if self._feed is not None or not self._empty_and_far_behind(events):
                return None
            helped = {_group(p) for p in self.projections if p.name in self.helpers.names}
            chosen = [p for p in self.projections if _group(p) in helped]
            names = [p.name for p in chosen]
            indexes: list[str] = []
            try:
                indexes = self._drop_indexes(chosen)  # empty tables: instant
                run = self.helpers.feed(names, indexes)
            except Exception:  # noqa: BLE001 - the read models still fill, after the restore
                log.exception("could not start a helper for the restore's read models")
                self._missing_indexes.extend(indexes)
                return None
            feed = RestoreFeedRun(self, run, event_maker(self.app.mapper))
            self._feed = (feed, names, indexes)
            self._away.update(names)
            for name in names:
                self._applied[name] = _AWAY
            return feed

    def _finish_feed(self, stop: threading.Event | None) -> None:
        """Take back the read models a restore's feed gave its helper, once the restore is
        done with the feed (waiting for the helper to end then): their positions are what it
        committed (nothing, if the restore or the helper failed); indexes it did not build
        are built on the next catch-up. Never waits while the restore still runs: its
        helper waits for the restore."""
        if self._feed is None:
            return
        feed, names, indexes = self._feed
        if not feed.closed:
            return
        try:
            if not feed.run.wait(stop):
                log.warning("the restore's read-model helper did not finish %s", names)
        finally:
            self._feed = None
            self._away.difference_update(names)
            self._missing_indexes.extend(indexes)  # IF NOT EXISTS: the helper's stay as they are
            self._reload(names)

    # -- a restore's own read models (see RestoreFeedRun) ------------------------------
    def _feed_begin(self, base: int) -> Tx | None:
        """Called by the restore's thread, the event store locked: this process's read
        models must be exactly at `base` (a fresh store's are); the runner's lock is held
        until _feed_end. Returns the transaction they fill in, or None (then they catch up
        after the restore, as usual)."""
        if not self._lock.acquire(timeout=FEED_LOCK_SECONDS):
            log.warning("restore: the projection runner is busy; read models catch up after")
            return None
        try:
            here = [p for p in self.projections if p.name not in self._away]
            if any(self._applied[p.name] != base for p in here):
                self._lock.release()
                return None
            self._missing_indexes.extend(self._drop_indexes(here))
            for projection in here:
                projection.fed_by_restore()
            context = self.db.transaction()
            tx: Tx = context.__enter__()
            self._feed_tx = (context, tx)
            return tx
        except BaseException:
            try:
                for projection in self.projections:
                    projection.fed_by_restore_end()
                self._reload_or_later()
            finally:
                self._lock.release()
            raise

    def _reload_or_later(self) -> None:
        """_reload, or if the tables cannot be read now, on the next catch-up (before it
        reads anything: memory may hold what was never committed)."""
        try:
            self._reload()
        except Exception:
            self._stale = True
            raise

    def _feed_apply(self, read: Read) -> None:
        assert self._feed_tx is not None
        if self._prefetching:
            self._prefetch(read.events)
        batch = self._apply(read)
        write_batch(self._feed_tx[1], batch.writes)
        self._feed_moved.update(p.name for p in batch.moved)
        self._feed_last = batch.last
        self._feed_size += batch.size
        self.fed += batch.size

    def _feed_end(self, commit: bool) -> None:
        """Commit (after the restore's own commit) or roll back, and let the runner go."""
        context, _ = self._feed_tx or (None, None)
        self._feed_tx = None
        try:
            if context is not None:
                if commit:
                    context.__exit__(None, None, None)
                else:
                    context.__exit__(RuntimeError, RuntimeError("the restore failed"), None)
        except BaseException:
            commit = False
            raise
        finally:
            try:
                for projection in self.projections:
                    projection.fed_by_restore_end()
                moved = [p for p in self.projections if p.name in self._feed_moved]
                if not commit:
                    self._reload_or_later()  # rolled back: in-memory state from the tables
                elif moved:
                    batch = Batch(RecordedWrites(), moved, self._feed_last, self._feed_size)
                    self._committed(batch)
                    self._build_missing_indexes()
            finally:
                self._feed_moved, self._feed_last, self._feed_size = set(), 0, 0
                self._lock.release()

    # -- background ---------------------------------------------------------
    def poke(self, _position: int = 0) -> None:
        self._wake.set()

    def wait(self, position: int, timeout: float = 5.0) -> None:
        """Read-your-writes: block until every projection has processed `position`."""
        if self._thread is None:
            while self.position < position and self.catch_up():
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
        if self.helpers is not None:
            self.helpers.close()
        with self._lock:
            if self._feed is not None:
                self._feed[0].run.end()
                self._feed[0].closed = True
                self._finish_feed(None)
            if self._io is not None:
                self._io.shutdown(wait=True)
                self._io = None
            if self._ahead is not None:
                self._ahead.shutdown(wait=True)
                self._ahead = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.catch_up(self._stop)
                self.error = None
            except Exception as exc:  # keep running; the next poll retries the batch
                log.exception("projection batch failed")
                self.error = exc
            self._wake.wait(self.poll_interval)
            self._wake.clear()


class RestoreFeedRun:
    """A restore's events, applied as they are written (application.ports.RestoreFeed).

    The helper process gets every event for its read models (the audit trail), this process
    applies its own read models to the events the restore has already decoded, each in ONE
    transaction of its own that commits only after the restore's (commit), never after
    abort. If either side fails or cannot start, its read models stay where they were and
    catch up from the event store after the restore: a feed only ever saves time."""

    def __init__(self, runner: ProjectionRunner, run: FeedRun, make_event: Any) -> None:
        self.runner = runner
        self.run = run
        self.make_event = make_event
        self.closed = False  # the restore is done with it (committed or not)
        self.position = 0
        self._here = False  # this process's read models are being filled
        self._wanted: dict[str, bool] = {}

    def begin(self, base: int) -> None:
        self.position = base
        self.run.begin(base)
        try:
            self._here = self.runner._feed_begin(base) is not None
        except Exception:  # noqa: BLE001 - they catch up after the restore
            log.exception("restore: this process's read models catch up after it")

    def send(self, events: Sequence[tuple[UUID, int, str, bytes, Any]]) -> None:
        first = self.position + 1
        last = self.position = self.position + len(events)
        self.run.send_share(
            last,
            [
                (position, e[0].int, e[1], e[2], e[3])
                for position, e in enumerate(events, start=first)
            ],
        )
        if not self._here:
            return
        try:
            wanted = self._wanted
            make = self.make_event
            mine: list[tuple[int, Any]] = []
            for position, (oid, version, topic, stored, state) in enumerate(events, start=first):
                needed = wanted.get(topic)
                if needed is None:
                    needed = wanted[topic] = self.runner._handled(topic)
                if needed:
                    mine.append((position, make(position, oid, version, topic, stored, state)))
            self.runner._feed_apply(Read(first, last, len(events), mine))
        except Exception:  # noqa: BLE001 - they catch up after the restore
            log.exception("restore: this process's read models catch up after it")
            self._end_here(commit=False)

    def commit(self) -> None:
        """The restore has committed: so do both sides. Never raises (the restore's events
        are in): a side that cannot commit catches up after."""
        self.closed = True
        self.run.commit_share()
        self._end_here(commit=True)

    def abort(self) -> None:
        self.closed = True
        self.run.abort()
        self._end_here(commit=False)

    def _end_here(self, commit: bool) -> None:
        """This process's side: commit or roll back, and never raise into the restore (its
        own outcome is decided by then; these read models catch up after it if need be)."""
        if not self._here:
            return
        self._here = False
        try:
            self.runner._feed_end(commit)
        except Exception:  # noqa: BLE001 - see above
            log.exception("restore: this process's read models catch up after it")
