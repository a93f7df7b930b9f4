"""Event states: small ones stored as the transcoder's JSON, big ones deflated, old ones read."""

from __future__ import annotations

import json
import zlib
from datetime import UTC
from pathlib import Path

import hypothesis
import pytest
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, UUIDAsHex
from hypothesis import strategies as st

from application.bootstrap import bootstrap
from application.state_encoding import COMPRESS_FROM, SmallStatesPlain, fast_decoder, plain_state
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


# -- the fast decoder: always the library's result, or the library's error -----------------
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # wider than 64 bits too
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
_VALUES = st.recursive(
    _SCALARS
    | st.datetimes(timezones=st.just(UTC))
    | st.uuids()
    | st.decimals(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def transcoder() -> JSONTranscoder:
    t = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DatetimeAsISO(), DecimalAsStr()):
        t.register(transcoding)
    return t


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(_VALUES)
def test_the_fast_decoder_reads_what_the_transcoder_wrote_as_the_transcoder_does(
    value: object,
) -> None:
    t = transcoder()
    data = t.encode({"v": value})
    decode = fast_decoder(t)
    assert decode is not None
    assert repr(decode(data)) == repr(t.decode(data))  # repr: NaN != NaN, -0.0 == 0.0


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":123456789012345678901234567890}',  # orjson reads this as a float
        b'{"a":1e400}',
        b'{"a":NaN}',
        b'{"a":"\\ud800"}',  # a lone surrogate
        b'{"a":{"_type_":"uuid_hex","_data_":"' + b"0" * 32 + b'"},"b":[1.5,{"x":2}]}',
        b'{"a":1,"a":2}',
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_the_fast_decoder_agrees_on_the_edges(data: bytes) -> None:
    t = transcoder()
    decode = fast_decoder(t)
    assert decode is not None
    try:
        expected = repr(t.decode(data))
    except Exception as exc:  # noqa: BLE001 - then the fast one raises the same
        with pytest.raises(type(exc)):
            decode(data)
        return
    assert repr(decode(data)) == expected


@pytest.mark.parametrize(
    "data",
    [b'{"a":', b'{"_type_":"no-such-type","_data_":1}', b'{"a":"\xff"}', b"", b"{}x"],
)
def test_the_fast_decoder_raises_the_transcoders_error(data: bytes) -> None:
    t = transcoder()
    decode = fast_decoder(t)
    assert decode is not None
    with pytest.raises(Exception) as slow:
        t.decode(data)
    with pytest.raises(type(slow.value)):
        decode(data)


def test_the_fast_decoder_is_not_offered_for_another_transcoder() -> None:
    class Other(JSONTranscoder):
        pass

    assert fast_decoder(Other()) is None
