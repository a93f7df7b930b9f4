"""Reading the lookup read model: the LookupSource port (authorization index refresh) and
chain details for the HTTP API. Written by `projections/lookup.py`."""

from __future__ import annotations

import json
from typing import Any

from application.lookup import CertRow, LookupChanges, PolicyRow
from projections.db import ViewDb


def lookup_changes(db: ViewDb, after: int) -> LookupChanges:
    """Rows written after `after`, up to the tracked position read first (consistent)."""
    found = db.query("SELECT position FROM projection_tracking WHERE name = ?", ("lookup",))
    upto = int(found[0][0]) if found else 0
    if upto <= after:
        return LookupChanges([], [], upto)
    rows = db.query(
        "SELECT certificate_id, org_uid, fingerprint, common_name, usable, blocked_reason,"
        " not_before, not_after, policy_id, pinned_host, pinned_component, deleted, seen"
        " FROM lookup_certificates WHERE position > ? AND position <= ?",
        (after, upto),
    )
    certs = [
        CertRow(
            r[0],
            r[1],
            r[2],
            r[3],
            bool(r[4]),
            r[5],
            float(r[6]),
            float(r[7]),
            r[8],
            r[9],
            r[10],
            bool(r[11]),
            bool(r[12]),
        )
        for r in rows
    ]
    policies = [
        PolicyRow(r[0], r[1], json.loads(r[2]), bool(r[3]))
        for r in db.query(
            "SELECT org_uid, policy_id, permission_sets, deleted FROM lookup_policies"
            " WHERE position > ? AND position <= ?",
            (after, upto),
        )
    ]
    return LookupChanges(certs, policies, upto)


class LookupTable:
    """The LookupSource port over the lookup projection's tables (any process may read)."""

    def __init__(self, db: ViewDb) -> None:
        self._db = db

    def lookup_changes(self, after: int) -> LookupChanges:
        return lookup_changes(self._db, after)

    def dependents(self, certificate_id: str) -> int:
        """Live certificates issued by this one (a CA shared by several devices has many)."""
        rows = self._db.query(
            "SELECT COUNT(*) FROM lookup_certificates WHERE parent_id = ? AND deleted = 0",
            (certificate_id,),
        )
        return int(rows[0][0])

    def chain(self, certificate_id: str) -> dict[str, Any] | None:
        rows = self._db.query(
            "SELECT usable, blocked_reason, chain, not_before, not_after, parent_id"
            " FROM lookup_certificates WHERE certificate_id = ?",
            (certificate_id,),
        )
        if not rows:
            return None
        usable, reason, chain, nb, na, parent = rows[0]
        return {
            "usable": bool(usable),
            "blocked_reason": reason or None,
            "chain": json.loads(chain),
            "issuer_id": parent,
            "chain_not_before": nb,
            "chain_not_after": na,
        }
