"""How event states are stored: zlib where it pays, the transcoder's JSON as it is where not.

Most events are small (a rename, a status change, a pin: 150-400 bytes of JSON). zlib saves
about a quarter of such a state and costs, per event, ~7 us to compress (a deflate state per
call) and ~2.3 us to inflate on every read: aggregate loads, read-model catch-up, backup.
Certificate imports carry PEM text and compress well, so states from COMPRESS_FROM bytes up
are deflated (4 KiB window: the same bytes as a 32 KiB window for states this size, a fraction
of the setup cost), smaller ones are stored as they are.

Reading tells the two apart by the first byte: the transcoder writes a JSON object, so a plain
state starts with "{" (0x7B); a zlib stream starts with its CMF byte, whose low nibble is 8
(deflate), never 0xB. States written by the library's ZlibCompressor (every state of a store
made before this codec) read as before.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import orjson
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.persistence import Compressor, JSONTranscoder

COMPRESS_FROM = 1024


class SmallStatesPlain(Compressor):
    def compress(self, data: bytes) -> bytes:
        if len(data) < COMPRESS_FROM and data[:1] == b"{":
            return data
        return deflate(data)

    def decompress(self, data: bytes) -> bytes:
        return plain_state(data)


def deflate(data: bytes) -> bytes:
    """zlib with a 4 KiB window (see above); zlib.decompress reads it like any zlib stream."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 12, 4)
    return packer.compress(data) + packer.flush()


def reads_plain(mapper: Any) -> bool:
    """Whether plain_state alone turns this store's stored states into the transcoder's JSON:
    no cipher, and this codec or the library's ZlibCompressor (whose states it reads too)."""
    return mapper.cipher is None and type(mapper.compressor) in (SmallStatesPlain, ZlibCompressor)


def plain_state(data: bytes) -> bytes:
    """SmallStatesPlain.decompress as a function (no bound-method frame in hot loops)."""
    return data if data[:1] == b"{" else zlib.decompress(data)


class _Slow(Exception):
    """A value orjson may read differently from the standard library (a float: orjson reads
    an integer wider than 64 bits as one), or a shape the fast path does not handle."""


_NESTED = frozenset({dict, list, float})


def fast_decoder(transcoder: Any) -> Callable[[bytes], Any] | None:
    """The transcoder's `decode` at ~2x the speed, or None where that cannot be promised.

    orjson parses; its dicts are then revived bottom-up exactly as the library's object hook
    does ({"_type_": name, "_data_": value} -> the registered transcoding's decode). Whatever
    orjson might read differently from `json` - any float (an integer over 64 bits comes out
    of orjson as one), NaN, a lone surrogate, deep nesting - and any error goes to the
    transcoder itself, so the result (or the exception) is always the library's own.
    One difference is left: with a key repeated in one object, orjson keeps the last value
    without looking at the first, where the library's hook also decodes (and may reject) the
    first. The transcoder never writes repeated keys, and a restore verifies every state
    with the library's own decoder, so stored states have none; this is for reading stored
    states, not for verifying untrusted input."""
    if type(transcoder) is not JSONTranscoder:
        return None
    names = transcoder.names
    slow = transcoder.decode

    def value(v: Any) -> Any:
        kind = type(v)
        if kind is dict:
            return revive(v)
        if kind is list:
            for i, item in enumerate(v):
                if type(item) in _NESTED:
                    v[i] = value(item)
            return v
        raise _Slow

    def revive(d: dict[str, Any]) -> Any:
        for k, v in d.items():
            if type(v) in _NESTED:
                d[k] = value(v)  # replacing a value while iterating is allowed
        if len(d) == 2 and "_type_" in d and "_data_" in d:
            return names[d["_type_"]].decode(d["_data_"])
        return d

    def decode(data: bytes) -> Any:
        try:
            found = orjson.loads(data)
            return value(found) if type(found) in _NESTED else found
        except Exception:  # noqa: BLE001 - the library decides, and raises its own error
            return slow(data)

    return decode
