"""Reading the event store's notification log in batches, for the projection runner.

On PostgreSQL the batch is read with binary tuple rows straight into a light record (what
the library's `select_notifications` returns as frozen dataclasses built from dict rows costs
several times more per row, measured here). Elsewhere the library's method is used as is.
Either way: notifications after `after`, in position order, at most `limit`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple
from uuid import UUID


class FeedItem(NamedTuple):
    """The fields of a notification that mapping it to a domain event reads."""

    id: int
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes


Fetch = Callable[[int, int], list[Any]]


def feed_for(recorder: Any) -> Fetch:
    datastore = getattr(recorder, "datastore", None)
    if (
        datastore is None
        or not hasattr(datastore, "schema")
        or "postgres" not in type(recorder).__module__
    ):
        return lambda after, limit: list(
            recorder.select_notifications(start=after, limit=limit, inclusive_of_start=False)
        )
    from psycopg.sql import SQL, Identifier

    statement = SQL(
        "SELECT notification_id, originator_id, originator_version, topic, state FROM {}.{}"
        " WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
    ).format(Identifier(datastore.schema), Identifier(recorder.events_table_name))

    def rows(_cursor: Any) -> Callable[[Any], FeedItem]:
        return FeedItem._make

    def fetch(after: int, limit: int) -> list[Any]:
        with datastore.get_connection() as conn:
            cursor = conn.cursor(row_factory=rows, binary=True)
            found: list[Any] = cursor.execute(statement, (after, limit), prepare=True).fetchall()
            return found

    return fetch


def bucket_counts_for(recorder: Any) -> Callable[[int], list[int] | None]:
    """Events in the log per entity bucket (the low 32 bits of the id, mod n): on PostgreSQL
    one query counting per entity first, so the bucket is worked out once per entity rather
    than per event (0.11 s vs 0.37 s at 1M events of a few entities here); None elsewhere."""
    datastore = getattr(recorder, "datastore", None)
    if (
        datastore is None
        or not hasattr(datastore, "schema")
        or "postgres" not in type(recorder).__module__
    ):
        return lambda n: None
    from psycopg.sql import SQL, Identifier

    statement = SQL(
        "SELECT (('x' || right(originator_id::text, 8))::bit(32)::bigint %% %s)::int AS b,"
        " sum(events)::bigint FROM (SELECT originator_id, count(*) AS events FROM {}.{}"
        " GROUP BY originator_id) AS entities GROUP BY b"
    ).format(Identifier(datastore.schema), Identifier(recorder.events_table_name))

    def count(n: int) -> list[int] | None:
        counts = [0] * n
        from psycopg.rows import tuple_row

        with datastore.get_connection() as conn:
            cursor = conn.cursor(row_factory=tuple_row)
            for b, events in cursor.execute(statement, (n,)).fetchall():
                counts[b] = events
        return counts

    return count
