"""Audit log: every event of every aggregate, who did it, and the fields it set."""

from __future__ import annotations

import json
from typing import Any

from projections.base import Handler, ViewProjection, event_name
from projections.db import Tx, ViewDb
from projections.statements import Pending

SKIP = {"originator_id", "originator_version", "timestamp", "originator_topic", "meta"}
HIDDEN = {"secret_hash"}  # hashes of API key secrets are not shown, even to auditors


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k != "pem"}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class AuditProjection(ViewProjection):
    name = "audit"
    tables = ("audit_log",)

    def __init__(self) -> None:
        self._pending = Pending()
        self._org_of: dict[str, str] = {}  # entity id -> org uid (later events omit it)

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS audit_log ("
            " position BIGINT PRIMARY KEY, occurred_at TEXT NOT NULL, org_uid TEXT,"
            " entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, entity_version INTEGER NOT NULL,"
            " event_type TEXT NOT NULL, actor_kind TEXT, actor TEXT, actor_owner TEXT,"
            " request_id TEXT, source_ip TEXT, changes TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS audit_log_org ON audit_log (org_uid, position)",
            "CREATE INDEX IF NOT EXISTS audit_log_entity ON audit_log (entity_id, position)",
        ]

    def handlers(self) -> dict[str, Handler]:
        return {}

    def apply(self, event: Any, position: int) -> None:
        entity_type, _, event_type = event_name(event).partition(".")
        if entity_type == "Reservation":
            return  # uniqueness bookkeeping, not an operator-visible change
        meta = getattr(event, "meta", None) or {}
        entity_id = str(event.originator_id)
        org_uid = str(event.originator_id) if entity_type == "Organization" else None
        org_uid = org_uid or getattr(event, "org_uid", None) or self._org_of.get(entity_id)
        if org_uid:
            self._org_of[entity_id] = org_uid
        changes = {
            k: _jsonable(v) for k, v in vars(event).items() if k not in SKIP and k not in HIDDEN
        }
        self._pending.add(
            "INSERT INTO audit_log (position, occurred_at, org_uid, entity_type, entity_id,"
            " entity_version, event_type, actor_kind, actor, actor_owner, request_id, source_ip,"
            " changes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                position,
                event.timestamp.isoformat(),
                org_uid,
                entity_type,
                entity_id,
                event.originator_version,
                event_type,
                meta.get("actor_kind"),
                meta.get("actor"),
                meta.get("actor_owner"),
                meta.get("request_id"),
                meta.get("source_ip"),
                json.dumps(changes),
            ],
        )

    def load(self, db: ViewDb) -> None:
        self._pending.clear()
        self._org_of = dict(
            db.query(
                "SELECT entity_id, MIN(org_uid) FROM audit_log WHERE org_uid IS NOT NULL"
                " GROUP BY entity_id"
            )
        )

    def flush(self, tx: Tx) -> None:
        self._pending.flush(tx)


AUDIT_FIELDS = (
    "position",
    "occurred_at",
    "org_uid",
    "entity_type",
    "entity_id",
    "entity_version",
    "event_type",
    "actor_kind",
    "actor",
    "actor_owner",
    "request_id",
    "source_ip",
    "changes",
)


class AuditView:
    """Audit trail queries: by organization, entity, actor, event type and time range."""

    def __init__(self, db: ViewDb) -> None:
        self.db = db

    def query(
        self,
        org_uid: str | None,
        *,
        entity_id: str | None = None,
        entity_type: str | None = None,
        actor: str | None = None,
        event_type: str | None = None,
        since: str | None = None,
        until: str | None = None,
        newest_first: bool = True,
        limit: int = 100,
        cursor: int | None = None,
    ) -> tuple[list[dict[str, Any]], int | None]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("org_uid", org_uid),
            ("entity_id", entity_id),
            ("entity_type", entity_type),
            ("actor", actor),
            ("event_type", event_type),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since:
            where.append("occurred_at >= ?")
            params.append(since)
        if until:
            where.append("occurred_at < ?")
            params.append(until)
        if cursor is not None:
            where.append("position < ?" if newest_first else "position > ?")
            params.append(cursor)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "DESC" if newest_first else "ASC"
        rows = self.db.query(
            f"SELECT {', '.join(AUDIT_FIELDS)} FROM audit_log {clause}"  # noqa: S608
            f" ORDER BY position {order} LIMIT ?",
            (*params, limit + 1),
        )
        items = []
        for row in rows[:limit]:
            item = dict(zip(AUDIT_FIELDS, row, strict=True))
            item["changes"] = json.loads(item["changes"])
            items.append(item)
        next_cursor = items[-1]["position"] if len(rows) > limit else None
        return items, next_cursor
