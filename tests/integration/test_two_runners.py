"""Two processes' runners over one database's read models (a CLI command beside a running
server): each batch's position is a compare-and-set, so no event is applied twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from application.bootstrap import Certwarden, bootstrap
from domain.meta import Actor
from projections.runner import MovedElsewhere
from tests.conftest import drop_schema, make_settings


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Certwarden, Certwarden]]:
    settings = make_settings("postgres", tmp_path)
    first = bootstrap(settings)
    second = bootstrap(settings)  # another process on the same schema (same tables)
    try:
        yield first, second
    finally:
        second.close()
        first.close()
        drop_schema(settings)


def audit_rows(cw: Certwarden) -> list[tuple[object, ...]]:
    return [tuple(r) for r in cw.db.query("SELECT position, entity_id FROM audit_trail")]


def test_a_runner_behind_another_process_carries_on_from_its_positions(
    pair: tuple[Certwarden, Certwarden],
) -> None:
    first, second = pair
    actor = Actor.system("test")
    for n in range(5):
        first.registry.create_organization(f"org-{n}", actor)
    first.runner.catch_up()
    rows = audit_rows(first)
    assert rows
    head = first.registry.max_position()
    assert second.runner.position == 0  # it loaded its positions before the other moved on
    second.runner.catch_up()  # would apply every event again (or hit a key) without the CAS
    assert second.runner.position == head
    assert sorted(audit_rows(second)) == sorted(rows)
    first.registry.create_organization("later", actor)
    second.runner.catch_up()
    first.runner.catch_up()  # and the first, now behind, catches up from the second's
    assert first.runner.position == second.runner.position == first.registry.max_position()
    assert len(audit_rows(first)) == len(rows) + 1


def test_a_batch_whose_position_moved_elsewhere_rolls_back(
    pair: tuple[Certwarden, Certwarden],
) -> None:
    first, second = pair
    first.registry.create_organization("o", Actor.system("test"))
    first.runner.catch_up()
    with pytest.raises(MovedElsewhere):
        second.runner._catch_up(None)  # one attempt: its first batch meets the moved position
    assert len(audit_rows(first)) == len({r[0] for r in audit_rows(first)})
