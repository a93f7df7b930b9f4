"""Backup files that must be refused: every defect names its line and nothing is written."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from adapters.backup_file import RichProgress, services
from adapters.cli import app as cli
from application.backup_format import canonical, genesis, seal
from application.bootstrap import Certwarden
from application.restore import RestoreRefused
from domain.errors import InvalidInput
from tests.conftest import make_settings
from tests.unit.test_backup import backup_of, other_store, populate

Lines = list[bytes]


def unpack(data: bytes) -> Lines:
    return gzip.decompress(data).splitlines(keepends=True)


def pack(lines: Lines) -> bytes:
    return gzip.compress(b"".join(lines))


def reseal(objects: list[dict[str, Any]]) -> bytes:
    """Rewrite a whole file from line objects with a correct chain, manifest and trailer:
    what a careful forger produces. Only the content rules can then refuse it."""
    manifest, events = objects[0], objects[1:-1]
    prev = genesis(manifest["backup_id"])
    out = []
    for event in events:
        event = {k: v for k, v in event.items() if k != "hash"}
        event["prev"] = prev
        line, prev = seal(canonical(event), prev)
        out.append(line)
    trailer, prev = seal(canonical({"count": len(events), "kind": "trailer", "prev": prev}), prev)
    head = {k: v for k, v in manifest.items() if k != "hash"}
    head.update(event_count=len(events), last_hash=prev)
    head["first_position"] = events[0]["pos"] if events else None
    head["last_position"] = events[-1]["pos"] if events else None
    first = seal(canonical(head), genesis(manifest["backup_id"]))[0]
    return pack([first, *out, trailer])


def objects(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in unpack(data)]


def refused(cw: Certwarden, data: bytes) -> InvalidInput:
    before = cw.registry.max_position()
    with pytest.raises(InvalidInput) as caught:
        services(cw)[1].restore(io.BytesIO(data))
    assert cw.registry.max_position() == before  # nothing written
    return caught.value


@pytest.fixture
def target(store: str, tmp_path: Path) -> Iterator[Certwarden]:
    yield from other_store(store, tmp_path)


@pytest.fixture
def good(cw: Certwarden) -> bytes:
    return backup_of(cw, populate(cw)["org"])


def test_a_resealed_but_unchanged_file_restores(good: bytes, target: Certwarden) -> None:
    plan, _ = services(target)[1].restore(io.BytesIO(reseal(objects(good))))
    assert plan.restored == sum("shared" not in o for o in objects(good)[1:-1]) > 20


def test_a_truncated_file_is_refused_naming_where_it_ends(good: bytes, target: Certwarden) -> None:
    error = refused(target, good[: len(good) // 2])
    assert error.extra["line"] > 1 and "truncated" in error.detail


def test_a_file_that_is_not_gzip_is_refused(good: bytes, target: Certwarden) -> None:
    assert "gzip" in refused(target, gzip.decompress(good)).detail


def test_invalid_json_on_a_line_is_refused_naming_that_line(
    good: bytes, target: Certwarden
) -> None:
    lines = unpack(good)
    lines[3] = lines[3].replace(b'"pos":', b'"pos":,', 1)
    assert refused(target, pack(lines)).extra["line"] == 4


def test_a_line_edited_by_hand_is_refused_naming_that_line(good: bytes, target: Certwarden) -> None:
    lines = unpack(good)
    lines[5] = lines[5].replace(b'"name":"', b'"name":"x', 1)
    assert b'"name":"x' in lines[5]
    error = refused(target, pack(lines))
    assert error.extra["line"] == 6 and "edited" in error.detail


def test_a_removed_line_is_refused(good: bytes, target: Certwarden) -> None:
    lines = unpack(good)
    del lines[4]
    error = refused(target, pack(lines))
    assert error.extra["line"] == 5 and "out of sequence" in error.detail


def test_swapped_lines_are_refused(good: bytes, target: Certwarden) -> None:
    lines = unpack(good)
    lines[3], lines[4] = lines[4], lines[3]
    assert refused(target, pack(lines)).extra["line"] == 4


def test_a_file_cut_at_a_line_boundary_is_refused(good: bytes, target: Certwarden) -> None:
    assert "trailer is missing" in refused(target, pack(unpack(good)[:-3])).detail


def test_an_event_type_this_version_does_not_know_is_refused(
    good: bytes, target: Certwarden
) -> None:
    objs = objects(good)
    objs[4]["t"] = objs[4]["t"].rsplit(".", 1)[0] + ".Teleported"
    error = refused(target, reseal(objs))
    assert error.extra["line"] == 5 and "unknown event type" in error.detail


def test_a_topic_outside_the_domain_package_is_never_imported(
    good: bytes, target: Certwarden
) -> None:
    objs = objects(good)
    objs[2]["t"] = "antigravity:fly"
    assert "unknown event type" in refused(target, reseal(objs)).detail
    assert "antigravity" not in sys.modules


def test_an_event_with_missing_fields_is_refused(good: bytes, target: Certwarden) -> None:
    objs = objects(good)
    del objs[1]["s"]["name"]  # Organization.Created without its name
    assert refused(target, reseal(objs)).extra["line"] == 2


def test_a_line_over_4_mib_is_refused_naming_it(good: bytes, target: Certwarden) -> None:
    lines = unpack(good)
    lines.insert(2, b"x" * (4 << 20) + b"\n")
    error = refused(target, pack(lines))
    assert error.extra["line"] == 3 and "MiB" in error.detail


def test_an_unknown_format_version_is_refused(good: bytes, target: Certwarden) -> None:
    objs = objects(good)
    objs[0]["format_version"] = 2
    error = refused(target, reseal(objs))
    assert error.extra["line"] == 1 and "format version 2" in error.detail


def test_an_aggregate_of_another_organization_is_refused(good: bytes, target: Certwarden) -> None:
    objs = objects(good)
    policy = next(o for o in objs[1:-1] if o["t"].endswith("Policy.Created"))
    policy["s"]["org_uid"] = "00000000-0000-4000-8000-000000000000"
    assert "does not belong" in refused(target, reseal(objs)).detail


def test_an_aggregate_missing_its_first_event_is_refused(good: bytes, target: Certwarden) -> None:
    objs = objects(good)
    objs = [o for o in objs if not o.get("t", "").endswith("Policy.Created")]
    assert "starts at v" in refused(target, reseal(objs)).detail


def test_a_forged_shared_claim_is_refused(good: bytes, target: Certwarden) -> None:
    objs = objects(good)
    claim = next(o for o in objs[1:-1] if "shared" in o)
    claim["shared"] = "device-dn:cn=someone else"
    assert "does not match its key" in refused(target, reseal(objs)).detail


def test_the_manifest_must_match_the_events(good: bytes, target: Certwarden) -> None:
    lines = unpack(good)
    head = json.loads(lines[0])
    head["event_count"] += 1
    del head["hash"]
    lines[0] = seal(canonical(head), genesis(head["backup_id"]))[0]
    assert refused(target, pack(lines)).extra["line"] == 1


def test_the_hash_chain_is_sha256_over_the_previous_hash_and_the_line(good: bytes) -> None:
    lines = unpack(good)
    first_event = lines[1]
    body = first_event[: first_event.rindex(b',"hash":"')] + b"}"
    start = genesis(json.loads(lines[0])["backup_id"])
    assert json.loads(first_event)["hash"] == hashlib.sha256(start.encode() + body).hexdigest()


class TestCommandLine:
    @pytest.fixture
    def store(self) -> str:
        return "sqlite"

    def env(self, tmp_path: Path, name: str) -> dict[str, str]:
        settings = make_settings("sqlite", tmp_path / name)
        return {"CERTWARDEN_STORE": "sqlite", "CERTWARDEN_DATA_DIR": str(settings.data_dir)}

    def test_backup_then_restore_on_the_command_line_round_trips(
        self, cw: Certwarden, tmp_path: Path
    ) -> None:
        made = populate(cw)
        source = {"CERTWARDEN_STORE": "sqlite", "CERTWARDEN_DATA_DIR": str(cw.settings.data_dir)}
        out = tmp_path / "acme.jsonl.gz"
        runner = CliRunner()
        done = runner.invoke(cli, ["backup", "--org", made["org"], "-o", str(out)], env=source)
        assert done.exit_code == 0, done.output
        assert done.output == ""  # quiet when not a terminal
        done = runner.invoke(cli, ["restore", str(out)], env=self.env(tmp_path, "b"))
        assert done.exit_code == 0, done.output

    def test_a_bad_file_exits_2_naming_the_line(
        self, cw: Certwarden, good: bytes, tmp_path: Path
    ) -> None:
        lines = unpack(good)
        lines[2] = b"{not json\n"
        bad = tmp_path / "bad.jsonl.gz"
        bad.write_bytes(pack(lines))
        done = CliRunner().invoke(cli, ["restore", str(bad)], env=self.env(tmp_path, "c"))
        assert done.exit_code == 2
        assert "line 3" in done.output

    def test_backup_needs_an_organization_or_all(self, tmp_path: Path) -> None:
        done = CliRunner().invoke(cli, ["backup", "-o", str(tmp_path / "x")])
        assert done.exit_code == 2


def test_a_refusal_lists_conflicts_in_its_detail(good: bytes, cw: Certwarden) -> None:
    with pytest.raises(RestoreRefused) as caught:
        services(cw)[1].restore(io.BytesIO(good))
    assert caught.value.conflicts[0] in caught.value.detail


def test_progress_bars_show_on_a_terminal_and_stay_silent_otherwise() -> None:
    shown, hidden = io.StringIO(), io.StringIO()
    for out, terminal in ((shown, True), (hidden, False)):
        console = Console(file=out, force_terminal=terminal, width=100)
        with RichProgress(console) as progress:
            progress.phase("verify", 10)
            progress.advance(10)
            progress.phase("read models", None)
    assert "verify" in shown.getvalue() and "10/10" in shown.getvalue()
    assert hidden.getvalue() == ""


class _Watch:
    """Progress that looks at the target store from outside while the restore runs."""

    def __init__(self, cw: Certwarden) -> None:
        self.cw, self.seen_at_end_of_file = cw, -1

    def phase(self, title: str, total: int | None) -> None:
        return None

    def advance(self, count: int) -> None:  # the last call: every line read and verified
        self.seen_at_end_of_file = self.cw.registry.max_position()


def test_verified_lines_are_in_the_transaction_before_the_end_but_visible_only_after(
    good: bytes, target: Certwarden
) -> None:
    restorer = services(target)[1]
    restorer.batch = 1  # every line goes to the event store as soon as it is verified
    before, watch = target.registry.max_position(), _Watch(target)
    plan, summary = restorer.restore(io.BytesIO(good), progress=watch)
    assert watch.seen_at_end_of_file == before  # written, not committed: nobody sees it yet
    assert target.registry.max_position() == before + summary.events > before + plan.restored // 2


def test_a_bad_last_line_rolls_back_every_line_streamed_before_it(
    good: bytes, target: Certwarden
) -> None:
    lines = unpack(good)
    lines[-2] = lines[-2].replace(b'"t":"', b'"t":"x', 1)  # the last event line
    restorer = services(target)[1]
    restorer.batch = 1
    before = target.registry.max_position()
    with pytest.raises(InvalidInput) as caught:
        restorer.restore(io.BytesIO(pack(lines)))
    assert caught.value.extra["line"] == len(lines) - 1
    assert target.registry.max_position() == before
    with pytest.raises(InvalidInput):  # and it restores cleanly afterwards
        restorer.restore(io.BytesIO(pack(lines)))
    restorer.restore(io.BytesIO(good))
    assert target.registry.max_position() > before


def test_a_conflict_found_after_the_last_line_rolls_back_everything_streamed(
    good: bytes, cw: Certwarden
) -> None:
    restorer = services(cw)[1]  # the source store itself: its organization exists here
    restorer.batch = 1
    before = cw.registry.max_position()
    with pytest.raises(RestoreRefused):
        restorer.restore(io.BytesIO(good))
    assert cw.registry.max_position() == before
