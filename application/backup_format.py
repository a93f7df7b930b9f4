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

import hashlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any
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


@dataclass(frozen=True, slots=True)
class RawEvent:
    """An event line as replay() slices it: the state is the JSON bytes from the file."""

    line: int
    originator_id: UUID
    version: int
    topic: str
    state: bytes


class ChainWriter:
    """Builds event lines and the trailer, chained from the backup's genesis hash."""

    def __init__(self, backup_id: str) -> None:
        self.prev = genesis(backup_id)
        self.count = 0
        self._ids: dict[UUID, bytes] = {}  # str(uuid) is slow; aggregates repeat
        self._topics: dict[str, bytes] = {}

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
        ident = self._ids.get(oid)
        if ident is None:
            if len(self._ids) > 50_000:
                self._ids.clear()
            ident = self._ids[oid] = b'{"id":"' + str(oid).encode() + b'","pos":'
        tail = self._topics.get(topic)
        if tail is None:
            tail = self._topics[topic] = b'"t":' + json.dumps(topic).encode() + b',"v":'
        prev = self.prev.encode()
        head = b"".join(
            (ident, b"%d" % pos, b',"prev":"', prev, b'","s":', state, b",", shared, tail)
        ) + (b"%d" % version)
        digest = hashlib.sha256(prev)
        digest.update(head)
        digest.update(b"}")  # the body is head + "}"; the line puts the hash before that brace
        self.prev = digest.hexdigest()
        self.count += 1
        return b"".join((head, b',"hash":"', self.prev.encode(), b'"}\n'))

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
