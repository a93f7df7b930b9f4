"""Bulk access to the event store for backup and restore, one adapter per persistence module.

Reads stream a range of positions in pages (PostgreSQL: binary tuples with the id as text and
no row objects, pages of 10,000: 2-5x the rows/s of `select_notifications`' dict rows measured
here, and a text id skips a UUID object per row; others: `select_notifications`).

Restore streams a file of any size into the event store and must never leave part of it
behind. The library's `insert_events` is one transaction per call, so a large restore would
either hold every event in memory or commit batch by batch. These adapters open ONE
transaction on the recorder's own datastore and feed it batch after batch:

- PostgreSQL: the recorder's `LOCK TABLE ... IN EXCLUSIVE MODE` (commit order = position
  order, as for every other writer; other writers wait, up to their lock timeout), NOTIFY,
  then `COPY ... FROM STDIN (FORMAT BINARY)`. Positions are known before the first row:
  the first is drawn from the table's sequence, the rest follow it in copy order (given
  explicitly, with the sequence set past the last at the end; the lock keeps every other
  writer out meanwhile). A failure anywhere rolls the whole transaction back (a rolled-back
  restore leaves a gap in the sequence, as any rolled-back insert does). ANALYZE follows.
- SQLite: one write transaction with executemany per batch (rowid = position).
- In-memory (popo): batches are gathered and inserted with one `insert_events` call, which
  checks every (id, version) before appending any (the store is in memory anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

log = logging.getLogger(__name__)

CHUNK = 1000
PAGE = 5000
PG_PAGE = 10_000
Row = tuple[int, str, int, str, bytes]  # see application.backup.EventStoreBulk


def _paged(recorder: Any, after: int, upto: int) -> Iterator[list[Row]]:
    position = after
    while position < upto:
        page = recorder.select_notifications(
            start=position, limit=PAGE, stop=upto, inclusive_of_start=False
        )
        if not page:
            return
        yield [
            (n.id, str(UUID(str(n.originator_id))), n.originator_version, n.topic, n.state)
            for n in page
        ]
        position = page[-1].id


class PostgresBulkStore:
    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder

    def _table(self) -> Any:
        from psycopg.sql import SQL, Identifier

        return SQL("{}.{}").format(
            Identifier(self.recorder.datastore.schema), Identifier(self.recorder.events_table_name)
        )

    def pages(self, after: int, upto: int) -> Iterator[list[Row]]:
        from psycopg.rows import tuple_row
        from psycopg.sql import SQL

        # Pages are position ranges, not LIMITs: on a freshly bulk-loaded table (no statistics
        # yet) PostgreSQL plans "> n ORDER BY ... LIMIT" as a sort of every later row, which
        # made each page cost O(rows after it); a bounded range sorts at most a page.
        statement = SQL(
            "SELECT notification_id, originator_id::text, originator_version, topic, state FROM {}"
            " WHERE notification_id > %s AND notification_id <= %s ORDER BY notification_id"
        ).format(self._table())
        position = after
        while position < upto:
            end = min(position + PG_PAGE, upto)
            with self.recorder.datastore.get_connection() as conn:
                curs = conn.cursor(row_factory=tuple_row, binary=True)
                rows: list[Row] = curs.execute(statement, (position, end)).fetchall()
            if rows:
                yield rows
            position = end

    def existing(self, ids: Iterable[UUID]) -> set[UUID]:
        from psycopg.sql import SQL

        wanted = list(ids)
        found: set[UUID] = set()
        statement = SQL("SELECT DISTINCT originator_id FROM {} WHERE originator_id = ANY(%s)")
        with self.recorder.datastore.get_connection() as conn:
            for start in range(0, len(wanted), CHUNK):
                rows = conn.execute(
                    statement.format(self._table()), (wanted[start : start + CHUNK],)
                )
                found.update(UUID(str(row["originator_id"])) for row in rows.fetchall())
        return found

    def insert_atomically(
        self,
        batches: Iterable[Sequence[StoredEvent]],
        started: Callable[[int], None] | None = None,
    ) -> int:
        from psycopg.rows import tuple_row
        from psycopg.sql import SQL, Identifier, Literal

        count = 0
        copy_sql = SQL(
            "COPY {} (notification_id, originator_id, originator_version, topic, state)"
            " FROM STDIN (FORMAT BINARY)"
        ).format(self._table())
        with self.recorder.datastore.get_connection() as conn, conn.transaction():
            with conn.cursor(row_factory=tuple_row) as curs:
                for statement in self.recorder.lock_table_statements:
                    curs.execute(statement)
                curs.execute(SQL("NOTIFY {}").format(Identifier(self.recorder.channel_name)))
                # positions: taken from the table's sequence once, then given explicitly, so
                # they are known before the first row (started) and contiguous in copy order
                sequence = Literal(self._table().as_string(conn))
                curs.execute(
                    SQL("SELECT pg_get_serial_sequence({}, 'notification_id')").format(sequence)
                )
                sequence_name = curs.fetchone()[0]
                curs.execute("SELECT nextval(%s::regclass)", (sequence_name,))
                first = int(curs.fetchone()[0])
                if started is not None:
                    started(first - 1)
                with curs.copy(copy_sql) as copy:
                    copy.set_types(["int8", "uuid", "int8", "text", "bytea"])
                    for batch in batches:
                        position = first + count
                        for e in batch:
                            copy.write_row(
                                (position, e.originator_id, e.originator_version, e.topic, e.state)
                            )
                            position += 1
                        count += len(batch)
                if count > 1:  # the sequence goes on after the last position taken
                    curs.execute(
                        "SELECT setval(%s::regclass, %s)", (sequence_name, first + count - 1)
                    )
        try:  # committed: from here on nothing may fail the restore
            with self.recorder.datastore.get_connection() as conn:
                # statistics for the new rows now: readers page with "> n ORDER BY ... LIMIT",
                # which PostgreSQL plans as a full sort until it knows the table (O(n^2))
                conn.execute(SQL("ANALYZE {}").format(self._table()))
        except Exception:  # noqa: BLE001 - autovacuum analyzes it later
            log.exception("restore: ANALYZE of the event table failed (the events are in)")
        return count


class SqliteBulkStore:
    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder

    def pages(self, after: int, upto: int) -> Iterator[list[Row]]:
        return _paged(self.recorder, after, upto)

    def existing(self, ids: Iterable[UUID]) -> set[UUID]:
        wanted = [i.hex for i in ids]
        found: set[UUID] = set()
        table = self.recorder.events_table_name
        with self.recorder.datastore.transaction(commit=False) as c:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                c.execute(
                    f"SELECT DISTINCT originator_id FROM {table}"  # noqa: S608 - library's name
                    f" WHERE originator_id IN ({', '.join('?' for _ in chunk)})",
                    chunk,
                )
                found.update(UUID(row["originator_id"]) for row in c.fetchall())
        return found

    def insert_atomically(
        self,
        batches: Iterable[Sequence[StoredEvent]],
        started: Callable[[int], None] | None = None,
    ) -> int:
        count = 0  # (positions are not known ahead here: `started` is not called)
        with self.recorder.datastore.transaction(commit=True) as c:
            for batch in batches:
                c.executemany(
                    self.recorder.insert_events_statement,
                    [
                        (_hex(e.originator_id), e.originator_version, e.topic, e.state)
                        for e in batch
                    ],
                )
                count += len(batch)
        return count


class MemoryBulkStore:
    """Any other recorder (in-memory): one insert_events call with every event (not flat)."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder

    def pages(self, after: int, upto: int) -> Iterator[list[Row]]:
        return _paged(self.recorder, after, upto)

    def existing(self, ids: Iterable[UUID]) -> set[UUID]:
        return {i for i in ids if self.recorder.select_events(i, limit=1)}

    def insert_atomically(
        self,
        batches: Iterable[Sequence[StoredEvent]],
        started: Callable[[int], None] | None = None,
    ) -> int:
        events = [e for batch in batches for e in batch]
        if events:
            self.recorder.insert_events(events)
        return len(events)


def _hex(originator_id: UUID | str) -> str:
    return originator_id.hex if isinstance(originator_id, UUID) else originator_id


def bulk_store_for(recorder: Any) -> PostgresBulkStore | SqliteBulkStore | MemoryBulkStore:
    """The writer matching the application's recorder."""
    from eventsourcing.postgres import PostgresApplicationRecorder
    from eventsourcing.sqlite import SQLiteApplicationRecorder

    if isinstance(recorder, PostgresApplicationRecorder):
        return PostgresBulkStore(recorder)
    if isinstance(recorder, SQLiteApplicationRecorder):
        return SqliteBulkStore(recorder)
    return MemoryBulkStore(recorder)
