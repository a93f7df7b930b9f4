"""Queries over the catalogue (read side only)."""

from __future__ import annotations

import json
import time
from typing import Any

from domain.folder import normalise_folder
from projections.catalogue import CERT_FIELDS
from projections.db import ViewDb
from projections.pagination import decode_cursor, encode_cursor

LIST_FIELDS = tuple(f for f in CERT_FIELDS if f not in ("pem", "not_after_epoch"))


def _cert(row: tuple[Any, ...], fields: tuple[str, ...]) -> dict[str, Any]:
    data = dict(zip(fields, row, strict=True))
    for flag in ("is_ca", "self_signed", "deleted"):
        if flag in data:
            data[flag] = bool(data[flag])
    if "sans" in data:
        data["sans"] = json.loads(data["sans"] or "[]")
    return data


class CatalogueView:
    def __init__(self, db: ViewDb) -> None:
        self.db = db

    def list_certificates(
        self,
        org_uid: str,
        *,
        folder: str | None = None,
        recursive: bool = True,
        status: str | None = None,
        is_ca: bool | None = None,
        expiring_within_days: int | None = None,
        text: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Filtered page ordered by (name, id); returns rows and the next cursor."""
        where = ["c.org_uid = ?", "c.deleted = 0"]
        params: list[Any] = [org_uid]
        if folder is not None:
            path = normalise_folder(folder)
            if recursive and path != "/":
                # exact prefix test: LIKE would treat '_' and '%' in folder names as patterns
                where.append("(c.folder = ? OR substr(c.folder, 1, ?) = ?)")
                params += [path, len(path) + 1, path + "/"]
            elif not recursive:
                where.append("c.folder = ?")
                params.append(path)
        if status is not None:
            where.append("c.status = ?")
            params.append(status.upper())
        if is_ca is not None:
            where.append("c.is_ca = ?")
            params.append(int(is_ca))
        if expiring_within_days is not None:
            where.append("c.not_after_epoch <= ?")
            params.append(time.time() + expiring_within_days * 86400)
        if text:
            where.append("(LOWER(c.name) LIKE ? OR LOWER(c.subject) LIKE ? OR c.fingerprint = ?)")
            needle = "%" + text.lower().replace("%", "").replace("_", "") + "%"
            params += [needle, needle, text.lower()]
        if cursor:
            name, cid = decode_cursor(cursor, 2)
            where.append("(c.name > ? OR (c.name = ? AND c.certificate_id > ?))")
            params += [name, name, cid]
        fields = ", ".join(f"c.{f}" for f in LIST_FIELDS)
        rows = self.db.query(
            f"SELECT {fields}, l.usable, l.blocked_reason, l.not_before, l.not_after"  # noqa: S608
            " FROM catalogue_certificates c LEFT JOIN lookup_certificates l"
            " ON l.certificate_id = c.certificate_id"
            f" WHERE {' AND '.join(where)} ORDER BY c.name, c.certificate_id LIMIT ?",
            (*params, limit + 1),
        )
        items = []
        for row in rows[:limit]:
            item = _cert(row[: len(LIST_FIELDS)], LIST_FIELDS)
            item["effective_status"] = effective_status(*row[len(LIST_FIELDS) :])
            items.append(item)
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = encode_cursor([last["name"], last["certificate_id"]])
        return items, next_cursor

    def count_using_policy(self, org_uid: str, policy_id: str) -> int:
        rows = self.db.query(
            "SELECT COUNT(*) FROM catalogue_certificates"
            " WHERE org_uid = ? AND policy_id = ? AND deleted = 0",
            (org_uid, policy_id),
        )
        return int(rows[0][0])

    def policies(self, org_uid: str) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT policy_id, name, permission_sets, version, created_at, updated_at"
            " FROM catalogue_policies WHERE org_uid = ? AND deleted = 0 ORDER BY policy_id",
            (org_uid,),
        )
        return [
            {
                "policy_id": r[0],
                "name": r[1],
                "permission_sets": json.loads(r[2]),
                "version": r[3],
                "created_at": r[4],
                "updated_at": r[5],
            }
            for r in rows
        ]

    def folders(self, org_uid: str) -> list[dict[str, Any]]:
        """Every folder with its certificate count (direct and with subfolders)."""
        paths = [
            r[0]
            for r in self.db.query(
                "SELECT path FROM catalogue_folders WHERE org_uid = ? AND deleted = 0 ORDER BY path",
                (org_uid,),
            )
        ]
        counts: dict[str, int] = dict(
            self.db.query(
                "SELECT folder, COUNT(*) FROM catalogue_certificates"
                " WHERE org_uid = ? AND deleted = 0 GROUP BY folder",
                (org_uid,),
            )
        )
        out = []
        for path in paths:
            prefix = path.rstrip("/") + "/"
            total = sum(
                n for f, n in counts.items() if f == path or path == "/" or f.startswith(prefix)
            )
            out.append(
                {"path": path, "certificates": counts.get(path, 0), "certificates_total": total}
            )
        return out


def effective_status(
    usable: Any, blocked_reason: Any, not_before: Any, not_after: Any, now: float | None = None
) -> dict[str, Any]:
    """Usable now = chain usable and inside every certificate's validity window."""
    now = time.time() if now is None else now
    if usable is None:
        return {"usable": False, "reason": "pending: read model not updated yet"}
    if not usable:
        return {"usable": False, "reason": blocked_reason}
    if now < float(not_before):
        return {
            "usable": False,
            "reason": "not-yet-valid: a certificate of the chain is not valid yet",
        }
    if now > float(not_after):
        return {"usable": False, "reason": "expired: a certificate of the chain has expired"}
    return {"usable": True, "reason": None}
