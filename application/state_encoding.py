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

from eventsourcing.persistence import Compressor

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


def plain_state(data: bytes) -> bytes:
    """SmallStatesPlain.decompress as a function (no bound-method frame in hot loops)."""
    return data if data[:1] == b"{" else zlib.decompress(data)
