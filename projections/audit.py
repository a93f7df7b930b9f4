"""Audit trail: every event of every aggregate, who did it, and each changed field before → after.

Before → after values come from replaying the event onto the entity's last-known fields with the
aggregate's own event method (the domain is the one source of truth for what an event changes).
Last-known fields live in `audit_entities`, cached in memory and read back lazily after a
restart; a rebuild from zero never reads them back (every entity starts with its creation event)
unless more entities than the cache holds are touched between two of their events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from eventsourcing.domain import CanInitAggregate
from eventsourcing.utils import get_topic, resolve_topic

from projections.audit_view import AUDIT_FIELDS, AuditView, utc_text
from projections.base import Handler, ViewProjection, event_name
from projections.db import Tx, ViewDb

__all__ = ["AUDIT_FIELDS", "AuditProjection", "AuditView"]

SKIPPED_TYPES = {"Reservation"}  # uniqueness bookkeeping, not an operator-visible change
HIDDEN = {"secret_hash", "meta"}  # API key secret hashes are never shown, even to auditors
KEY_FIELD = {"Policy": "policy_id", "Folder": "path", "User": "name", "Organization": "name"}
KEY_FIELD |= {"ApiKey": "label"}
EVENT_ONLY = {"originator_id", "originator_version", "originator_topic", "timestamp"}
_ABSENT = object()
CACHE_LIMIT = 20_000  # entities kept in memory between batches


def _jsonable(value: Any) -> Any:
    """JSON-safe copy; PEM text is dropped (it never changes and is in the catalogue)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if k != "pem"}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


_AGGREGATE_OF: dict[type[Any], type[Any]] = {}


def _aggregate_class(event_cls: type[Any]) -> type[Any]:
    """Certificate.Renamed -> Certificate (event classes are nested in their aggregate)."""
    found = _AGGREGATE_OF.get(event_cls)
    if found is None:
        found = _AGGREGATE_OF[event_cls] = resolve_topic(get_topic(event_cls).rsplit(".", 1)[0])
    return found


@dataclass(slots=True)
class _Entity:
    org_uid: str | None
    entity_type: str
    key: str | None
    fields: dict[str, Any]
    version: int
    dirty: bool = False


class AuditProjection(ViewProjection):
    """Writes one audit_trail row per event (Reservation events excepted) and keeps
    audit_entities (last-known fields per entity) in step, in the runner's batch transaction.

    Never raises on an event whose method cannot be replayed: the event's own attributes are
    then recorded as the changes (before unknown), so one odd event cannot stop the read models.
    """

    name = "audit"
    tables = ("audit_trail", "audit_entities")

    def __init__(self) -> None:
        self._rows: list[tuple[Any, ...]] = []
        self._cache: dict[str, _Entity] = {}
        self._db: ViewDb | None = None
        self.lookups = 0  # entities read back from audit_entities (0 during a rebuild)

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS audit_trail ("
            " position BIGINT PRIMARY KEY, occurred_at TEXT NOT NULL, org_uid TEXT,"
            " entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, entity_key TEXT,"
            " entity_version INTEGER NOT NULL, event_type TEXT NOT NULL, actor_kind TEXT,"
            " actor TEXT, actor_owner TEXT, request_id TEXT, source_ip TEXT,"
            " changes TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS audit_trail_org ON audit_trail (org_uid, position)",
            "CREATE INDEX IF NOT EXISTS audit_trail_entity ON audit_trail (entity_id, position)",
            "CREATE INDEX IF NOT EXISTS audit_trail_key"
            " ON audit_trail (org_uid, entity_type, entity_key, position)",
            "CREATE INDEX IF NOT EXISTS audit_trail_time ON audit_trail (org_uid, occurred_at)",
            "CREATE TABLE IF NOT EXISTS audit_entities ("
            " entity_id TEXT PRIMARY KEY, org_uid TEXT, entity_type TEXT NOT NULL,"
            " entity_key TEXT, fields TEXT NOT NULL, version INTEGER NOT NULL)",
            # The first audit read model (audit_log, no before -> after) is replaced: replay
            # the whole log into the new tables once, then drop the old one.
            "DELETE FROM projection_tracking WHERE name = 'audit'"
            " AND NOT EXISTS (SELECT 1 FROM audit_trail)",
            "DROP TABLE IF EXISTS audit_log",
        ]

    def handlers(self) -> dict[str, Handler]:
        return {}

    def load(self, db: ViewDb) -> None:
        self._db = db
        self._rows.clear()
        self._cache.clear()

    def reset(self, tx: Tx) -> None:
        super().reset(tx)
        self._rows.clear()
        self._cache.clear()

    # -- applying events ------------------------------------------------------------
    def apply(self, event: Any, position: int) -> None:
        entity_type, _, event_type = event_name(event).partition(".")
        if entity_type in SKIPPED_TYPES:
            return
        entity_id = str(event.originator_id)
        entity = self._entity(entity_id, event.originator_version)
        before = entity.fields if entity is not None else {}
        after, changed = self._replay(event, before)
        if entity_type == "Organization":
            org_uid: str | None = entity_id
        else:
            found = after.get("org_uid")
            org_uid = found if isinstance(found, str) and found else None
            org_uid = org_uid or (entity.org_uid if entity else None)
        key = self._key(entity_type, after) or (entity.key if entity else None)
        self._cache[entity_id] = _Entity(
            org_uid, entity_type, key, after, event.originator_version, dirty=True
        )
        meta = getattr(event, "meta", None) or {}
        changes = {k: {"before": before.get(k), "after": after.get(k)} for k in sorted(changed)}
        self._rows.append(
            (
                position,
                utc_text(event.timestamp),
                org_uid,
                entity_type,
                entity_id,
                key,
                event.originator_version,
                event_type,
                meta.get("actor_kind"),
                meta.get("actor"),
                meta.get("actor_owner"),
                meta.get("request_id"),
                meta.get("source_ip"),
                json.dumps(changes),
            )
        )

    @staticmethod
    def _replay(event: Any, before: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """(fields after the event, names of the fields it changed)."""
        try:
            if isinstance(event, CanInitAggregate):
                values = vars(event.mutate(None))
            else:
                shadow: Any = object.__new__(_aggregate_class(type(event)))
                shadow.__dict__.update(before)
                event.apply(shadow)
                values = vars(shadow)
        except Exception:  # noqa: BLE001 - see the class docstring: fall back, never stop
            values = {k: v for k, v in vars(event).items() if k not in EVENT_ONLY}
        after = dict(before)
        changed = []
        for k, v in values.items():
            # a field the event did not touch is still the very object it was in `before`
            if before.get(k, _ABSENT) is v or k[0] == "_" or k in HIDDEN:
                continue
            v = _jsonable(v)
            if k not in before or before[k] != v:
                after[k] = v
                changed.append(k)
        return after, changed

    @staticmethod
    def _key(entity_type: str, fields: dict[str, Any]) -> str | None:
        if entity_type == "Certificate":
            facts = fields.get("facts")
            return str(facts.get("fingerprint")) if isinstance(facts, dict) else None
        field = KEY_FIELD.get(entity_type)
        value = fields.get(field) if field else None
        return None if value is None else str(value)

    def _entity(self, entity_id: str, version: int) -> _Entity | None:
        found = self._cache.get(entity_id)
        if found is not None or version == 1 or self._db is None:
            return found
        rows = self._db.query(
            "SELECT org_uid, entity_type, entity_key, fields, version FROM audit_entities"
            " WHERE entity_id = ?",
            (entity_id,),
        )
        self.lookups += 1
        if not rows:
            return None
        org_uid, entity_type, key, fields, known = rows[0]
        return _Entity(org_uid, entity_type, key, json.loads(fields), int(known))

    # -- writing ------------------------------------------------------------------------
    def flush(self, tx: Tx) -> None:
        # bulk paths: COPY on PostgreSQL (one round trip per batch), executemany on SQLite
        tx.bulk_insert("audit_trail", AUDIT_FIELDS, self._rows)
        self._rows.clear()
        dirty = [(i, e) for i, e in self._cache.items() if e.dirty]
        tx.bulk_upsert(
            "audit_entities",
            ("entity_id",),
            ("entity_id", "org_uid", "entity_type", "entity_key", "fields", "version"),
            [
                (
                    i,
                    e.org_uid,
                    e.entity_type,
                    e.key,
                    json.dumps(e.fields, sort_keys=True),
                    e.version,
                )
                for i, e in dirty
            ],
        )

    def after_commit(self) -> None:
        if len(self._cache) > CACHE_LIMIT:
            self._cache.clear()  # everything is committed: later misses read the table
            return
        for entity in self._cache.values():
            entity.dirty = False
