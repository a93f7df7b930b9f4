"""Users and API keys of each organization (never secrets or their hashes)."""

from __future__ import annotations

from typing import Any

from projections.base import Handler, ViewProjection
from projections.db import Tx, ViewDb
from projections.statements import Pending


class PrincipalsProjection(ViewProjection):
    name = "principals"
    tables = ("users", "api_keys")

    def __init__(self) -> None:
        self._pending = Pending()

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, org_uid TEXT NOT NULL,"
            " name TEXT NOT NULL, role TEXT NOT NULL, created_at TEXT NOT NULL,"
            " deleted INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, org_uid TEXT,"
            " user_id TEXT, label TEXT NOT NULL, issued_at TEXT NOT NULL, revoked INTEGER NOT NULL)",
        ]

    def handlers(self) -> dict[str, Handler]:
        return {
            "User.Created": self._user_created,
            "User.RoleChanged": self._role_changed,
            "User.Deleted": self._user_deleted,
            "ApiKey.Issued": self._key_issued,
            "ApiKey.Revoked": self._key_revoked,
        }

    def load(self, db: ViewDb) -> None:
        self._pending.clear()

    def flush(self, tx: Tx) -> None:
        self._pending.flush(tx)

    def _user_created(self, event: Any, position: int) -> None:
        self._pending.add(
            "INSERT INTO users (user_id, org_uid, name, role, created_at, deleted)"
            " VALUES (?, ?, ?, ?, ?, 0)",
            [
                str(event.originator_id),
                event.org_uid,
                event.name,
                str(event.role),
                event.timestamp.isoformat(),
            ],
        )

    def _role_changed(self, event: Any, position: int) -> None:
        self._pending.add(
            "UPDATE users SET role = ? WHERE user_id = ?", [event.role, str(event.originator_id)]
        )

    def _user_deleted(self, event: Any, position: int) -> None:
        self._pending.add(
            "UPDATE users SET deleted = 1 WHERE user_id = ?", [str(event.originator_id)]
        )

    def _key_issued(self, event: Any, position: int) -> None:
        self._pending.add(
            "INSERT INTO api_keys (key_id, org_uid, user_id, label, issued_at, revoked)"
            " VALUES (?, ?, ?, ?, ?, 0)",
            [
                str(event.originator_id),
                event.org_uid,
                event.user_id,
                event.label,
                event.timestamp.isoformat(),
            ],
        )

    def _key_revoked(self, event: Any, position: int) -> None:
        self._pending.add(
            "UPDATE api_keys SET revoked = 1 WHERE key_id = ?", [str(event.originator_id)]
        )


class PrincipalsView:
    def __init__(self, db: ViewDb) -> None:
        self.db = db

    def users(self, org_uid: str) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT user_id, name, role, created_at FROM users WHERE org_uid = ? AND deleted = 0"
            " ORDER BY name",
            (org_uid,),
        )
        return [dict(zip(("user_id", "name", "role", "created_at"), r, strict=True)) for r in rows]

    def keys(self, org_uid: str) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT key_id, user_id, label, issued_at, revoked FROM api_keys WHERE org_uid = ?"
            " ORDER BY issued_at",
            (org_uid,),
        )
        fields = ("key_id", "user_id", "label", "issued_at", "revoked")
        return [{**dict(zip(fields, r, strict=True)), "revoked": bool(r[4])} for r in rows]
