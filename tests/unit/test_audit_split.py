"""The audit trail's two shares: every entity in exactly one, dealt by events, never re-dealt."""

from __future__ import annotations

import uuid

from projections.audit import (
    BUCKETS,
    DEFAULT_NEAR,
    NEAR_SHARE,
    SHARES,
    AuditProjection,
    AuditSplit,
    bucket,
)
from projections.db import SqliteViewDb


def shares(split: AuditSplit) -> list[AuditProjection]:
    return [AuditProjection(share, split) for share in SHARES]


def empty_trail() -> SqliteViewDb:
    db = SqliteViewDb(":memory:")
    with db.transaction() as tx:
        tx.execute("CREATE TABLE projection_tracking (name TEXT PRIMARY KEY, position BIGINT)")
        for statement in shares(AuditSplit())[0].schema():
            tx.execute(statement)
    return db


def test_every_entity_is_in_exactly_one_share_whatever_the_split() -> None:
    for near in (DEFAULT_NEAR, 0, (1 << BUCKETS) - 1, 0b1010_0110_1):
        split = AuditSplit()
        split.near = near
        both = shares(split)
        for _ in range(500):
            entity = uuid.uuid4()
            assert [p.wants(entity) for p in both].count(True) == 1
            assert both[1].wants(entity) is bool(near >> bucket(entity) & 1)


def test_a_few_busy_entities_are_dealt_so_the_main_process_gets_about_its_share() -> None:
    db = empty_trail()
    per_bucket = [0] * BUCKETS
    for b in (3, 7, 11, 19, 23, 29, 31, 37, 41, 43):  # ten entities, 100k events each
        per_bucket[b] = 100_000
    split = AuditSplit()
    with db.transaction() as tx:
        split.deal(tx, per_bucket)
    split.load(db)  # what the helper process reads too
    near = sum(n for b, n in enumerate(per_bucket) if split.near >> b & 1)
    assert split.near != DEFAULT_NEAR
    assert abs(near - NEAR_SHARE * 1_000_000) <= 50_000  # the closest a whole entity allows


def test_a_trail_that_has_rows_is_never_re_dealt() -> None:
    db = empty_trail()
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO audit_trail (position, occurred_at, entity_type, entity_id,"
            " entity_version, event_type, changes) VALUES (1, 't', 'Folder', 'f', 1, 'Created', '{}')"
        )
        AuditSplit().deal(tx, [1000] + [0] * (BUCKETS - 1))
    split = AuditSplit()
    split.load(db)
    assert split.near == DEFAULT_NEAR
