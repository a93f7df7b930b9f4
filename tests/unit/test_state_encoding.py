"""Event states: small ones stored as the transcoder's JSON, big ones deflated, old ones read."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from eventsourcing.compressor import ZlibCompressor

from application.bootstrap import bootstrap
from application.state_encoding import COMPRESS_FROM, SmallStatesPlain, plain_state
from domain.meta import Actor, ActorKind
from tests import factories as f
from tests.conftest import make_settings

ADMIN = Actor(ActorKind.API_KEY, "key-1", "user-1", "req-1", "127.0.0.1")


def state_of(size: int) -> bytes:
    return json.dumps({"name": "x" * max(size - 12, 0)}, separators=(",", ":")).encode()


def test_a_small_state_is_stored_as_it_is() -> None:
    state = state_of(200)
    assert SmallStatesPlain().compress(state) == state


def test_a_big_state_is_deflated_and_reads_back() -> None:
    codec = SmallStatesPlain()
    state = state_of(COMPRESS_FROM * 4)
    stored = codec.compress(state)
    assert len(stored) < len(state) // 4
    assert codec.decompress(stored) == state == plain_state(stored)


def test_a_small_state_that_is_not_a_json_object_is_still_deflated() -> None:
    codec = SmallStatesPlain()
    stored = codec.compress(b"[1,2,3]")
    assert stored != b"[1,2,3]"
    assert codec.decompress(stored) == b"[1,2,3]"


def test_states_written_by_the_library_zlib_compressor_still_read() -> None:
    state = state_of(300)
    assert SmallStatesPlain().decompress(ZlibCompressor().compress(state)) == state
    assert SmallStatesPlain().decompress(zlib.compress(state, 9)) == state


def test_the_store_keeps_a_rename_plain_and_an_import_deflated(tmp_path: Path) -> None:
    cw = bootstrap(make_settings("sqlite", tmp_path))
    try:
        actor = ADMIN
        org = cw.registry.create_organization(f"org-{f.unique_cn()}", actor).uid
        done = cw.registry.import_certificates(
            org, f.make_self_signed_leaf(f.unique_cn()).pem, actor
        )
        cert = cw.registry.certificate(org, done[0].certificate_id)
        cert.rename("renamed", actor.meta())
        cw.registry.commit(cert)
        stored = cw.registry.recorder.select_events(cert.id)
        assert stored[0].state[:1] != b"{"  # the import: PEM and facts, over COMPRESS_FROM
        assert stored[-1].state[:1] == b"{"  # the rename
        assert cw.registry.certificate(org, cert.id).name == "renamed"
    finally:
        cw.close()
