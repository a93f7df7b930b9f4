"""Reading backup files (format: application/backup_format.py): verify everything, or re-read.

Event lines must be in the writer's exact canonical layout, which read() checks byte for byte
(prefix, the state as one JSON value, suffix); replay() can then slice states out of the bytes
without parsing them, and what it slices is exactly what read() verified.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Container, Iterator
from typing import Any, BinaryIO
from uuid import UUID

from application.backup_format import (
    MAX_LINE,
    BackupFormatError,
    EventLine,
    Manifest,
    RawEvent,
    genesis,
)

_TAIL = len(b',"hash":"') + 64 + len(b'"}')
_HEAD = re.compile(r'\{"id":"([0-9a-f-]{36})","pos":(0|[1-9][0-9]*),"prev":"([0-9a-f]{64})","s":')
_STRING = r'"(?:[^"\\]|\\.)*"'
_END = re.compile(rf'(?:,"shared":({_STRING}))?,"t":({_STRING}),"v":([1-9][0-9]*)\}}')


def _raw_lines(source: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) from a gzip stream; raises BackupFormatError naming the line."""
    number = 0
    try:
        with gzip.GzipFile(fileobj=source, mode="rb") as unpacked:
            while line := unpacked.readline(MAX_LINE + 1):
                number += 1
                if len(line) > MAX_LINE:
                    raise BackupFormatError(number, f"longer than {MAX_LINE >> 20} MiB")
                if not line.endswith(b"\n"):
                    raise BackupFormatError(number, "incomplete last line (file cut short)")
                yield number, line
    except EOFError:
        raise BackupFormatError(number + 1, "the gzip stream ends early (truncated)") from None
    except (OSError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise BackupFormatError(number + 1, f"not a readable gzip stream ({exc})") from None


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

    def replay(self, source: BinaryIO, skip: Container[UUID] = ()) -> Iterator[RawEvent]:
        """Second reading of a file read() fully verified: no JSON parsing, just slicing.

        Recomputes the chain over every line; `last_hash` then equals read()'s only if no
        byte changed in between (the caller compares). Events of aggregates in `skip` are
        hashed but not yielded; they must include every aggregate with "shared" lines.
        """
        lines = _raw_lines(source)
        _, prev = self._manifest(lines)
        ids: dict[bytes, UUID] = {}
        topics: dict[bytes, str] = {}
        for number, raw in lines:
            body = _body(number, raw)
            prev = hashlib.sha256(prev.encode() + body).hexdigest()
            if not body.startswith(b'{"id":"'):
                continue  # the trailer
            oid = ids.get(body[7:43])
            if oid is None:
                if len(ids) > 50_000:
                    ids.clear()
                oid = ids[body[7:43]] = UUID(body[7:43].decode())
            if oid in skip:
                continue
            t, v = body.rindex(b',"t":'), body.rindex(b',"v":')
            topic = topics.get(body[t + 5 : v])
            if topic is None:
                topic = topics[body[t + 5 : v]] = json.loads(body[t + 5 : v])
            start = body.index(b',"prev":"', 43) + len(b',"prev":"') + 64 + len(b'","s":')
            yield RawEvent(number, oid, int(body[v + 5 : -1]), topic, body[start:t])
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
        event = EventLine(number, int(head.group(2)), oid, int(tail.group(3)), topic, state, shared)
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
