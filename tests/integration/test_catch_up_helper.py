"""A helper process fills the audit trail beside the main catch-up (PostgreSQL), and the
read models come out exactly as a catch-up in one process makes them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from adapters.catch_up_helper import ProcessHelpers
from application.bootstrap import Certwarden, bootstrap
from domain.meta import Actor
from projections.audit import BUCKETS, SHARES, AuditProjection, AuditSplit
from projections.event_feed import bucket_counts_for
from projections.runner import HelperRun, ProjectionRunner
from tests import factories as f
from tests.conftest import drop_schema, index_names, make_settings

AUDIT_INDEXES = {"audit_trail_org", "audit_trail_entity", "audit_trail_key", "audit_trail_time"}


@pytest.fixture
def cw(tmp_path: Path) -> Iterator[Certwarden]:
    settings = make_settings("postgres", tmp_path)
    container = bootstrap(settings)
    container.start(background=False)
    try:
        actor = Actor.system("test")
        org = container.registry.create_organization("helped", actor).uid
        root = f.make_root(f.unique_cn("root"))
        pem = b"".join(f.make_leaf(root, f.unique_cn()).pem for _ in range(30)) + root.pem
        done = container.registry.import_certificates(org, pem, actor)
        for n, item in enumerate(done[:10]):
            cert = container.registry.certificate(org, item.certificate_id)
            cert.rename(f"renamed-{n}", actor.meta())
            container.registry.commit(cert)
        container.sync()
        yield container
    finally:
        container.close()
        drop_schema(settings)


class Counting:
    """The real helpers, remembering what they were asked to take."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.names = real.names
        self.started: list[list[str]] = []

    def close(self) -> None:
        self.real.close()

    def start(self, names: Sequence[str], prepare: Callable[[], None]) -> HelperRun:
        self.started.append(list(names))
        run: HelperRun = self.real.start(names, prepare)
        return run


class NoSpare:
    """Helpers with nothing to close."""

    def close(self) -> None:
        return None


def read_models(cw: Certwarden) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: [tuple(r) for r in cw.db.query(f"SELECT * FROM {table} ORDER BY 1")]  # noqa: S608
        for table in ("audit_trail", "catalogue_certificates", "lookup_certificates")
    }


def rebuild_with(cw: Certwarden, helpers: Any) -> None:
    """Rebuild every read model with these helpers: they come out as they were, caught up."""
    before = read_models(cw)
    cw.runner.helpers = helpers
    cw.runner.rebuild()
    assert read_models(cw) == before
    head = cw.registry.max_position()
    assert cw.runner.position_of("audit") == cw.runner.position_of("audit.b") == head


def test_a_rebuild_hands_the_audit_trail_to_a_helper_and_gets_the_same_rows(
    cw: Certwarden, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    build = cw.runner._build_index

    def counted(statement: str) -> bool:
        built.append(statement)
        return build(statement)

    monkeypatch.setattr(cw.runner, "_build_index", counted)
    helpers = Counting(cw.runner.helpers)
    rebuild_with(cw, helpers)
    assert helpers.started == [["audit"]]
    assert AUDIT_INDEXES <= index_names(cw)
    # once each, though both audit shares declare them: two sessions building one index
    # at once do the work twice and one of them fails
    assert len(built) == len(set(built)) and sum("audit_trail" in s for s in built) == 4


def test_before_a_helper_starts_the_audit_trail_is_dealt_by_the_log_s_own_counts(
    cw: Certwarden,
) -> None:
    cw.runner.rebuild(["audit"])  # both shares: one table
    (near,) = cw.db.query("SELECT near FROM audit_split WHERE id = 1")[0]
    counts = bucket_counts_for(cw.registry.recorder)(BUCKETS)
    assert counts is not None and sum(counts) == cw.registry.max_position()
    dealt = sum(n for b, n in enumerate(counts) if int(near) >> b & 1)
    assert 0 < dealt < sum(counts)
    rows = cw.db.query("SELECT entity_id FROM audit_trail")
    assert rows and cw.runner.position_of("audit.b") == cw.registry.max_position()


def test_audit_trail_keys_compare_byte_by_byte_on_postgres(cw: Certwarden) -> None:
    collations = dict(
        cw.db.query(
            "SELECT column_name, collation_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'audit_trail'"
        )
    )
    assert {collations[c] for c in ("org_uid", "entity_id", "entity_key", "occurred_at")} == {"C"}


def test_a_helper_that_fails_leaves_its_read_models_to_this_process(cw: Certwarden) -> None:
    helpers = Counting(  # a helper that cannot reach the database exits with an error
        ProcessHelpers(cw.settings.eventsourcing_env(), "host=127.0.0.1 port=1", "nowhere")
    )
    rebuild_with(cw, helpers)
    assert helpers.started == [["audit"]]


def test_a_helper_that_cannot_start_leaves_its_read_models_to_this_process(
    cw: Certwarden,
) -> None:
    class Broken(NoSpare):
        names = ("audit",)

        def start(self, names: Sequence[str], prepare: Callable[[], None]) -> HelperRun:
            raise OSError("no more processes")

    rebuild_with(cw, Broken())


def test_a_helper_ended_midway_leaves_its_share_behind_and_this_process_catches_it_up(
    cw: Certwarden,
) -> None:
    class EndedMidway(NoSpare):
        """Fills its share three batches of ten far, commits them, and is gone."""

        names = ("audit",)
        committed = 0

        def start(self, names: Sequence[str], prepare: Callable[[], None]) -> HelperRun:
            prepare()
            share = AuditProjection(SHARES[0], AuditSplit(), cw.registry.state_at)
            helper = ProjectionRunner(cw.registry, cw.db, [share], batch_size=10, setup=False)
            for _ in range(3):
                helper.run_once()
            EndedMidway.committed = helper.position_of("audit")
            helper.stop()
            return Ended()

    class Ended:
        def wait(self, stop: threading.Event | None) -> bool:
            return False

        def end(self) -> None:
            return None

    rebuild_with(cw, EndedMidway())
    assert 0 < EndedMidway.committed < cw.registry.max_position()
