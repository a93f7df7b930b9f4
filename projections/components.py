"""Components and component templates read model (last-seen comes from component_activity)."""

from __future__ import annotations

from typing import Any

from projections.base import Handler, ViewProjection
from projections.db import Tx, ViewDb
from projections.statements import Pending


class ComponentsProjection(ViewProjection):
    name = "components"
    tables = ("components", "component_templates")

    def __init__(self) -> None:
        self._pending = Pending()

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS components (component_uuid TEXT PRIMARY KEY,"
            " org_uid TEXT NOT NULL, component_id TEXT NOT NULL, name TEXT NOT NULL,"
            " template_id TEXT, folder TEXT NOT NULL, registered_at TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS components_org ON components (org_uid, component_id)",
            "CREATE TABLE IF NOT EXISTS component_templates (aggregate_id TEXT PRIMARY KEY,"
            " org_uid TEXT NOT NULL, template_id TEXT NOT NULL, name TEXT NOT NULL,"
            " name_pattern TEXT NOT NULL, version INTEGER NOT NULL, deleted INTEGER NOT NULL)",
        ]

    def handlers(self) -> dict[str, Handler]:
        return {
            "Component.Registered": self._registered,
            "ComponentTemplate.Created": self._template_created,
            "ComponentTemplate.Updated": self._template_updated,
            "ComponentTemplate.Deleted": self._template_deleted,
        }

    def load(self, db: ViewDb) -> None:
        self._pending.clear()

    def flush(self, tx: Tx) -> None:
        self._pending.flush(tx)

    def _registered(self, event: Any, position: int) -> None:
        self._pending.add(
            "INSERT INTO components (component_uuid, org_uid, component_id, name, template_id,"
            " folder, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                str(event.originator_id),
                event.org_uid,
                event.component_id,
                event.name,
                event.template_id,
                event.folder,
                event.timestamp.isoformat(),
            ],
        )

    def _template_created(self, event: Any, position: int) -> None:
        self._pending.add(
            "INSERT INTO component_templates (aggregate_id, org_uid, template_id, name,"
            " name_pattern, version, deleted) VALUES (?, ?, ?, ?, ?, ?, 0)",
            [
                str(event.originator_id),
                event.org_uid,
                event.template_id,
                event.name,
                event.name_pattern,
                event.originator_version,
            ],
        )

    def _template_updated(self, event: Any, position: int) -> None:
        self._pending.add(
            "UPDATE component_templates SET name = ?, name_pattern = ?, version = ?"
            " WHERE aggregate_id = ?",
            [event.name, event.name_pattern, event.originator_version, str(event.originator_id)],
        )

    def _template_deleted(self, event: Any, position: int) -> None:
        self._pending.add(
            "UPDATE component_templates SET deleted = 1, version = ? WHERE aggregate_id = ?",
            [event.originator_version, str(event.originator_id)],
        )


class ComponentsView:
    def __init__(self, db: ViewDb) -> None:
        self.db = db

    def components(
        self, org_uid: str, limit: int = 1000, after: str | None = None
    ) -> list[dict[str, Any]]:
        """Components with their last-seen time (epoch seconds, None if never seen)."""
        where, params = "c.org_uid = ?", [org_uid]
        if after:
            where += " AND c.component_id > ?"
            params.append(after)
        sql = (
            "SELECT c.component_id, c.name, c.template_id, c.folder, c.registered_at, a.last_seen"  # noqa: S608
            " FROM components c LEFT JOIN component_activity a"
            " ON a.org_uid = c.org_uid AND a.component_id = c.component_id"
            " WHERE " + where + " ORDER BY c.component_id LIMIT ?"  # where: constant clauses
        )
        rows = self.db.query(sql, (*params, limit))
        fields = ("component_id", "name", "template_id", "folder", "registered_at", "last_seen")
        return [dict(zip(fields, r, strict=True)) for r in rows]

    def templates(self, org_uid: str) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT template_id, name, name_pattern, version FROM component_templates"
            " WHERE org_uid = ? AND deleted = 0 ORDER BY template_id",
            (org_uid,),
        )
        return [
            dict(zip(("template_id", "name", "name_pattern", "version"), r, strict=True))
            for r in rows
        ]
