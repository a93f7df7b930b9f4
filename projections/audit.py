"""Audit trail: every event of every aggregate, who did it, and each changed field before → after.

Before → after values come from replaying the event onto the entity's last-known fields with the
aggregate's own event method (the domain is the one source of truth for what an event changes).
Last-known fields are cached in memory (least recently used out first); an entity not in the
cache, after a restart say, is read back once from the event store as it was just before the
event (`state_at`). A rebuild from zero reads nothing back (every entity starts with its creation
event) unless more entities than the cache holds are touched between two of their events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from eventsourcing.domain import CanInitAggregate
from eventsourcing.utils import get_topic, resolve_topic

from projections.audit_view import AUDIT_FIELDS, AuditView, utc_text
from projections.base import Handler, ViewProjection, event_name
from projections.db import Tx, ViewDb

__all__ = ["AUDIT_FIELDS", "AuditProjection", "AuditView"]

log = logging.getLogger(__name__)

SKIPPED_TYPES = {"Reservation"}  # uniqueness bookkeeping, not an operator-visible change
HIDDEN = {"secret_hash", "meta"}  # API key secret hashes are never shown, even to auditors
KEY_FIELD = {"Policy": "policy_id", "Folder": "path", "User": "name", "Organization": "name"}
KEY_FIELD |= {"ApiKey": "label"}
EVENT_ONLY = {"originator_id", "originator_version", "originator_topic", "timestamp"}
_ABSENT = object()
CACHE_LIMIT = 50_000  # entities whose last-known fields are kept in memory

StateAt = Callable[[str, int], dict[str, Any] | None]
"""(entity id, version) -> the aggregate's attributes at that version, None if unknown."""


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # e.g. an integer wider than 64 bits
        return json.dumps(value)


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
_NAMES: dict[type[Any], tuple[str, str]] = {}  # event class -> (entity type, event type)


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


class AuditProjection(ViewProjection):
    """Writes one audit_trail row per event (Reservation events excepted), in the runner's batch
    transaction.

    Never raises on an event whose method cannot be replayed: the event's own attributes are
    then recorded as the changes (before unknown), so one odd event cannot stop the read models.
    """

    name = "audit"
    tables = ("audit_trail",)
    version = 2  # 2: last-known fields come from the event store, audit_entities is gone

    def __init__(self, state_at: StateAt | None = None) -> None:
        self._rows: list[tuple[Any, ...]] = []
        self._cache: dict[str, _Entity] = {}
        self._state_at = state_at
        self.lookups = 0  # entities read back from the event store (0 during a rebuild)

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
            "DROP TABLE IF EXISTS audit_entities",
            # The first audit read model (audit_log, no before -> after) is replaced: replay
            # the whole log into the new tables once, then drop the old one.
            "DELETE FROM projection_tracking WHERE name = 'audit'"
            " AND NOT EXISTS (SELECT 1 FROM audit_trail)",
            "DROP TABLE IF EXISTS audit_log",
        ]

    def handlers(self) -> dict[str, Handler]:
        return {}

    def load(self, db: ViewDb) -> None:
        self._rows.clear()
        self._cache.clear()

    def reset(self, tx: Tx) -> None:
        super().reset(tx)
        self._rows.clear()
        self._cache.clear()

    # -- applying events ------------------------------------------------------------
    def handler_for(self, event_class: type[Any]) -> Handler | None:
        skipped = event_class.__qualname__.partition(".")[0] in SKIPPED_TYPES
        return None if skipped else self.apply

    def apply(self, event: Any, position: int) -> None:
        names = _NAMES.get(type(event))
        if names is None:
            entity_part, _, event_part = event_name(event).partition(".")
            names = _NAMES[type(event)] = (entity_part, event_part)
        entity_type, event_type = names
        if entity_type in SKIPPED_TYPES:
            return
        entity_id = str(event.originator_id)
        entity = self._entity(entity_id, entity_type, event.originator_version)
        fields = entity.fields if entity is not None else {}
        before = self._replay(event, fields)  # `fields` is now the state after the event
        if entity_type == "Organization":
            org_uid: str | None = entity_id
        else:
            found = fields.get("org_uid")
            org_uid = found if isinstance(found, str) and found else None
            org_uid = org_uid or (entity.org_uid if entity else None)
        key = self._key(entity_type, fields) or (entity.key if entity else None)
        self._cache.pop(entity_id, None)  # most recently used last
        self._cache[entity_id] = _Entity(
            org_uid, entity_type, key, fields, event.originator_version
        )
        meta = getattr(event, "meta", None) or {}
        changes = {k: {"before": before[k], "after": fields[k]} for k in sorted(before)}
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
                _dumps(changes),
            )
        )

    @staticmethod
    def _replay(event: Any, fields: dict[str, Any]) -> dict[str, Any]:
        """Apply `event` to `fields` in place; returns the changed fields' values before it."""
        try:
            if isinstance(event, CanInitAggregate):
                values = vars(event.mutate(None))
            else:
                shadow: Any = object.__new__(_aggregate_class(type(event)))
                shadow.__dict__.update(fields)
                event.apply(shadow)
                values = vars(shadow)
        except Exception:  # noqa: BLE001 - see the class docstring: fall back, never stop
            values = {k: v for k, v in vars(event).items() if k not in EVENT_ONLY}
        before: dict[str, Any] = {}
        for k, v in values.items():
            # a field the event did not touch is still the very object it was in `fields`
            old = fields.get(k, _ABSENT)
            if old is v or k[0] == "_" or k in HIDDEN:
                continue
            v = _jsonable(v)
            if old is _ABSENT or old != v:
                before[k] = None if old is _ABSENT else old
                fields[k] = v
        return before

    @staticmethod
    def _key(entity_type: str, fields: dict[str, Any]) -> str | None:
        if entity_type == "Certificate":
            facts = fields.get("facts")
            return str(facts.get("fingerprint")) if isinstance(facts, dict) else None
        field = KEY_FIELD.get(entity_type)
        value = fields.get(field) if field else None
        return None if value is None else str(value)

    def _entity(self, entity_id: str, entity_type: str, version: int) -> _Entity | None:
        found = self._cache.get(entity_id)
        if found is not None or version == 1 or self._state_at is None:
            return found
        self.lookups += 1
        try:
            values = self._state_at(entity_id, version - 1)
        except Exception:  # noqa: BLE001 - before unknown: the row still says what changed
            log.exception(
                "audit: cannot read %s %s back from the event store", entity_type, entity_id
            )
            values = None
        if values is None:
            return None
        fields = {k: _jsonable(v) for k, v in values.items() if k[0] != "_" and k not in HIDDEN}
        org_uid = entity_id if entity_type == "Organization" else fields.get("org_uid")
        return _Entity(
            org_uid if isinstance(org_uid, str) and org_uid else None,
            entity_type,
            self._key(entity_type, fields),
            fields,
            version - 1,
        )

    # -- writing ------------------------------------------------------------------------
    def flush(self, tx: Tx) -> None:
        # bulk paths: COPY on PostgreSQL (one round trip per batch), executemany on SQLite
        tx.bulk_insert("audit_trail", AUDIT_FIELDS, self._rows)
        self._rows = []  # the runner may still hold the list it was given
        while len(self._cache) > CACHE_LIMIT:  # least recently used first
            del self._cache[next(iter(self._cache))]
