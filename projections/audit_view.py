"""Audit trail queries: filters, keyset pages and a flat-memory row stream for exports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from domain.errors import InvalidInput
from projections.db import ViewDb

AUDIT_FIELDS = (
    "position",
    "occurred_at",
    "org_uid",
    "entity_type",
    "entity_id",
    "entity_key",
    "entity_version",
    "event_type",
    "actor_kind",
    "actor",
    "actor_owner",
    "request_id",
    "source_ip",
    "changes",
)
EXPORT_PAGE = 1000


def utc_text(moment: datetime) -> str:
    """Fixed-width UTC text, so that string order is time order in every database."""
    if moment.tzinfo is UTC:  # event timestamps: the cheap path
        return moment.isoformat(timespec="microseconds")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=UTC).isoformat(timespec="microseconds")


def parse_instant(value: str, what: str = "time") -> datetime:
    """ISO 8601 (a date alone means midnight; no offset means UTC); raises InvalidInput."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except (ValueError, AttributeError):
        raise InvalidInput(f"{what} is not an ISO 8601 time: {str(value)[:40]!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Every filter is optional; `since` is inclusive and `until` exclusive (ISO 8601)."""

    org_uid: str | None = None
    entity_id: str | None = None
    entity_type: str | None = None
    entity_key: str | None = None
    actor: str | None = None
    actor_kind: str | None = None
    actor_owner: str | None = None
    request_id: str | None = None
    event_type: str | None = None  # one name, or several separated by commas
    since: str | None = None
    until: str | None = None

    def where(self) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        for column in (
            "org_uid",
            "entity_id",
            "entity_type",
            "entity_key",
            "actor",
            "actor_kind",
            "actor_owner",
            "request_id",
        ):
            value = getattr(self, column)
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if self.event_type:
            names = [n.strip() for n in self.event_type.split(",") if n.strip()]
            where.append(f"event_type IN ({', '.join('?' for _ in names)})")
            params.extend(names)
        if self.since:
            where.append("occurred_at >= ?")
            params.append(utc_text(parse_instant(self.since, "since")))
        if self.until:
            where.append("occurred_at < ?")
            params.append(utc_text(parse_instant(self.until, "until")))
        return where, params


def _item(row: tuple[Any, ...]) -> dict[str, Any]:
    item = dict(zip(AUDIT_FIELDS, row, strict=True))
    item["changes"] = json.loads(item["changes"])
    return item


class AuditView:
    """Reads audit_trail (positions are this store's; a restore renumbers them)."""

    def __init__(self, db: ViewDb) -> None:
        self.db = db

    def _page(
        self, flt: AuditFilter, newest_first: bool, limit: int, cursor: int | None
    ) -> list[tuple[Any, ...]]:
        where, params = flt.where()
        if cursor is not None:
            where.append("position < ?" if newest_first else "position > ?")
            params.append(cursor)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "DESC" if newest_first else "ASC"
        return self.db.query(
            f"SELECT {', '.join(AUDIT_FIELDS)} FROM audit_trail {clause}"  # noqa: S608
            f" ORDER BY position {order} LIMIT ?",
            (*params, limit),
        )

    def query(
        self,
        org_uid: str | None,
        *,
        newest_first: bool = True,
        limit: int = 100,
        cursor: int | None = None,
        **filters: str | None,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """One page and the cursor of the next (None at the end). Filters: see AuditFilter.

        Raises InvalidInput for an unparseable time; TypeError for an unknown filter name.
        """
        flt = AuditFilter(org_uid=org_uid, **filters)
        rows = self._page(flt, newest_first, limit + 1, cursor)
        items = [_item(row) for row in rows[:limit]]
        next_cursor = items[-1]["position"] if len(rows) > limit else None
        return items, next_cursor

    def stream(self, flt: AuditFilter, newest_first: bool = False) -> Iterator[dict[str, Any]]:
        """Every matching row, fetched a page at a time (memory stays flat)."""
        cursor: int | None = None
        while True:
            rows = self._page(flt, newest_first, EXPORT_PAGE, cursor)
            for row in rows:
                yield _item(row)
            if len(rows) < EXPORT_PAGE:
                return
            cursor = int(rows[-1][0])
