"""Roll tracking: requested -> new certificate registered -> new certificate seen -> old retired.

"Requested" is written by the workers (a roll command published for a certificate, see
RollRequestLog); the other steps are a projection of certificate events (Rolled, FirstSeen of
the successor, Deleted of the old one). A roll not retired in time is "stuck".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from application.ports import CertificateOutcome, RunCheckpoint
from projections.base import Handler, ViewProjection
from projections.db import Tx, ViewDb
from projections.operation_outcomes import OutcomeStore
from projections.statements import Pending

ROLL_TOPIC = "/manage/cert/roll/cid/"


class RollRequestLog(OutcomeStore):
    """The workers' outcome store, also noting each certificate a roll command went to.

    The note is written before the page commits: if the worker dies in between, the page is
    redone and the (idempotent) note written again; nothing is ever missed."""

    def __init__(self, db: ViewDb) -> None:
        super().__init__(db)
        with db.transaction() as tx:
            tx.execute(
                "CREATE TABLE IF NOT EXISTS roll_requests (certificate_id TEXT PRIMARY KEY,"
                " org_uid TEXT NOT NULL, run_id TEXT NOT NULL, component_id TEXT,"
                " requested_at DOUBLE PRECISION NOT NULL, notified_at DOUBLE PRECISION)"
            )

    def commit_page(
        self,
        run_id: str,
        worker: str,
        outcomes: Sequence[CertificateOutcome],
        cursor: str | None,
        done: bool,
        now: float,
        ttl: float,
    ) -> RunCheckpoint | None:
        rolls = [o for o in outcomes if any(ROLL_TOPIC in t for t in o.topics)]
        if rolls:
            org = {t.split("/", 1)[0] for o in rolls for t in o.topics}.pop()
            with self.db.transaction() as tx:
                tx.bulk_upsert(
                    "roll_requests",
                    ("certificate_id",),
                    (
                        "certificate_id",
                        "org_uid",
                        "run_id",
                        "component_id",
                        "requested_at",
                        "notified_at",
                    ),
                    [(o.certificate_id, org, run_id, o.component_id, now, None) for o in rolls],
                )
        return super().commit_page(run_id, worker, outcomes, cursor, done, now, ttl)


class RollTrackingProjection(ViewProjection):
    name = "roll_tracking"
    tables = ("roll_progress",)

    def __init__(self) -> None:
        self._pending = Pending()
        self._old_of: dict[str, str] = {}  # successor id -> rolled certificate id

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS roll_progress (certificate_id TEXT PRIMARY KEY,"
            " org_uid TEXT, successor_id TEXT, registered_at TEXT, successor_seen_at TEXT,"
            " retired_at TEXT)"
        ]

    def handlers(self) -> dict[str, Handler]:
        return {
            "Certificate.Rolled": self._rolled,
            "Certificate.FirstSeen": self._first_seen,
            "Certificate.Deleted": self._deleted,
        }

    def load(self, db: ViewDb) -> None:
        self._pending.clear()
        self._old_of = {
            str(r[0]): str(r[1])
            for r in db.query(
                "SELECT successor_id, certificate_id FROM roll_progress WHERE successor_id IS NOT NULL"
            )
        }

    def flush(self, tx: Tx) -> None:
        self._pending.flush(tx)

    def _rolled(self, event: Any, position: int) -> None:
        old = str(event.originator_id)
        self._old_of[event.successor_id] = old
        self._pending.add(
            "INSERT INTO roll_progress (certificate_id, org_uid, successor_id, registered_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (certificate_id) DO UPDATE SET"
            " successor_id = excluded.successor_id, registered_at = excluded.registered_at,"
            " successor_seen_at = NULL, retired_at = NULL",
            [old, event.meta.get("actor_owner"), event.successor_id, event.timestamp.isoformat()],
        )

    def _first_seen(self, event: Any, position: int) -> None:
        old = self._old_of.get(str(event.originator_id))
        if old is not None:
            self._pending.add(
                "UPDATE roll_progress SET successor_seen_at = ? WHERE certificate_id = ?",
                [event.timestamp.isoformat(), old],
            )

    def _deleted(self, event: Any, position: int) -> None:
        self._pending.add(
            "UPDATE roll_progress SET retired_at = ? WHERE certificate_id = ? AND retired_at IS NULL",
            [event.timestamp.isoformat(), str(event.originator_id)],
        )


STATES = ("requested", "registered", "seen", "retired")
FIELDS = (
    "certificate_id",
    "run_id",
    "component_id",
    "requested_at",
    "successor_id",
    "registered_at",
    "successor_seen_at",
    "retired_at",
)


def _state(row: dict[str, Any]) -> str:
    if row["retired_at"]:
        return "retired"
    if row["successor_seen_at"]:
        return "seen"
    if row["registered_at"]:
        return "registered"
    return "requested"


class RollTrackingView:
    def __init__(self, db: ViewDb) -> None:
        self.db = db

    def rolls(
        self,
        org_uid: str,
        *,
        run_id: str | None = None,
        certificate_id: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        where, params = ["r.org_uid = ?"], [org_uid]
        if run_id:
            where.append("r.run_id = ?")
            params.append(run_id)
        if certificate_id:
            where.append("r.certificate_id = ?")
            params.append(certificate_id)
        rows = self.db.query(
            "SELECT r.certificate_id, r.run_id, r.component_id, r.requested_at, p.successor_id,"
            " p.registered_at, p.successor_seen_at, p.retired_at FROM roll_requests r"
            " LEFT JOIN roll_progress p ON p.certificate_id = r.certificate_id"
            f" WHERE {' AND '.join(where)} ORDER BY r.requested_at, r.certificate_id LIMIT ?",
            (*params, limit),
        )
        out = []
        for r in rows:
            item = dict(zip(FIELDS, r, strict=True))
            item["state"] = _state(item)
            out.append(item)
        return out

    def stuck(self, now: float, timeout_seconds: float, limit: int = 1000) -> list[dict[str, Any]]:
        """Rolls requested longer than the timeout ago, not retired, not yet notified."""
        rows = self.db.query(
            "SELECT r.certificate_id, r.org_uid, r.run_id, r.requested_at FROM roll_requests r"
            " LEFT JOIN roll_progress p ON p.certificate_id = r.certificate_id"
            " WHERE r.requested_at < ? AND p.retired_at IS NULL AND r.notified_at IS NULL"
            " ORDER BY r.requested_at LIMIT ?",
            (now - timeout_seconds, limit),
        )
        return [
            dict(zip(("certificate_id", "org_uid", "run_id", "requested_at"), r, strict=True))
            for r in rows
        ]

    def mark_notified(self, certificate_ids: Sequence[str], now: float) -> None:
        with self.db.transaction() as tx:
            tx.executemany(
                "UPDATE roll_requests SET notified_at = ? WHERE certificate_id = ?",
                [(now, c) for c in certificate_ids],
            )

    def fleet_summary(
        self,
        org_uid: str,
        folder: str = "/",
        timeout_seconds: float = 86400,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Certificates expiring within 7/30/90 days under a folder, and pending/stuck rolls."""
        now = time.time() if now is None else now
        prefix = folder.rstrip("/") + "/"
        in_folder = "(c.folder = ? OR substr(c.folder, 1, ?) = ?)" if folder != "/" else "1 = 1"
        params: list[Any] = [org_uid] + ([folder, len(prefix), prefix] if folder != "/" else [])
        expiring = {}
        for days in (7, 30, 90):
            rows = self.db.query(
                "SELECT COUNT(*) FROM catalogue_certificates c WHERE c.org_uid = ? AND c.deleted = 0"
                f" AND {in_folder} AND c.not_after_epoch <= ?",
                (*params, now + days * 86400),
            )
            expiring[f"{days}d"] = int(rows[0][0])
        rows = self.db.query(
            "SELECT r.requested_at FROM roll_requests r JOIN catalogue_certificates c"
            " ON c.certificate_id = r.certificate_id LEFT JOIN roll_progress p"
            " ON p.certificate_id = r.certificate_id"
            f" WHERE r.org_uid = ? AND {in_folder}"
            " AND p.retired_at IS NULL",
            tuple(params),
        )
        pending = len(rows)
        stuck = sum(1 for (requested_at,) in rows if requested_at < now - timeout_seconds)
        return {
            "folder": folder,
            "expiring": expiring,
            "rolls_pending": pending,
            "rolls_stuck": stuck,
        }
