"""Trust anchors: every registered CA or self-signed certificate, mirrored into the broker's
TLS trust directory so newly registered chains connect without a restart (a reactor)."""

from __future__ import annotations

import logging
from typing import Any

from application.ports import TrustAnchors
from projections.base import Handler, ViewProjection
from projections.db import Tx, ViewDb

log = logging.getLogger(__name__)


class TrustAnchorProjection(ViewProjection):
    name = "trust_anchors"
    tables = ("trust_anchors",)

    def __init__(self, sink: TrustAnchors | None = None) -> None:
        self.sink = sink
        self._anchors: dict[str, str] = {}  # certificate id -> PEM (live only)
        self._writes: list[tuple[str, str | None, str]] = []  # (id, fingerprint | None, pem)
        self._changed = True

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS trust_anchors (certificate_id TEXT PRIMARY KEY,"
            " fingerprint TEXT NOT NULL, pem TEXT NOT NULL)"
        ]

    def handlers(self) -> dict[str, Handler]:
        return {"Certificate.Imported": self._imported, "Certificate.Deleted": self._deleted}

    def load(self, db: ViewDb) -> None:
        self._anchors = {
            r[0]: r[1] for r in db.query("SELECT certificate_id, pem FROM trust_anchors")
        }
        self._writes.clear()
        self._changed = True

    def _imported(self, event: Any, position: int) -> None:
        facts = event.facts
        if event.is_ca or facts.get("ca_detected") or facts.get("self_signed"):
            cid = str(event.originator_id)
            self._anchors[cid] = facts["pem"]
            self._writes.append((cid, facts["fingerprint"], facts["pem"]))
            self._changed = True

    def _deleted(self, event: Any, position: int) -> None:
        cid = str(event.originator_id)
        if self._anchors.pop(cid, None) is not None:
            self._writes.append((cid, None, ""))
            self._changed = True

    def flush(self, tx: Tx) -> None:
        for cid, fingerprint, pem in self._writes:
            if fingerprint is None:
                tx.execute("DELETE FROM trust_anchors WHERE certificate_id = ?", (cid,))
            else:
                tx.execute(
                    "INSERT INTO trust_anchors (certificate_id, fingerprint, pem) VALUES (?, ?, ?)"
                    " ON CONFLICT (certificate_id) DO NOTHING",
                    (cid, fingerprint, pem),
                )
        self._writes.clear()

    def after_commit(self) -> None:
        self.sync()

    def sync(self) -> None:
        """Push the current set to the sink (idempotent; also called once at start-up)."""
        if self.sink is None or not self._changed:
            return
        try:
            self.sink.replace(sorted(set(self._anchors.values())))
            self._changed = False
        except OSError:
            log.exception("could not write trust anchors; will retry after the next batch")
