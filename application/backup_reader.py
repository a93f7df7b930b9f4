"""Reading backup files (format: application/backup_format.py), verifying every line.

Event lines must be in the writer's exact canonical layout, which read() checks byte for byte
(prefix, the state as one JSON value, suffix), so the state's bytes it hands on (what a restore
stores) are exactly what it verified.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO, cast
from uuid import UUID

from isal import isal_zlib

from application.backup_format import (
    MAX_LINE,
    BackupFormatError,
    EventLine,
    Manifest,
    genesis,
)

# isal's stub declares `error` as an instance; it is an exception class (IsalError)
_GZIP_ERRORS: tuple[type[Exception], ...] = (zlib.error, cast(type[Exception], isal_zlib.error))
_TAIL = len(b',"hash":"') + 64 + len(b'"}')
_HEAD = re.compile(r'\{"id":"([0-9a-f-]{36})","pos":(0|[1-9][0-9]*),"prev":"([0-9a-f]{64})","s":')
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'  # a JSON string, unrolled: ~3x the speed of (?:a|b)*
_END = re.compile(rf'(?:,"shared":({_STRING}))?,"t":({_STRING}),"v":([1-9][0-9]*)\}}')


def _raw_lines(source: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) from a gzip stream; raises BackupFormatError naming the line.

    Inflates 1 MiB reads and splits them (GzipFile.readline costs ~4 us a line in Python
    frames); concatenated gzip members are one stream, as gzip(1) reads them."""
    number, carry = 0, b""
    pending = b""  # compressed bytes not inflated yet
    unpacker: Any = None
    try:
        while packed := pending or source.read(1 << 20):
            if unpacker is None:
                packed = packed.lstrip(b"\0")  # zero padding between members, as gzip reads
                if not packed:
                    continue
                unpacker = isal_zlib.decompressobj(31)  # ISA-L: ~2.5x zlib's speed
            # at most 4 MiB out per call: a small file cannot inflate into a huge buffer
            text = carry + unpacker.decompress(packed, MAX_LINE)
            pending = unpacker.unconsumed_tail
            if unpacker.eof:
                pending, unpacker = unpacker.unused_data, None
            lines = text.split(b"\n")
            carry = lines.pop()
            for line in lines:
                number += 1
                if len(line) >= MAX_LINE:
                    raise BackupFormatError(number, f"longer than {MAX_LINE >> 20} MiB")
                yield number, line + b"\n"
            if len(carry) >= MAX_LINE:
                raise BackupFormatError(number + 1, f"longer than {MAX_LINE >> 20} MiB")
    except _GZIP_ERRORS as exc:
        raise BackupFormatError(number + 1, f"not a readable gzip stream ({exc})") from None
    if unpacker is not None:
        raise BackupFormatError(number + 1, "the gzip stream ends early (truncated)")
    if carry:
        raise BackupFormatError(number + 1, "incomplete last line (file cut short)")


def _body(number: int, raw: bytes) -> bytes:
    """The line without its `,"hash":"…"` member (what the hash covers)."""
    if len(raw) <= _TAIL + 1 or raw[-_TAIL - 1 : -67] != b',"hash":"' or raw[-3:] != b'"}\n':
        raise BackupFormatError(number, "not a backup line (the hash must be its last member)")
    return raw[: -_TAIL - 1] + b"}"


class ChainReader:
    """Reads and verifies a backup: read() yields the Manifest, then each EventLine.

    The trailer and the manifest's totals are checked after the last event, so only a
    complete iteration proves the file intact. Raises BackupFormatError (with the line) for
    any defect: gzip damage, a line over 4 MiB, invalid JSON or layout, a broken hash
    chain, a missing or mismatched trailer or manifest.
    """

    def __init__(self, decoder: json.JSONDecoder | None = None) -> None:
        self._decoder = decoder or json.JSONDecoder()
        self.manifest: Manifest | None = None
        self.last_hash = ""
        self._ids: dict[str, UUID] = {}  # aggregates repeat: parse each id once
        self._strings: dict[str, str] = {}  # topics and shared keys, as JSON -> text

    def _manifest(self, lines: Iterator[tuple[int, bytes]]) -> tuple[Manifest, str]:
        first = next(lines, None)
        if first is None:
            raise BackupFormatError(0, "the file is empty")
        head = self._json(*first)
        self.manifest = manifest = Manifest.parse(head)
        start = genesis(manifest.backup_id)
        digest = hashlib.sha256(start.encode() + _body(*first)).hexdigest()
        if digest != head.get("hash") or head.get("prev") != start:
            raise BackupFormatError(1, "the manifest's hash does not match its content")
        return manifest, start

    def read(self, source: BinaryIO) -> Iterator[Manifest | EventLine]:
        lines = _raw_lines(source)
        manifest, prev = self._manifest(lines)
        yield manifest
        count, trailer_seen, first_pos, last_pos = 0, False, None, 0
        for number, raw in lines:
            if trailer_seen:
                raise BackupFormatError(number, "data after the trailer")
            body = _body(number, raw)
            line_prev: Any
            if body.startswith(b'{"id":"'):
                event, line_prev = self._event(number, body)
            elif body.startswith(b'{"count":'):
                trailer = self._json(number, raw)
                event, line_prev = None, trailer.get("prev")
            else:
                raise BackupFormatError(number, "neither an event nor the trailer")
            if line_prev != prev:
                raise BackupFormatError(number, "out of sequence (a line was moved or removed)")
            prev = hashlib.sha256(prev.encode() + body).hexdigest()
            if prev != raw[-67:-3].decode():
                raise BackupFormatError(number, "content does not match its hash (edited)")
            if event is None:
                if trailer.get("kind") != "trailer" or trailer.get("count") != count:
                    raise BackupFormatError(number, f"the trailer counts {trailer.get('count')}")
                trailer_seen = True
                continue
            if event.position <= last_pos:
                raise BackupFormatError(number, "positions are not in log order")
            first_pos = event.position if first_pos is None else first_pos
            last_pos, count = event.position, count + 1
            yield event
        if not trailer_seen:
            raise BackupFormatError(0, "the trailer is missing (file cut short)")
        expected = (manifest.event_count, manifest.last_hash, manifest.first_position)
        if (count, prev, first_pos) != expected or (last_pos or None) != manifest.last_position:
            raise BackupFormatError(1, "the manifest does not match the events in the file")
        self.last_hash = prev

    def _json(self, number: int, raw: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BackupFormatError(number, f"not valid JSON ({str(exc)[:80]})") from None
        if not isinstance(obj, dict):
            raise BackupFormatError(number, "not a JSON object")
        return obj

    def _event(self, number: int, body: bytes) -> tuple[EventLine, str]:
        """Parse an event line in the writer's exact layout; returns it and its prev."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BackupFormatError(number, "not UTF-8") from None
        head = _HEAD.match(text)
        if head is None:
            raise BackupFormatError(number, "not an event line in the canonical layout")
        try:
            state, end = self._decoder.raw_decode(text, head.end())
        except ValueError as exc:
            raise BackupFormatError(number, f"not valid JSON ({str(exc)[:80]})") from None
        except Exception as exc:  # noqa: BLE001 - a decoder hook rejecting a value
            raise BackupFormatError(number, f"undecodable value ({str(exc)[:80]})") from None
        tail = _END.fullmatch(text, end)
        if not isinstance(state, dict) or tail is None:
            raise BackupFormatError(number, "not an event line in the canonical layout")
        try:
            oid = self._ids.get(head.group(1)) or self._uuid(head.group(1))
            shared = self._string(tail.group(1)) if tail.group(1) else None
            topic = self._string(tail.group(2))
        except ValueError:
            raise BackupFormatError(number, "invalid id, topic or shared key") from None
        start = head.end()  # the head is ASCII: the same offset in bytes
        state_json = body[start:end] if len(body) == len(text) else text[start:end].encode()
        event = EventLine(
            number, int(head.group(2)), oid, int(tail.group(3)), topic, state, shared, state_json
        )
        return event, head.group(3)

    def _uuid(self, text: str) -> UUID:
        if len(self._ids) > 50_000:
            self._ids.clear()
        self._ids[text] = found = UUID(text)
        return found

    def _string(self, literal: str) -> str:
        found = self._strings.get(literal)
        if found is None:
            if len(self._strings) > 50_000:
                self._strings.clear()
            found = self._strings[literal] = str(json.loads(literal))
        return found
