"""Queries over the operations read model (read side only)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from projections.db import Row, ViewDb
from projections.pagination import decode_cursor, encode_cursor

OPERATION_FIELDS = (
    "operation_id",
    "name",
    "op_type",
    "folder",
    "recursive",
    "window_days",
    "action_package_id",
    "recipients",
    "cron",
    "timezone",
    "schedule_enabled",
    "schedule_since",
    "last_fire_time",
    "version",
    "created_at",
    "updated_at",
)
RUN_FIELDS = (
    "run_id",
    "operation_id",
    "run_trigger",
    "fire_time",
    "requested_at",
    "status",
    "counts",
    "stage",
    "reason",
    "finished_at",
    "position",
)
NOTIFICATION_FIELDS = (
    "notification_id",
    "kind",
    "severity",
    "message",
    "context",
    "raised_at",
    "acknowledged",
    "acknowledged_at",
    "acknowledged_by",
    "position",
)


@dataclass(frozen=True, slots=True)
class ScheduledOperation:
    org_uid: str
    operation_id: str
    cron: str
    timezone: str
    floor: str | None  # ISO: latest of last fire time and schedule start
    version: int


@dataclass(frozen=True, slots=True)
class OpenRun:
    org_uid: str
    operation_id: str
    run_id: str
    requested_at: str


def _operation(row: Row) -> dict[str, Any]:
    data = dict(zip(OPERATION_FIELDS, row, strict=True))
    data["recursive"] = bool(data["recursive"])
    data["schedule_enabled"] = bool(data["schedule_enabled"])
    data["recipients"] = json.loads(data["recipients"])
    data["type"] = data.pop("op_type")
    return data


def _run(row: Row) -> dict[str, Any]:
    data = dict(zip(RUN_FIELDS, row, strict=True))
    data["counts"] = json.loads(data["counts"])
    data["trigger"] = data.pop("run_trigger")
    return data


def _notification(row: Row) -> dict[str, Any]:
    data = dict(zip(NOTIFICATION_FIELDS, row, strict=True))
    data["context"] = json.loads(data["context"])
    data["acknowledged"] = bool(data["acknowledged"])
    return data


RUN_PAGE_FIELDS = (
    "certificate_id",
    "name",
    "subject",
    "not_after",
    "status",
    "is_ca",
    "pinned_component",
)


class RunPages:
    """CertificatePages for runs: the catalogue's certificates of a folder, page by page.

    Unlike CatalogueView.list_certificates (ordered by name, 28 columns, lookup join and a
    JSON decode per row: ~20 us per row, measured) this reads the 7 columns a run needs,
    keyset-ordered by certificate id: an id never changes, so a rename during a run can
    neither skip a certificate nor process it twice."""

    def __init__(self, db: ViewDb) -> None:
        self.db = db

    def list_certificates(
        self,
        org_uid: str,
        *,
        folder: str | None = None,
        recursive: bool = True,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        where = ["org_uid = ?", "deleted = 0"]
        params: list[Any] = [org_uid]
        if folder is not None and (folder != "/" or not recursive):
            if recursive:  # a prefix test, not LIKE (SQLite's LIKE ignores case, knows no escape)
                prefix = folder.rstrip("/") + "/"
                where.append("(folder = ? OR substr(folder, 1, ?) = ?)")
                params += [folder, len(prefix), prefix]
            else:
                where.append("folder = ?")
                params.append(folder)
        if cursor:
            (after,) = decode_cursor(cursor, 1)
            where.append("certificate_id > ?")
            params.append(str(after))
        rows = self.db.query(
            f"SELECT {', '.join(RUN_PAGE_FIELDS)} FROM catalogue_certificates"  # noqa: S608
            f" WHERE {' AND '.join(where)} ORDER BY certificate_id LIMIT ?",
            (*params, limit + 1),
        )
        items = [dict(zip(RUN_PAGE_FIELDS, r, strict=True)) for r in rows[:limit]]
        more = len(rows) > limit
        return items, encode_cursor([items[-1]["certificate_id"]]) if more else None


class OperationsView:
    def __init__(self, db: ViewDb) -> None:
        self.db = db

    # -- operations ---------------------------------------------------------------
    def operations(self, org_uid: str) -> list[dict[str, Any]]:
        rows = self.db.query(
            f"SELECT {', '.join(OPERATION_FIELDS)} FROM ops_operations"  # noqa: S608
            " WHERE org_uid = ? AND deleted = 0 ORDER BY name, operation_id",
            (org_uid,),
        )
        return [_operation(r) for r in rows]

    def scheduled(self) -> list[ScheduledOperation]:
        """Every enabled schedule of every organization (the scheduler's work list)."""
        rows = self.db.query(
            "SELECT org_uid, operation_id, cron, timezone, schedule_since, last_fire_time, version"
            " FROM ops_operations WHERE schedule_enabled = 1 AND deleted = 0"
        )
        out = []
        for org, op, cron, zone, since, last, version in rows:
            floor = max((s for s in (since, last) if s), default=None)
            out.append(ScheduledOperation(org, op, cron, zone, floor, int(version)))
        return out

    def count_using_package(self, org_uid: str, package_id: str) -> int:
        rows = self.db.query(
            "SELECT COUNT(*) FROM ops_operations"
            " WHERE org_uid = ? AND action_package_id = ? AND deleted = 0",
            (org_uid, package_id),
        )
        return int(rows[0][0])

    # -- runs -----------------------------------------------------------------------
    def runs(
        self, org_uid: str, operation_id: str, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; keyset on the log position of RunRequested."""
        where = "org_uid = ? AND operation_id = ?"
        params: list[Any] = [org_uid, operation_id]
        if cursor:
            (before,) = decode_cursor(cursor, 1)
            where += " AND position < ?"
            params.append(int(before))
        rows = self.db.query(
            f"SELECT {', '.join(RUN_FIELDS)} FROM ops_runs WHERE {where}"  # noqa: S608
            " ORDER BY position DESC LIMIT ?",
            (*params, limit + 1),
        )
        items = [_run(r) for r in rows[:limit]]
        more = len(rows) > limit
        return items, encode_cursor([items[-1]["position"]]) if more else None

    def run(self, org_uid: str, run_id: str) -> dict[str, Any] | None:
        rows = self.db.query(
            f"SELECT {', '.join(RUN_FIELDS)} FROM ops_runs"  # noqa: S608
            " WHERE org_uid = ? AND run_id = ?",
            (org_uid, run_id),
        )
        return _run(rows[0]) if rows else None

    def open_runs(self) -> list[OpenRun]:
        """Runs requested and not finished, oldest first (the sweep's work list)."""
        rows = self.db.query(
            "SELECT org_uid, operation_id, run_id, requested_at FROM ops_runs"
            " WHERE status = 'requested' ORDER BY position"
        )
        return [OpenRun(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    # -- action packages --------------------------------------------------------------
    def packages(self, org_uid: str) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT package_id, name, actions, version, created_at, updated_at"
            " FROM ops_action_packages WHERE org_uid = ? AND deleted = 0 ORDER BY name",
            (org_uid,),
        )
        fields = ("package_id", "name", "actions", "version", "created_at", "updated_at")
        out = [dict(zip(fields, r, strict=True)) for r in rows]
        for item in out:
            item["actions"] = json.loads(item["actions"])
        return out

    # -- notifications ----------------------------------------------------------------
    def notifications(
        self,
        org_uid: str,
        acknowledged: bool | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; keyset on the log position of Raised."""
        where = "org_uid = ?"
        params: list[Any] = [org_uid]
        if acknowledged is not None:
            where += " AND acknowledged = ?"
            params.append(int(acknowledged))
        if cursor:
            (before,) = decode_cursor(cursor, 1)
            where += " AND position < ?"
            params.append(int(before))
        rows = self.db.query(
            f"SELECT {', '.join(NOTIFICATION_FIELDS)} FROM ops_notifications"  # noqa: S608
            f" WHERE {where} ORDER BY position DESC LIMIT ?",
            (*params, limit + 1),
        )
        items = [_notification(r) for r in rows[:limit]]
        more = len(rows) > limit
        return items, encode_cursor([items[-1]["position"]]) if more else None
