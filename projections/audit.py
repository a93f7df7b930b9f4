"""Audit trail: every event of every aggregate, who did it, and each changed field before → after.

Before → after values come from replaying the event onto the entity's last-known fields with the
aggregate's own event method (the domain is the one source of truth for what an event changes).
Last-known fields are cached in memory (least recently used out first); an entity not in the
cache, after a restart say, is read back once from the event store as it was just before the
event (`state_at`). A rebuild from zero reads nothing back (every entity starts with its creation
event) unless more entities than the cache holds are touched between two of their events.

The trail is TWO read models over the one table, "audit" and "audit.b", each holding the rows
of its own share of the entities (by a bucket of the entity id, see AuditSplit) with its own
tracking position. Rows never depend on another entity's events, so the shares are independent,
and filling the trail from zero can be split between two processes (projections/runner.py: a
helper takes "audit" while the main process, which decodes every event for its other read
models anyway, takes "audit.b"). They are one unit everywhere else: reset and rebuilt together
(`group`), one schema, one version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import is_not
from typing import Any
from uuid import UUID

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
_ALL = repeat(_ABSENT)  # fields.get's default, for as many fields as there are
CACHE_LIMIT = 50_000  # entities whose last-known fields are kept in memory
BUCKETS = 62  # an entity's bucket: the low 32 bits of its id, mod BUCKETS (SQL says the same)
NEAR_SHARE = 0.26  # of the events, for the main process when a helper fills the rest (see below)
DEFAULT_NEAR = (1 << 16) - 1  # buckets 0-15 (~26% of the entities) until a split is measured
SPLIT = "CREATE TABLE IF NOT EXISTS audit_split (id INTEGER PRIMARY KEY, near BIGINT NOT NULL)"
SAVE_SPLIT = (
    "INSERT INTO audit_split (id, near) VALUES (1, ?)"
    " ON CONFLICT (id) DO UPDATE SET near = excluded.near"
)


def bucket(entity_id: UUID) -> int:
    return (entity_id.int & 0xFFFFFFFF) % BUCKETS


class AuditSplit:
    """Which buckets of entities are "audit.b"'s (a bit mask; the rest are "audit"'s).

    Stored in one row of audit_split, read by both processes, and changed only while the trail
    is empty (a row's share must never move): when it is filled from zero beside a helper, the
    buckets are re-dealt from the event log's own count of events per bucket so that the main
    process gets about NEAR_SHARE of them - measured at 1M events, what it needs beside its
    other read models to finish with the helper. A fleet's thousands of entities split well
    by any mask; a history of a few busy entities needs the count.
    """

    def __init__(self) -> None:
        self.near = DEFAULT_NEAR

    def load(self, db: ViewDb) -> None:
        rows = db.query("SELECT near FROM audit_split WHERE id = 1")
        self.near = int(rows[0][0]) if rows else DEFAULT_NEAR

    def deal(self, tx: Tx, per_bucket: Sequence[int]) -> None:
        if tx.execute("SELECT 1 FROM audit_trail LIMIT 1"):
            return  # rows say whose they are: never re-split a trail that has any
        target = sum(per_bucket) * NEAR_SHARE
        near, taken = 0, 0
        for b in sorted(range(BUCKETS), key=lambda b: -per_bucket[b]):
            if per_bucket[b] and abs(taken + per_bucket[b] - target) < abs(taken - target):
                near, taken = near | (1 << b), taken + per_bucket[b]
        tx.execute(SAVE_SPLIT, (near,))  # this process reads it back once it is committed
        log.info("audit trail split: %d of %d events to the main process", taken, sum(per_bucket))


@dataclass(frozen=True)
class AuditShare:
    name: str  # the read model's name (its tracking row)
    near: bool  # the buckets in AuditSplit.near, or the others


SHARES = (AuditShare("audit", near=False), AuditShare("audit.b", near=True))


StateAt = Callable[[str, int], dict[str, Any] | None]
"""(entity id, version) -> the aggregate's attributes at that version, None if unknown."""


class ReadBackRefused(Exception):
    """An entity left the cache while its events were not committed yet (a restore's feed
    touching more than CACHE_LIMIT entities between two events of one): the feed fails, and
    the trail is filled from the event store instead, after the restore."""


def _refuse_read_back(entity_id: str, version: int) -> dict[str, Any] | None:
    raise ReadBackRefused(f"{entity_id} v{version} is not in the cache")


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
    id_text: str
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

    group = "audit"
    tables = ("audit_trail",)
    version = 3  # 2: last-known fields from the event store; 3: two shares of the entities

    def __init__(
        self, share: AuditShare, split: AuditSplit, state_at: StateAt | None = None
    ) -> None:
        self.name = share.name
        self.near = share.near
        self.split = split
        self._rows: list[tuple[Any, ...]] = []
        self._cache: dict[int, _Entity] = {}  # by aggregate id (its int: UUID hashes in Python)
        self._state_at = state_at
        self._unfed = state_at
        self.lookups = 0  # entities read back from the event store (0 during a rebuild)

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS audit_trail ("
            " position BIGINT PRIMARY KEY, occurred_at CTEXT NOT NULL, org_uid CTEXT,"
            " entity_type CTEXT NOT NULL, entity_id CTEXT NOT NULL, entity_key CTEXT,"
            " entity_version INTEGER NOT NULL, event_type TEXT NOT NULL, actor_kind TEXT,"
            " actor TEXT, actor_owner TEXT, request_id TEXT, source_ip TEXT,"
            " changes TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS audit_trail_org ON audit_trail (org_uid, position)",
            "CREATE INDEX IF NOT EXISTS audit_trail_entity ON audit_trail (entity_id, position)",
            "CREATE INDEX IF NOT EXISTS audit_trail_key"
            " ON audit_trail (org_uid, entity_type, entity_key, position)",
            "CREATE INDEX IF NOT EXISTS audit_trail_time ON audit_trail (org_uid, occurred_at)",
            SPLIT,
            "DROP TABLE IF EXISTS audit_entities",
            # The first audit read model (audit_log, no before -> after) is replaced: replay
            # the whole log into the new tables once, then drop the old one.
            "DELETE FROM projection_tracking WHERE name IN ('audit', 'audit.b')"
            " AND NOT EXISTS (SELECT 1 FROM audit_trail)",
            "DROP TABLE IF EXISTS audit_log",
        ]

    def handlers(self) -> dict[str, Handler]:
        return {}

    def load(self, db: ViewDb) -> None:
        self.split.load(db)
        self._rows.clear()
        self._cache.clear()

    def reset(self, tx: Tx) -> None:
        super().reset(tx)
        self._rows.clear()
        self._cache.clear()

    def wants(self, entity_id: UUID) -> bool:
        return bool(self.split.near >> bucket(entity_id) & 1) is self.near

    def split_for_helper(self, tx: Tx, per_bucket: Callable[[int], Sequence[int] | None]) -> None:
        counts = per_bucket(BUCKETS)
        if counts is not None:
            self.split.deal(tx, counts)

    # -- applying events ------------------------------------------------------------
    def handler_for(self, event_class: type[Any]) -> Handler | None:
        skipped = event_class.__qualname__.partition(".")[0] in SKIPPED_TYPES
        return None if skipped else self.apply

    def apply(self, event: Any, position: int) -> None:
        oid = event.originator_id
        cached = self._cache.pop(oid.int, None)  # (most recently used goes last again below)
        if cached is None and not self.wants(oid):
            return
        names = _NAMES.get(type(event))
        if names is None:
            entity_part, _, event_part = event_name(event).partition(".")
            names = _NAMES[type(event)] = (entity_part, event_part)
        entity_type, event_type = names
        if entity_type in SKIPPED_TYPES:
            return
        version = event.originator_version
        entity = cached or self._entity(oid, entity_type, version)
        if entity is None:
            entity = _Entity(str(oid), None, entity_type, None, {}, version)
        fields = entity.fields
        before = self._replay(event, fields)  # `fields` is now the state after the event
        if entity_type == "Organization":
            entity.org_uid = entity.id_text
        else:
            found = fields.get("org_uid")
            if isinstance(found, str) and found:
                entity.org_uid = found
        entity.key = self._key(entity_type, fields) or entity.key
        entity.version = version
        self._cache[oid.int] = entity
        meta = getattr(event, "meta", None) or {}
        self._rows.append(
            (
                position,
                utc_text(event.timestamp),
                entity.org_uid,
                entity_type,
                entity.id_text,
                entity.key,
                version,
                event_type,
                meta.get("actor_kind"),
                meta.get("actor"),
                meta.get("actor_owner"),
                meta.get("request_id"),
                meta.get("source_ip"),
                _dumps({k: {"before": before[k], "after": fields[k]} for k in sorted(before)}),
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
        # a field the event did not touch is still the very object it was in `fields`: the
        # identity test runs in C over every field, the rest only over the touched ones
        touched = compress(values, map(is_not, values.values(), map(fields.get, values, _ALL)))
        for k in touched:
            if k[0] == "_" or k in HIDDEN:
                continue
            old = fields.get(k, _ABSENT)
            v = _jsonable(values[k])
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

    def fed_by_restore(self) -> None:
        self._unfed = self._state_at
        self._state_at = _refuse_read_back

    def fed_by_restore_end(self) -> None:
        if self._state_at is _refuse_read_back:
            self._state_at = self._unfed

    def _entity(self, oid: UUID, entity_type: str, version: int) -> _Entity | None:
        """An entity not in the cache: as it was before `version`, from the event store."""
        if version == 1 or self._state_at is None:
            return None
        self.lookups += 1
        entity_id = str(oid)
        try:
            values = self._state_at(entity_id, version - 1)
        except ReadBackRefused:
            raise
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
            entity_id,
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
