"""View database: one tiny interface over SQLite (embedded, in-memory) and PostgreSQL.

SQL is written once with '?' placeholders and portable types; the PostgreSQL flavour
rewrites placeholders. One type of our own: CTEXT, text compared byte by byte (identifiers,
keys, ISO timestamps) - SQLite's TEXT already is; on PostgreSQL it becomes TEXT COLLATE "C", so
its indexes sort with memcmp instead of the database's locale. Every projection batch is one transaction (rows + tracking).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

Row = tuple[Any, ...]


class Tx(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def bulk_insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert many rows (PostgreSQL: COPY)."""
        ...

    def clear(self, table: str) -> None:
        """Remove every row (PostgreSQL: TRUNCATE, no dead rows left behind)."""
        ...

    def bulk_upsert(
        self, table: str, key: Sequence[str], columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert or replace rows by key; `columns` include the key columns."""
        ...

    def bulk_update(
        self, table: str, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Set `columns` on existing rows; each row is the column values then the key value."""
        ...


def _insert_sql(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"


def _upsert_sql(table: str, key: Sequence[str], columns: Sequence[str]) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return f"{_insert_sql(table, columns)} ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"


def _update_sql(table: str, key: str, columns: Sequence[str]) -> str:
    return f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in columns)} WHERE {key} = ?"  # noqa: S608


class ViewDb(Protocol):
    dialect: str

    def transaction(self) -> Any: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def close(self) -> None: ...


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = self._conn.execute(sql, tuple(params))
        return cur.fetchall() if cur.description else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._conn.executemany(sql, rows)

    def bulk_insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        self.executemany(_insert_sql(table, columns), rows)

    def clear(self, table: str) -> None:
        self._conn.execute(f"DELETE FROM {table}")  # noqa: S608 - SQLite truncates this itself

    def bulk_upsert(
        self, table: str, key: Sequence[str], columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        self.executemany(_upsert_sql(table, key, columns), rows)

    def bulk_update(
        self, table: str, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        self.executemany(_update_sql(table, key, columns), rows)


class SqliteViewDb:
    """One connection behind a lock (readers and the projection thread share it)."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        if path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _pg(sql: str) -> str:
    if "CTEXT" in sql:  # see the module's docstring
        sql = sql.replace(" CTEXT", ' TEXT COLLATE "C"')
    return sql.replace("?", "%s")


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = self._conn.execute(_pg(sql), tuple(params))
        return list(cur.fetchall()) if cur.description else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self._conn.cursor() as cur:
                cur.executemany(_pg(sql), [tuple(r) for r in rows])

    # Bulk paths: COPY is ~50x cheaper than one pipelined statement per row.
    SMALL = 20

    def clear(self, table: str) -> None:
        self._conn.execute(f"TRUNCATE {table}")

    def bulk_insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if len(rows) <= self.SMALL:
            self.executemany(_insert_sql(table, columns), rows)
            return
        with (
            self._conn.cursor() as cur,
            cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def _staged(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        self._n = getattr(self, "_n", 0) + 1
        staging = f"_cw_stage_{self._n}"
        cols = ", ".join(columns)
        self._conn.execute(
            f"CREATE TEMP TABLE {staging} ON COMMIT DROP AS SELECT {cols} FROM {table} WITH NO DATA"  # noqa: S608
        )
        with self._conn.cursor() as cur, cur.copy(f"COPY {staging} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return staging

    def bulk_upsert(
        self, table: str, key: Sequence[str], columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if len(rows) <= self.SMALL:
            self.executemany(_upsert_sql(table, key, columns), rows)
            return
        staging = self._staged(table, columns, rows)
        cols = ", ".join(columns)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
        self._conn.execute(
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {staging}"  # noqa: S608
            f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
        )

    def bulk_update(
        self, table: str, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if len(rows) <= self.SMALL:
            self.executemany(_update_sql(table, key, columns), rows)
            return
        staging = self._staged(table, [*columns, key], rows)
        sets = ", ".join(f"{c} = s.{c}" for c in columns)
        self._conn.execute(
            f"UPDATE {table} t SET {sets} FROM {staging} s WHERE t.{key} = s.{key}"  # noqa: S608
        )


class PostgresViewDb:
    """A small psycopg pool; views live in the event store's database (schema configurable)."""

    dialect = "postgres"

    def __init__(self, conninfo: str, schema: str = "public", max_size: int = 8) -> None:
        from psycopg_pool import ConnectionPool

        def configure(conn: Any) -> None:
            conn.execute(f'SET search_path TO "{schema}"')
            conn.commit()

        with _pg_connect(conninfo) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            conn.commit()
        self._pool = ConnectionPool(
            conninfo, min_size=1, max_size=max_size, configure=configure, open=True
        )

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._pool.connection() as conn, conn.transaction():
            yield _PgTx(conn)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._pool.connection() as conn:
            return list(conn.execute(_pg(sql), tuple(params)).fetchall())

    def close(self) -> None:
        self._pool.close()


def _pg_connect(conninfo: str) -> Any:
    import psycopg

    return psycopg.connect(conninfo)
