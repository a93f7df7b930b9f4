"""Backup file format v1: gzip'd JSON Lines, SHA-256 hash-chained (pure: stdlib only).

Line 1 is the manifest, then one line per event in log order, then a trailer. Every line is a
JSON object whose last member is "hash"; its "body" is the line with `,"hash":"…"` removed:

    hash = sha256(prev_hex + body).hexdigest()

Events and the trailer chain from the genesis hash sha256("certwarden-backup/1\\n" + backup_id):
each line's "prev" is the hash of the line before (the first event's is the genesis). The
manifest (written last, stored first as its own gzip member) has prev = genesis and pins the
chain's end with "last_hash" and "event_count", so editing, deleting, inserting or reordering
any line, or cutting the file short, is detected. Event lines:

    {"id": aggregate uuid, "pos": source position, "prev": …, "s": event state,
     ["shared": reservation key,] "t": event topic, "v": aggregate version, "hash": …}

"s" is the event's state as the eventsourcing JSON transcoder wrote it (uncompressed, not
encrypted), so a backup restores into a store with other compression or cipher settings and
can be read with `zcat | jq`. "shared" marks a uniqueness claim that spans organizations (see
application/backup.py). Writers emit keys sorted, compact, UTF-8.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, BinaryIO
from uuid import UUID

from domain.errors import InvalidInput

FORMAT = "certwarden-backup"
FORMAT_VERSION = 1
MAX_LINE = 4 << 20  # 4 MiB: a certificate event is ~3 KiB; anything this big is not ours
_HASH_TAIL = len(b',"hash":"') + 64 + len(b'"}')
EVENT_KEYS = frozenset({"id", "pos", "prev", "s", "t", "v", "hash"})


class BackupFormatError(InvalidInput):
    """The file is not a valid backup; `line` is the 1-based line number (0: the whole file)."""

    def __init__(self, line: int, detail: str) -> None:
        where = f"line {line}: " if line else ""
        super().__init__(f"{where}{detail}; nothing was written", line=line)
        self.line = line


def genesis(backup_id: str) -> str:
    return hashlib.sha256(f"{FORMAT}/{FORMAT_VERSION}\n{backup_id}".encode()).hexdigest()


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def seal(body: bytes, prev: str) -> tuple[bytes, str]:
    """The line for a canonical body chained to prev, and its hash."""
    digest = hashlib.sha256(prev.encode() + body).hexdigest()
    return body[:-1] + b',"hash":"' + digest.encode() + b'"}\n', digest


@dataclass(frozen=True, slots=True)
class Manifest:
    backup_id: str
    scope: str  # "organization" | "system"
    org_uid: str | None
    org_name: str | None
    event_count: int
    first_position: int | None
    last_position: int | None
    first_time: str | None
    last_time: str | None
    source_position: int  # the source log's head when the backup started
    created_at: str
    certwarden_version: str
    last_hash: str
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    state_encoding: str = "eventsourcing-json"

    def line(self) -> bytes:
        start = genesis(self.backup_id)
        return seal(canonical({"kind": "manifest", **asdict(self), "prev": start}), start)[0]

    @classmethod
    def parse(cls, obj: Any) -> Manifest:
        """Raises BackupFormatError(1, …) for a foreign file or an unknown format version."""
        if not isinstance(obj, dict) or obj.get("kind") != "manifest":
            raise BackupFormatError(1, "the first line is not a certwarden backup manifest")
        if obj.get("format") != FORMAT:
            raise BackupFormatError(1, f"unknown file format {str(obj.get('format'))[:40]!r}")
        if obj.get("format_version") != FORMAT_VERSION:
            raise BackupFormatError(
                1,
                f"unknown format version {str(obj.get('format_version'))[:20]}"
                f" (this certwarden reads version {FORMAT_VERSION})",
            )
        names = {f.name for f in fields(cls)}
        missing = names - obj.keys()
        if missing:
            raise BackupFormatError(1, f"manifest lacks {', '.join(sorted(missing))}")
        manifest = cls(**{k: obj[k] for k in names})
        if manifest.scope not in ("organization", "system") or (
            manifest.scope == "organization" and not isinstance(manifest.org_uid, str)
        ):
            raise BackupFormatError(1, "manifest scope must be an organization or the system")
        return manifest


@dataclass(frozen=True, slots=True)
class EventLine:
    """One verified event line; `state` decoded by the reader's JSON decoder."""

    line: int
    position: int
    originator_id: UUID
    version: int
    topic: str
    state: dict[str, Any]
    shared: str | None


class ChainWriter:
    """Builds event lines and the trailer, chained from the backup's genesis hash."""

    def __init__(self, backup_id: str) -> None:
        self.prev = genesis(backup_id)
        self.count = 0

    def event(
        self, position: int, originator_id: UUID, version: int, topic: str, state_json: bytes
    ) -> bytes:
        return self._event(position, originator_id, version, topic, state_json, None)

    def shared_event(
        self, position: int, originator_id: UUID, version: int, topic: str, state: bytes, key: str
    ) -> bytes:
        return self._event(position, originator_id, version, topic, state, key)

    def _event(
        self, pos: int, oid: UUID, version: int, topic: str, state: bytes, key: str | None
    ) -> bytes:
        shared = b'"shared":' + json.dumps(key, ensure_ascii=False).encode() + b"," if key else b""
        body = b"".join(
            (
                b'{"id":"',
                str(oid).encode(),
                b'","pos":',
                str(pos).encode(),
                b',"prev":"',
                self.prev.encode(),
                b'","s":',
                state,
                b",",
                shared,
                b'"t":',
                json.dumps(topic).encode(),
                b',"v":',
                str(version).encode(),
                b"}",
            )
        )
        line, self.prev = seal(body, self.prev)
        self.count += 1
        return line

    def trailer(self) -> bytes:
        line, self.prev = seal(
            canonical({"count": self.count, "kind": "trailer", "prev": self.prev}), self.prev
        )
        return line


def gzip_member(lines: Iterator[bytes], level: int = 6) -> Iterator[bytes]:
    """Compress lines as one gzip member, chunk by chunk (members concatenate into one file)."""
    packer = zlib.compressobj(level, zlib.DEFLATED, 31)
    buffer: list[bytes] = []
    size = 0
    for line in lines:
        buffer.append(line)
        size += len(line)
        if size >= 1 << 18:
            if out := packer.compress(b"".join(buffer)):
                yield out
            buffer, size = [], 0
    yield packer.compress(b"".join(buffer)) + packer.flush()


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


class ChainReader:
    """Reads and verifies a backup: yields the Manifest, then each EventLine.

    The trailer and the manifest's totals are checked after the last event, so only a
    complete iteration proves the file intact. Raises BackupFormatError (with the line) for
    any defect: gzip damage, a line over 4 MiB, invalid JSON, unexpected members, a broken
    hash chain, a missing or mismatched trailer.
    """

    def __init__(self, loads: Callable[[bytes], Any] = json.loads) -> None:
        self._loads = loads
        self.manifest: Manifest | None = None
        self.last_hash = ""

    def read(self, source: BinaryIO) -> Iterator[Manifest | EventLine]:
        lines = _raw_lines(source)
        first = next(lines, None)
        if first is None:
            raise BackupFormatError(0, "the file is empty")
        head = self._parse(*first)
        self.manifest = manifest = Manifest.parse(head)
        start = genesis(manifest.backup_id)
        digest = hashlib.sha256(start.encode() + self._body(*first)).hexdigest()
        if digest != head["hash"] or head.get("prev") != start:
            raise BackupFormatError(1, "the manifest's hash does not match its content")
        yield manifest
        prev, count, trailer_seen, last_pos = start, 0, False, 0
        first_pos: int | None = None
        for number, raw in lines:
            if trailer_seen:
                raise BackupFormatError(number, "data after the trailer")
            obj = self._parse(number, raw)
            if obj.get("prev") != prev:
                raise BackupFormatError(number, "out of sequence (a line was moved or removed)")
            digest = hashlib.sha256(prev.encode() + self._body(number, raw)).hexdigest()
            if digest != obj.get("hash"):
                raise BackupFormatError(number, "content does not match its hash (edited)")
            prev = digest
            if obj.get("kind") == "trailer":
                if obj.get("count") != count:
                    raise BackupFormatError(number, f"trailer counts {obj.get('count')} events")
                trailer_seen = True
                continue
            event = self._event(number, obj)
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

    def _parse(self, number: int, raw: bytes) -> dict[str, Any]:
        try:
            obj = self._loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BackupFormatError(number, f"not valid JSON ({str(exc)[:80]})") from None
        except Exception as exc:  # noqa: BLE001 - a decoder hook rejecting a value
            raise BackupFormatError(number, f"undecodable value ({str(exc)[:80]})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("hash"), str):
            raise BackupFormatError(number, "not a backup line (a JSON object with a hash)")
        return obj

    @staticmethod
    def _body(number: int, raw: bytes) -> bytes:
        if len(raw) <= _HASH_TAIL + 1 or raw[-_HASH_TAIL - 1 : -67] != b',"hash":"':
            raise BackupFormatError(number, "the hash is not the line's last member")
        return raw[: -_HASH_TAIL - 1] + b"}"

    @staticmethod
    def _event(number: int, obj: dict[str, Any]) -> EventLine:
        keys = obj.keys() - {"shared"}
        if keys != EVENT_KEYS:
            raise BackupFormatError(number, f"unexpected members {sorted(keys ^ EVENT_KEYS)}")
        pos, version, topic, state, shared = (
            obj["pos"],
            obj["v"],
            obj["t"],
            obj["s"],
            obj.get("shared"),
        )
        if not (isinstance(pos, int) and isinstance(version, int) and version >= 1):
            raise BackupFormatError(number, "pos and v must be positive integers")
        if not isinstance(topic, str) or not isinstance(state, dict):
            raise BackupFormatError(number, "t must be a string and s an object")
        if shared is not None and not isinstance(shared, str):
            raise BackupFormatError(number, "shared must be a string")
        try:
            oid = UUID(str(obj["id"]))
        except ValueError:
            raise BackupFormatError(number, "id is not a UUID") from None
        return EventLine(number, pos, oid, version, topic, state, shared)
