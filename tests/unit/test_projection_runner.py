"""The projection runner's pipeline: every batch lands exactly once, whatever fails."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from application.bootstrap import Certwarden, bootstrap
from domain.meta import Actor, ActorKind
from projections.lookup import LookupProjection
from tests.conftest import index_names

ADMIN = Actor(ActorKind.API_KEY, "key-1", "user-1", "req-1", "10.1.2.3")


@pytest.fixture
def cw() -> Iterator[Certwarden]:
    container = bootstrap(store="memory")
    container.start(background=False)
    try:
        yield container
    finally:
        container.close()


def audited_positions(cw: Certwarden) -> set[int]:
    return {int(r[0]) for r in cw.db.query("SELECT position FROM audit_trail")}


def expected_positions(cw: Certwarden) -> set[int]:
    notifications = cw.registry.recorder.select_notifications(start=1, limit=10_000)
    return {n.id for n in notifications if ":Reservation." not in n.topic}


def test_a_listener_failing_twice_in_a_row_loses_no_batch(cw: Certwarden) -> None:
    org = cw.registry.create_organization("o", ADMIN).uid
    cw.sync()
    runner = cw.runner
    runner.batch_size = 3  # several batches in flight in the pipeline
    for i in range(12):
        cw.registry.create_user(org, f"u{i}", "viewer", ADMIN)
    calls = {"n": 0}

    def flaky() -> None:  # e.g. the authorization index meeting a transient database error
        calls["n"] += 1
        if calls["n"] in (2, 3):
            raise RuntimeError("listener failed")

    lookup = next(p for p in runner.projections if isinstance(p, LookupProjection))
    lookup.listeners.append(flaky)
    for _ in range(3):
        try:
            runner.catch_up()
        except RuntimeError:
            pass
    head = cw.registry.max_position()
    assert runner.position == head
    assert audited_positions(cw) == expected_positions(cw)


def test_a_failing_write_is_retried_from_the_tables(
    cw: Certwarden, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = cw.registry.create_organization("o", ADMIN).uid
    cw.sync()
    runner = cw.runner
    runner.batch_size = 2
    for i in range(9):
        cw.registry.create_user(org, f"u{i}", "viewer", ADMIN)
    write = runner._write
    calls = {"n": 0}

    def failing_once(batch: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("connection lost")
        write(batch)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "_write", failing_once)
    with pytest.raises(OSError):
        runner.catch_up()
    runner.catch_up()
    assert runner.position == cw.registry.max_position()
    assert audited_positions(cw) == expected_positions(cw)


class IndexBuildsFail:
    """The view database, except that building an index fails while `failing` is set."""

    def __init__(self, db: Any) -> None:
        self._db, self.failing = db, True
        self.dialect = db.dialect

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._db.transaction() as tx:
            yield _Guarded(tx, self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


class _Guarded:
    def __init__(self, tx: Any, owner: IndexBuildsFail) -> None:
        self._tx, self._owner = tx, owner

    def execute(self, sql: str, params: Any = ()) -> Any:
        if self._owner.failing and sql.startswith("CREATE INDEX"):
            raise OSError("disk full")
        return self._tx.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)


def test_indexes_a_failed_bulk_load_could_not_build_come_back_on_the_next_catch_up(
    cw: Certwarden, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = cw.registry.create_organization("o", ADMIN).uid
    for i in range(5):
        cw.registry.create_user(org, f"u{i}", "viewer", ADMIN)
    cw.sync()
    runner, indexes = cw.runner, index_names(cw)
    flaky = IndexBuildsFail(runner.db)
    monkeypatch.setattr(runner, "db", flaky)
    runner.bulk_from_zero = 1
    runner.rebuild()  # the catch-up succeeds; the index build fails (logged, not raised)
    assert "audit_trail_org" not in index_names(cw)
    assert "lookup_certificates_position" in index_names(cw)  # read while catching up
    flaky.failing = False
    runner.catch_up()
    assert index_names(cw) == indexes
    assert audited_positions(cw) == expected_positions(cw)


def test_the_feed_decodes_every_event_exactly_as_the_mapper_does(tmp_path: Any) -> None:
    from eventsourcing.persistence import StoredEvent

    from projections.event_feed import event_decoder, feed_for
    from tests import factories as f
    from tests.conftest import make_settings

    cw = bootstrap(make_settings("sqlite", tmp_path))
    try:
        org = cw.registry.create_organization("o", ADMIN).uid
        done = cw.registry.import_certificates(  # deflated states (PEM) beside plain ones
            org, f.make_self_signed_leaf(f.unique_cn()).pem, ADMIN
        )
        cert = cw.registry.certificate(org, done[0].certificate_id)
        cert.rename("renamed", ADMIN.meta())
        cw.registry.commit(cert)
        cw.registry.create_user(org, "u1", "viewer", ADMIN)
        mapper = cw.registry.mapper
        notifications = feed_for(cw.registry.recorder)(0, 1000)
        decode = event_decoder(mapper)
        assert decode is not mapper.to_domain_event  # the fast path is taken here
        for n in notifications:
            fast, library = decode(n), mapper.to_domain_event(n)
            assert type(fast) is type(library)
            assert vars(fast) == vars(library)
        # a stored class_version (an upcast) and a damaged state take the mapper's own path
        n = notifications[-1]
        marked = StoredEvent(
            n.originator_id, n.originator_version, n.topic, n.state[:-1] + b',"class_version":1}'
        )
        assert vars(decode(marked)) == vars(mapper.to_domain_event(marked))
        broken = StoredEvent(n.originator_id, n.originator_version, n.topic, b'{"oops"')
        with pytest.raises(type(_raised(mapper.to_domain_event, broken))):
            decode(broken)
    finally:
        cw.close()


def _raised(call: Any, *args: Any) -> BaseException:
    try:
        call(*args)
    except Exception as exc:  # noqa: BLE001 - returned for the comparison
        return exc
    raise AssertionError("expected an error")


def test_an_entity_that_left_the_cache_fails_a_restore_s_feed_rather_than_guess(
    cw: Certwarden,
) -> None:
    from projections.audit import SHARES, AuditProjection, AuditSplit, ReadBackRefused

    org = cw.registry.create_organization("o", ADMIN).uid
    user = cw.registry.create_user(org, "u1", "viewer", ADMIN)
    cw.registry.change_user_role(org, str(user.id), "admin", ADMIN)
    notifications = cw.registry.recorder.select_notifications(start=1, limit=100)
    events = [(n.id, cw.registry.mapper.to_domain_event(n)) for n in notifications]
    split = AuditSplit()
    split.near = 0  # every entity is this share's
    share = AuditProjection(SHARES[0], split, cw.registry.state_at)
    share.fed_by_restore()
    first_of_user = next(i for i, (_, e) in enumerate(events) if e.originator_id == user.id)
    for position, event in events[: first_of_user + 1]:
        share.apply(event, position)
    share._cache.clear()  # as if 50,000 other entities had gone through meanwhile
    later = [(p, e) for p, e in events[first_of_user + 1 :] if e.originator_id == user.id]
    assert later
    with pytest.raises(ReadBackRefused):
        share.apply(later[0][1], later[0][0])
    share.fed_by_restore_end()  # after the restore: read back from the store as usual
    share.apply(later[0][1], later[0][0])
    assert share.lookups == 2


def test_a_restore_feed_that_cannot_begin_lets_the_runner_go(
    cw: Certwarden, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = cw.runner

    def broken(*_: Any) -> Any:
        raise OSError("view database gone")

    monkeypatch.setattr(runner.db, "transaction", broken)
    monkeypatch.setattr(runner.db, "query", broken)  # and its state cannot be reloaded now
    with pytest.raises(OSError):
        runner._feed_begin(runner.position)
    assert runner._stale  # reloaded before the next batch
    released = []

    def other() -> None:  # (the lock is reentrant: only another thread can tell)
        released.append(runner._lock.acquire(timeout=2))
        runner._lock.release()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert released == [True]
    monkeypatch.undo()
    org = cw.registry.create_organization("after", ADMIN).uid
    cw.sync()
    assert not runner._stale
    assert cw.db.query("SELECT 1 FROM audit_trail WHERE entity_id = ?", (org,))
