"""Operations read model: operations with their schedule, runs, action packages, notifications."""

from __future__ import annotations

import json
from typing import Any

from projections.base import Handler, ViewProjection
from projections.db import Tx, ViewDb
from projections.statements import Pending

CONFIG_COLUMNS = ("name", "op_type", "folder", "recursive", "window_days", "action_package_id")


def _value(column: str, value: Any) -> Any:
    if column == "recipients":
        return json.dumps(value or [])
    return int(value) if isinstance(value, bool) else value


class OperationsProjection(ViewProjection):
    """One handler per event of Operation, ActionPackage and SystemNotification; rows are
    written in the batch transaction with the tracking position (exactly once)."""

    name = "operations"
    tables = ("ops_operations", "ops_runs", "ops_action_packages", "ops_notifications")

    def __init__(self) -> None:
        self._pending = Pending()

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS ops_operations ("
            " operation_id TEXT PRIMARY KEY, org_uid TEXT NOT NULL, name TEXT NOT NULL,"
            " op_type TEXT NOT NULL, folder TEXT NOT NULL, recursive INTEGER NOT NULL,"
            " window_days INTEGER NOT NULL, action_package_id TEXT, recipients TEXT NOT NULL,"
            " cron TEXT, timezone TEXT, schedule_enabled INTEGER NOT NULL, schedule_since TEXT,"
            " last_fire_time TEXT, version INTEGER NOT NULL, created_at TEXT NOT NULL,"
            " updated_at TEXT NOT NULL, deleted INTEGER NOT NULL)",
            "CREATE INDEX IF NOT EXISTS ops_operations_org ON ops_operations (org_uid, name)",
            "CREATE TABLE IF NOT EXISTS ops_runs ("
            " run_id TEXT PRIMARY KEY, org_uid TEXT NOT NULL, operation_id TEXT NOT NULL,"
            " run_trigger TEXT NOT NULL, fire_time TEXT NOT NULL, requested_at TEXT NOT NULL,"
            " status TEXT NOT NULL, counts TEXT NOT NULL, stage TEXT, reason TEXT,"
            " finished_at TEXT, position BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS ops_runs_operation ON ops_runs (operation_id, position)",
            "CREATE INDEX IF NOT EXISTS ops_runs_status ON ops_runs (status)",
            "CREATE TABLE IF NOT EXISTS ops_action_packages ("
            " package_id TEXT PRIMARY KEY, org_uid TEXT NOT NULL, name TEXT NOT NULL,"
            " actions TEXT NOT NULL, version INTEGER NOT NULL, created_at TEXT NOT NULL,"
            " updated_at TEXT NOT NULL, deleted INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS ops_notifications ("
            " notification_id TEXT PRIMARY KEY, org_uid TEXT NOT NULL, kind TEXT NOT NULL,"
            " severity TEXT NOT NULL, message TEXT NOT NULL, context TEXT NOT NULL,"
            " raised_at TEXT NOT NULL, acknowledged INTEGER NOT NULL, acknowledged_at TEXT,"
            " acknowledged_by TEXT, position BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS ops_notifications_org"
            " ON ops_notifications (org_uid, position)",
            # Runs page through the catalogue by certificate id (projections run in list
            # order: the catalogue's table exists by now).
            "CREATE INDEX IF NOT EXISTS ops_catalogue_run_order"
            " ON catalogue_certificates (org_uid, certificate_id)",
        ]

    def handlers(self) -> dict[str, Handler]:
        return {
            "Operation.Created": self._created,
            "Operation.Updated": self._updated,
            "Operation.Scheduled": self._scheduled,
            "Operation.Unscheduled": self._unscheduled,
            "Operation.RunRequested": self._run_requested,
            "Operation.RunCompleted": self._run_completed,
            "Operation.RunFailed": self._run_failed,
            "Operation.Deleted": self._deleted,
            "ActionPackage.Created": self._package_created,
            "ActionPackage.Updated": self._package_updated,
            "ActionPackage.Deleted": self._package_deleted,
            "SystemNotification.Raised": self._raised,
            "SystemNotification.Acknowledged": self._acknowledged,
        }

    def load(self, db: ViewDb) -> None:
        self._pending.clear()

    def flush(self, tx: Tx) -> None:
        self._pending.flush(tx)

    # -- operations -------------------------------------------------------------
    def _touch(self, event: Any, sets: dict[str, Any]) -> None:
        sets = {
            **sets,
            "version": event.originator_version,
            "updated_at": event.timestamp.isoformat(),
        }
        self._pending.add(
            f"UPDATE ops_operations SET {', '.join(f'{c} = ?' for c in sets)}"  # noqa: S608
            " WHERE operation_id = ?",
            [*sets.values(), str(event.originator_id)],
        )

    def _created(self, event: Any, position: int) -> None:
        c = event.config
        stamp = event.timestamp.isoformat()
        self._pending.add(
            "INSERT INTO ops_operations (operation_id, org_uid, name, op_type, folder, recursive,"
            " window_days, action_package_id, recipients, cron, timezone, schedule_enabled,"
            " schedule_since, last_fire_time, version, created_at, updated_at, deleted)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, 0, NULL, NULL, ?, ?, ?, 0)",
            [
                str(event.originator_id),
                event.org_uid,
                *(_value(k, c.get(k)) for k in CONFIG_COLUMNS),
                _value("recipients", c.get("recipients")),
                event.originator_version,
                stamp,
                stamp,
            ],
        )

    def _updated(self, event: Any, position: int) -> None:
        self._touch(event, {k: _value(k, v) for k, v in event.changes.items()})

    def _scheduled(self, event: Any, position: int) -> None:
        sets = {"cron": event.cron, "timezone": event.timezone, "schedule_since": event.since}
        self._touch(event, {**sets, "schedule_enabled": int(event.enabled)})

    def _unscheduled(self, event: Any, position: int) -> None:
        self._touch(event, {"schedule_enabled": 0})

    def _deleted(self, event: Any, position: int) -> None:
        self._touch(event, {"deleted": 1})

    # -- runs -------------------------------------------------------------------
    def _run_requested(self, event: Any, position: int) -> None:
        if event.trigger == "schedule":
            self._touch(event, {"last_fire_time": event.fire_time})
        else:
            self._touch(event, {})
        self._pending.add(
            "INSERT INTO ops_runs (run_id, org_uid, operation_id, run_trigger, fire_time,"
            " requested_at, status, counts, stage, reason, finished_at, position)"
            " SELECT ?, org_uid, operation_id, ?, ?, ?, 'requested', '{}', NULL, NULL, NULL, ?"
            " FROM ops_operations WHERE operation_id = ?",
            [
                event.run_id,
                event.trigger,
                event.fire_time,
                event.requested_at,
                position,
                str(event.originator_id),
            ],
        )

    def _finish(self, event: Any, status: str, stage: str | None, reason: str | None) -> None:
        self._touch(event, {})
        self._pending.add(
            "UPDATE ops_runs SET status = ?, counts = ?, stage = ?, reason = ?, finished_at = ?"
            " WHERE run_id = ?",
            [status, json.dumps(event.counts), stage, reason, event.finished_at, event.run_id],
        )

    def _run_completed(self, event: Any, position: int) -> None:
        self._finish(event, "completed", None, None)

    def _run_failed(self, event: Any, position: int) -> None:
        self._finish(event, "failed", event.stage, event.reason)

    # -- action packages ------------------------------------------------------------
    def _package_created(self, event: Any, position: int) -> None:
        stamp = event.timestamp.isoformat()
        self._pending.add(
            "INSERT INTO ops_action_packages (package_id, org_uid, name, actions, version,"
            " created_at, updated_at, deleted) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
            [
                str(event.originator_id),
                event.org_uid,
                event.name,
                json.dumps(event.actions),
                event.originator_version,
                stamp,
                stamp,
            ],
        )

    def _package_updated(self, event: Any, position: int) -> None:
        self._pending.add(
            "UPDATE ops_action_packages SET name = ?, actions = ?, version = ?, updated_at = ?"
            " WHERE package_id = ?",
            [
                event.name,
                json.dumps(event.actions),
                event.originator_version,
                event.timestamp.isoformat(),
                str(event.originator_id),
            ],
        )

    def _package_deleted(self, event: Any, position: int) -> None:
        self._pending.add(
            "UPDATE ops_action_packages SET deleted = 1, version = ? WHERE package_id = ?",
            [event.originator_version, str(event.originator_id)],
        )

    # -- notifications ----------------------------------------------------------------
    def _raised(self, event: Any, position: int) -> None:
        self._pending.add(
            "INSERT INTO ops_notifications (notification_id, org_uid, kind, severity, message,"
            " context, raised_at, acknowledged, acknowledged_at, acknowledged_by, position)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 0, NULL, NULL, ?)",
            [
                str(event.originator_id),
                event.org_uid,
                event.kind,
                event.severity,
                event.message,
                json.dumps(event.context),
                event.timestamp.isoformat(),
                position,
            ],
        )

    def _acknowledged(self, event: Any, position: int) -> None:
        self._pending.add(
            "UPDATE ops_notifications SET acknowledged = 1, acknowledged_at = ?,"
            " acknowledged_by = ? WHERE notification_id = ?",
            [
                event.timestamp.isoformat(),
                (event.meta or {}).get("actor_owner") or (event.meta or {}).get("actor"),
                str(event.originator_id),
            ],
        )
