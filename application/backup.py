"""Backups: an organization's (or the whole system's) event history as a verifiable file.

What an organization backup holds: the complete history, in log order, of every aggregate whose
creation event names the organization (the Organization itself, its users, API keys - secret
hashes included, so keys keep working -, certificates, policies, folders) and of its
organization-scoped uniqueness claims (Reservations whose key embeds the organization uid:
`org-dn:`, `policy:`, `user:`). Claims shared across organizations (`device-dn:<dn>`) are
exported only as far as this organization is concerned: its own Claimed / Reclaimed events
and the Released events that ended its hold, each line marked "shared" with the key. Another
organization's claims never leave the store in this organization's file. A system backup
holds every event. Memory stays flat: the log is streamed (the sets kept are of aggregate
ids, not events) and the file is spooled to a temporary file so the manifest,
which counts the events, can come first.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, BinaryIO, Protocol
from uuid import UUID, uuid4

from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from application.allocation import fewer_young_collections
from application.backup_format import (
    GZIP_LEVEL,
    ChainWriter,
    LocalChainRun,
    Manifest,
    genesis,
    gzip_member,
    read_ahead,
)
from application.base import RegistryBase
from application.state_encoding import plain_state, reads_plain
from domain.organization import org_uuid
from domain.reservation import Reservation

RESERVATION = get_topic(Reservation) + "."


class ChainRun(Protocol):
    def feed(self, templates: bytes) -> None:
        """Chain these event-line templates (ChainWriter.templates) and gzip them to the sink."""
        ...

    def finish(self) -> tuple[int, str]:
        """Write the trailer and close the gzip member; returns (event lines, last hash)."""
        ...

    def abort(self) -> None: ...


class Chains(Protocol):
    """Where a backup's hash chain and gzip run: this process (LocalChains), or a helper
    process beside it (the wiring decides; the file is the same byte for byte)."""

    def start(self, prev: str, level: int, sink: BinaryIO) -> ChainRun: ...


class LocalChains:
    def start(self, prev: str, level: int, sink: BinaryIO) -> ChainRun:
        return LocalChainRun(prev, level, sink)


class Progress(Protocol):
    """Where long operations report how far they are (a terminal bar, or nothing)."""

    def phase(self, title: str, total: int | None) -> None: ...

    def advance(self, count: int) -> None: ...


class NoProgress:
    def phase(self, title: str, total: int | None) -> None:
        return None

    def advance(self, count: int) -> None:
        return None


Row = tuple[int, str, int, str, bytes]  # position, aggregate id (canonical text), version,
# topic, stored state


class EventStoreBulk(Protocol):
    """Backup and restore's port to the event store: bulk reads, existence, one-shot insert."""

    def pages(self, after: int, upto: int) -> Iterator[list[Row]]:
        """Every stored event with after < position <= upto, in position order, in pages
        (each a few thousand rows: memory stays flat)."""
        ...

    def existing(self, ids: Iterable[UUID]) -> set[UUID]:
        """The given aggregate ids that have at least one stored event."""
        ...

    def insert_atomically(
        self,
        batches: Iterable[Sequence[StoredEvent]],
        started: Callable[[int], None] | None = None,
    ) -> int:
        """Insert every batch in ONE transaction, in order (new positions follow that order).

        Where positions are known before the first event is written (PostgreSQL), calls
        `started(base)` first: the events take base + 1, base + 2, ... in order.
        If the iterable or the database raises, nothing is written. Returns the event count.
        Raises eventsourcing IntegrityError when an (id, version) already exists.
        """
        ...


@dataclass(frozen=True, slots=True)
class Summary:
    """What a backup or restore did: events, seconds, events per second."""

    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def certwarden_version() -> str:
    try:
        return metadata.version("certwarden")
    except metadata.PackageNotFoundError:
        return "unknown"


def timestamp_text(state_json: bytes) -> str:
    """The event time recorded in a transcoded state, as fixed-width UTC text."""
    value = datetime.fromisoformat(json.loads(state_json)["timestamp"]["_data_"])
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


class _OrgSelector:
    """Decides, event by event in log order, what belongs to one organization's backup."""

    def __init__(self, app: RegistryBase, org_uid: str) -> None:
        self.app = app
        self.org_uid = org_uid
        self.org_id = str(org_uuid(org_uid))
        self.members: set[str] = set()  # aggregate ids as text, like the rows
        self.shared_keys: dict[str, str] = {}  # shared claims this organization ever held
        self.holding: dict[str, bool] = {}  # ... and whether it holds them at this point

    def pick(self, oid: str, version: int, topic: str, plain: bytes) -> tuple[bool, str | None]:
        """(include?, shared key) for an event not yet known to be a member's."""
        if topic.startswith(RESERVATION):
            return self._reservation(oid, version, json.loads(plain))
        if version != 1:
            return False, None
        if oid == self.org_id or json.loads(plain).get("org_uid") == self.org_uid:
            self.members.add(oid)
            return True, None
        return False, None

    def _reservation(
        self, oid: str, version: int, state: dict[str, Any]
    ) -> tuple[bool, str | None]:
        claimer = state.get("org_uid")
        if version == 1 and claimer and claimer in state["key"]:  # organization-scoped key
            if claimer == self.org_uid:
                self.members.add(oid)
                return True, None
            return False, None
        if "org_uid" in state:  # Claimed or Reclaimed
            mine = claimer == self.org_uid
            if oid in self.holding or mine:
                self.holding[oid] = mine
            if not mine:
                return False, None
            if oid not in self.shared_keys:
                key = state.get("key")
                if key is None:  # reclaimed a key first claimed by someone else: look it up
                    found = self.app.find(Reservation, UUID(oid))
                    key = found.key if found is not None else ""
                self.shared_keys[oid] = str(key)
            return True, self.shared_keys[oid]
        if self.holding.get(oid):  # Released: ends this organization's hold
            self.holding[oid] = False
            return True, self.shared_keys[oid]
        return False, None


class Backups:
    """Backup and restore of event history (restore lives in application/restore.py)."""

    def __init__(
        self,
        app: RegistryBase,
        store: EventStoreBulk,
        gzip_level: int = GZIP_LEVEL,
        chains: Chains | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.gzip_level = gzip_level  # see backup_format.GZIP_LEVEL
        self.chains = chains or LocalChains()

    def plain_state(self, state: bytes) -> bytes:
        """Stored bytes -> the transcoder's JSON (undo this store's cipher and compression)."""
        if self.app.mapper.cipher is not None:
            state = self.app.mapper.cipher.decrypt(state)
        if self.app.mapper.compressor is not None:
            state = self.app.mapper.compressor.decompress(state)
        return state

    def _plain(self) -> Callable[[bytes], bytes]:
        """plain_state, or one function call per event for this store's usual encodings (no
        cipher; this project's codec or the library's ZlibCompressor, both of which the codec's
        plain_state reads) instead of three frames."""
        if reads_plain(self.app.mapper):
            return plain_state
        return self.plain_state

    def stored_state(self, plain: bytes) -> bytes:
        if self.app.mapper.compressor is not None:
            plain = self.app.mapper.compressor.compress(plain)
        if self.app.mapper.cipher is not None:
            plain = self.app.mapper.cipher.encrypt(plain)
        return plain

    @fewer_young_collections()
    def backup(
        self, sink: BinaryIO, org_uid: str | None, progress: Progress | None = None
    ) -> tuple[Manifest, Summary]:
        """Write a complete backup file to sink: one organization's, or the system's (None).

        Consistent as of the log head when it starts (later events are left out). Raises
        NotFound for an unknown organization (before writing anything).

        Stages overlap: the next pages are read on a thread (the database wait releases the
        GIL) while this one selects a page's events and turns them into line templates, and
        `chains` hashes them into lines and gzips them - in a helper process when the wiring
        gives one, so the sequential SHA-256 chain runs on the other core.
        """
        progress = progress or NoProgress()
        started = time.perf_counter()
        org_name = self.app.organization(org_uid).name if org_uid else None
        head = self.app.max_position()
        selector = _OrgSelector(self.app, org_uid) if org_uid else None
        backup_id = str(uuid4())
        lines = ChainWriter(backup_id)  # templates here; the chain where `chains` runs it
        edges: dict[str, tuple[int, bytes]] = {}
        progress.phase("backup", head)
        with tempfile.TemporaryFile(prefix="certwarden-backup-") as spool:
            run = self.chains.start(genesis(backup_id), self.gzip_level, spool)
            try:
                for rows in read_ahead(self._plain_pages(self.store.pages(0, head))):
                    run.feed(lines.templates(*self._included(rows, selector, edges, progress)))
                count, last_hash = run.finish()
            except BaseException:
                run.abort()
                raise
            if count != lines.templated:
                raise RuntimeError(f"backup chain wrote {count} of {lines.templated} lines")
            first, last = edges.get("first"), edges.get("last")
            manifest = Manifest(
                backup_id=backup_id,
                scope="organization" if org_uid else "system",
                org_uid=org_uid,
                org_name=org_name,
                event_count=count,
                first_position=first[0] if first else None,
                last_position=last[0] if last else None,
                first_time=timestamp_text(first[1]) if first else None,
                last_time=timestamp_text(last[1]) if last else None,
                source_position=head,
                created_at=datetime.now().astimezone().isoformat(),
                certwarden_version=certwarden_version(),
                last_hash=last_hash,
            )
            for chunk in gzip_member(iter([manifest.line()])):
                sink.write(chunk)
            spool.seek(0)
            shutil.copyfileobj(spool, sink, 1 << 20)
        sink.flush()
        return manifest, Summary(manifest.event_count, time.perf_counter() - started)

    def _plain_pages(self, pages: Iterator[list[Row]]) -> Iterator[list[Row]]:
        """The pages, in order, with every state made plain by two worker threads while the
        read-ahead thread fetches the next pages (zlib releases the GIL: decompression, the
        costliest step per event, runs beside the thread building the lines)."""
        plain_state = self._plain()

        def plain(rows: list[Row]) -> list[Row]:
            return [(p, oid, v, topic, plain_state(state)) for p, oid, v, topic, state in rows]

        with ThreadPoolExecutor(2, thread_name_prefix="backup-inflate") as pool:
            pending: deque[Future[list[Row]]] = deque()
            try:
                for rows in pages:
                    pending.append(pool.submit(plain, rows))
                    if len(pending) > 2:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for job in pending:
                    job.cancel()

    def _included(
        self,
        rows: list[Row],
        selector: _OrgSelector | None,
        edges: dict[str, tuple[int, bytes]],
        progress: Progress,
    ) -> tuple[list[Row], dict[int, str]]:
        """The page's events that belong in the backup, with their plain state, and the shared
        keys of cross-organization claims by position; records the first and last included."""
        kept: list[Row] = rows
        shared: dict[int, str] = {}
        if selector is not None:
            members = selector.members
            kept = []
            for row in rows:  # states already plain
                if row[1] not in members:
                    position, oid, version, topic, plain = row
                    if version != 1 and not topic.startswith(RESERVATION):
                        continue  # not a member, and only creation events can make one
                    include, key = selector.pick(oid, version, topic, plain)
                    if not include:
                        continue
                    if key is not None:
                        shared[position] = key
                kept.append(row)
        if kept:
            edges.setdefault("first", (kept[0][0], kept[0][4]))
            edges["last"] = (kept[-1][0], kept[-1][4])
        progress.advance(len(rows))
        return kept, shared
