"""Restore: replay a verified backup file into this store, all or nothing.

The file is read once, verified line by line (hash chain, known event types, event fields,
each aggregate's versions contiguous from 1, every aggregate belonging to the file's
organization), cut at --until / --until-position (a prefix), and each line to restore goes to
the EventStoreBulk port as soon as it is verified: ONE transaction of the event store takes
them (events keep their ids, versions, topics and states - hence timestamps - and get new
positions in file order), with the store's writers held off (PostgreSQL: its table lock) from
the first line on. Only after the last line - the trailer and the manifest's totals checked -
is this store checked: the file's aggregates must not exist here, and each cross-organization
uniqueness claim the restored organization holds (device DNs) must be free here. Any defect or
conflict raises inside the transaction, which then rolls back: a refused restore, with a
report of every conflict, leaves nothing written. Shared claims are never copied verbatim
(their version history interleaves other organizations'): restore writes a fresh claim
(Reservation.Claimed, or Reclaimed on a released one) last in the same transaction. Read models
follow: where the projection runner offers a feed (ProjectionSync.expect: a new PostgreSQL
store), each event to restore is sent to it as it is written, and the feed commits its read
models only after this transaction has (RestoreFeed.commit), or never (abort); otherwise, and
for whatever the feed did not fill, they catch up on the appended events. `verify` is the same
reading without a transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO
from uuid import UUID

from eventsourcing.compressor import ZlibCompressor
from eventsourcing.persistence import IntegrityError, JSONTranscoder, StoredEvent
from eventsourcing.utils import get_topic

from application.allocation import fewer_young_collections
from application.backup import Backups, NoProgress, Progress, Summary
from application.backup_format import BackupFormatError, EventLine, Manifest
from application.backup_reader import ChainReader
from application.organizations import BOOTSTRAP_KEY
from application.ports import RestoreFeed
from application.restore_rules import Cut, topic_info
from application.state_encoding import SmallStatesPlain, deflate
from domain.errors import Conflict, InvalidInput
from domain.organization import Organization
from domain.reservation import Reservation, reservation_id

BATCH = 5000
ORGANIZATION = get_topic(Organization)
SETTLE_SECONDS = 600.0  # how long a restore waits for read models to catch up


class RestoreRefused(Conflict):
    """The file is valid but restoring it would break a rule here; `conflicts` lists each."""

    def __init__(self, conflicts: list[str]) -> None:
        shown = conflicts[:200] + (
            [f"... and {len(conflicts) - 200} more"] * (len(conflicts) > 200)
        )
        super().__init__(
            f"restore refused, nothing was written ({len(conflicts)} conflict(s)): "
            + "; ".join(shown),
            conflicts=conflicts,
        )
        self.conflicts = conflicts


@dataclass
class _Claim:
    key: str
    owner: str | None = None
    org_uid: str | None = None


@dataclass
class Plan:
    """What pass 1 found: the manifest, the cut, and what to write besides the file's events."""

    manifest: Manifest
    events_in_file: int = 0
    last_line: int = 1  # lines 2..last_line are restored
    restored: int = 0
    cut_position: int | None = None
    cut_time: str | None = None
    last_hash: str = ""
    owned: dict[UUID, tuple[str, int]] = field(default_factory=dict)  # id -> (aggregate, version)
    claims: dict[UUID, _Claim] = field(default_factory=dict)  # shared claims at the cut
    organizations: set[UUID] = field(default_factory=set)
    claim_events: list[StoredEvent] = field(default_factory=list, repr=False)  # to write too


class Restorer:
    def __init__(self, backups: Backups, batch: int = BATCH) -> None:
        self.backups = backups
        self.app = backups.app
        self.batch = batch

    def _reader(self) -> ChainReader:
        """A reader whose JSON decoder also revives the transcoder's types (datetime, UUID...)."""
        return ChainReader(self._transcoders_decoder())

    def _transcoders_decoder(self) -> json.JSONDecoder | None:
        decoder = getattr(self.app.mapper.transcoder, "decoder", None)
        return decoder if isinstance(decoder, json.JSONDecoder) else None

    def _revived(self) -> bool:
        """Whether a verified line's state is exactly what the transcoder decodes it to (its
        own decoder read it, and nothing but the transcoder stands between)."""
        return type(self.app.mapper.transcoder) is JSONTranscoder and (
            self._transcoders_decoder() is not None
        )

    # -- verifying (and writing as it goes) ------------------------------------------
    @fewer_young_collections()
    def verify(
        self,
        source: BinaryIO,
        until: datetime | None = None,
        until_position: int | None = None,
        progress: Progress | None = None,
    ) -> Plan:
        """Verify the whole file and check this store. Raises BackupFormatError (bad file),
        RestoreRefused (conflicts here, every one listed). Reads the file once; writes nothing."""
        progress = progress or NoProgress()
        plan, lines = self._verifying(source, until, until_position, progress, "verify")
        for _ in lines:
            pass
        return plan

    def _verifying(
        self,
        source: BinaryIO,
        until: datetime | None,
        until_position: int | None,
        progress: Progress,
        title: str,
    ) -> tuple[Plan, Iterator[EventLine]]:
        """The plan (its manifest read and checked) and the lines to restore, each yielded
        once it is verified; the plan is complete, and this store checked, only when the
        lines are exhausted without an error."""
        reader = self._reader()
        records = reader.read(source)
        manifest = next(records)
        assert isinstance(manifest, Manifest)
        plan = Plan(manifest)
        progress.phase(title, manifest.event_count)
        return plan, self._verified(reader, records, plan, Cut(until, until_position), progress)

    def _verified(
        self,
        reader: ChainReader,
        records: Iterator[Manifest | EventLine],
        plan: Plan,
        cut: Cut,
        progress: Progress,
    ) -> Iterator[EventLine]:
        manifest = plan.manifest
        bounded = cut.until is not None or cut.until_position is not None
        versions: dict[UUID, tuple[str, int]] = {}
        shared: dict[UUID, str] = {}
        last_time: datetime | None = None
        for record in records:
            assert isinstance(record, EventLine)
            reservation, claim = self._check(record, manifest, versions, shared)
            plan.events_in_file += 1
            if plan.events_in_file % 1000 == 0:
                progress.advance(1000)
            if bounded and not cut.admits(record, reservation):
                continue  # the cut is a prefix: nothing after it is restored
            plan.last_line, plan.cut_position = record.line, record.position
            last_time = record.state["timestamp"]
            if claim is None:
                plan.owned[record.originator_id] = versions[record.originator_id]
                plan.restored += 1
                if record.version == 1 and versions[record.originator_id][0] == ORGANIZATION:
                    plan.organizations.add(record.originator_id)
                yield record
            else:
                self._track_claim(plan, record, claim)
        progress.advance(plan.events_in_file % 1000)
        plan.last_hash = reader.last_hash
        plan.cut_time = last_time.isoformat() if last_time else None
        if manifest.scope == "organization" and not plan.organizations:
            raise InvalidInput(
                "nothing to restore: the organization was created after the cut"
                if plan.events_in_file
                else "the backup holds no events"
            )
        plan.claim_events = self._check_target(plan)

    def _check(
        self,
        e: EventLine,
        manifest: Manifest,
        seen: dict[UUID, tuple[str, int]],
        shared: dict[UUID, str],
    ) -> tuple[bool, str | None]:
        """Validate one event; returns (is a Reservation event, shared claim key or None)."""
        info = topic_info(e.topic)
        if info is None:
            raise BackupFormatError(e.line, f"unknown event type {e.topic[:120]!r}")
        if not isinstance(e.state.get("timestamp"), datetime) or (
            info.fields is not None and e.state.keys() != info.fields
        ):
            raise BackupFormatError(e.line, f"the {info.cls.__qualname__} event's fields are wrong")
        aggregate, reservation = info.aggregate, info.reservation
        org = manifest.org_uid
        known = seen.get(e.originator_id)
        key = e.shared or shared.get(e.originator_id)
        if key is None and reservation and e.version == 1:
            claimer = e.state.get("org_uid") or ""
            if not (claimer and claimer in e.state["key"]):
                key = str(e.state["key"])  # a cross-organization claim (system backups)
        if key is not None:
            if not reservation or reservation_id(key) != e.originator_id:
                raise BackupFormatError(e.line, "a shared claim does not match its key")
            if manifest.scope == "organization" and e.state.get("org_uid", org) != org:
                raise BackupFormatError(e.line, "a shared claim of another organization")
            if known is not None and e.version <= known[1]:
                raise BackupFormatError(e.line, "claim versions are not increasing")
            seen[e.originator_id], shared[e.originator_id] = (aggregate, e.version), key
            return reservation, key
        if known is None and e.version != 1:
            raise BackupFormatError(e.line, f"aggregate {e.originator_id} starts at v{e.version}")
        if known is not None and (known[0] != aggregate or known[1] + 1 != e.version):
            raise BackupFormatError(e.line, f"aggregate {e.originator_id} skips a version")
        if e.version == 1 and manifest.scope == "organization" and not self._member(e, org):
            raise BackupFormatError(e.line, f"{aggregate} does not belong to organization {org}")
        seen[e.originator_id] = (aggregate, e.version)
        return reservation, None

    @staticmethod
    def _member(e: EventLine, org: str | None) -> bool:
        if e.topic.rsplit(".", 1)[0].endswith(":Organization"):
            return str(e.originator_id) == org
        return e.state.get("org_uid") == org

    @staticmethod
    def _track_claim(plan: Plan, e: EventLine, key: str) -> None:
        claim = plan.claims.setdefault(e.originator_id, _Claim(key))
        if "org_uid" in e.state:  # Claimed / Reclaimed
            claim.owner, claim.org_uid = str(e.state["owner"]), str(e.state["org_uid"])
        else:  # Released
            claim.owner = claim.org_uid = None

    def _check_target(self, plan: Plan) -> list[StoredEvent]:
        """Raises RestoreRefused listing every conflict; returns the claim events to write."""
        conflicts: list[str] = []
        existing = self.backups.store.existing(plan.owned)
        organizations = sorted(existing & plan.organizations, key=str)
        for oid in organizations:
            conflicts.append(f"organization {oid} already exists in this store")
        if organizations and len(existing) > len(organizations):
            conflicts.append(f"{len(existing) - len(organizations)} of its aggregates exist too")
        for oid in [] if organizations else sorted(existing, key=str):
            aggregate = plan.owned[oid][0].rpartition(":")[2]
            conflicts.append(f"{aggregate} {oid} already exists in this store")
        claims, held_elsewhere = self._claims(plan)
        conflicts.extend(held_elsewhere)
        if conflicts:
            raise RestoreRefused(conflicts)
        return claims

    def _claims(self, plan: Plan) -> tuple[list[StoredEvent], list[str]]:
        """The events that make this store hold the restored organization's shared claims
        (a new Claimed, or Reclaimed on a released one), and a line per claim held elsewhere.
        Optimistic: a claim made after this look fails the insert (IntegrityError)."""
        held = {oid: c for oid, c in plan.claims.items() if c.owner is not None}
        existing = self.backups.store.existing(held)
        pending: list[Any] = []
        conflicts: list[str] = []
        for oid, claim in sorted(held.items(), key=lambda item: str(item[0])):
            here = self.app.find(Reservation, oid) if oid in existing else None
            if here is None:
                assert claim.owner is not None and claim.org_uid is not None
                pending.extend(Reservation(claim.key, claim.owner, claim.org_uid).collect_events())
            elif here.owner is None:
                assert claim.owner is not None and claim.org_uid is not None
                here.claim(claim.owner, claim.org_uid)
                pending.extend(here.collect_events())
            elif here.owner != claim.owner and claim.key != BOOTSTRAP_KEY:
                # (a store that issued its own first super-admin key keeps it)
                holder = f"organization {here.org_uid}" if here.org_uid else "the system"
                if claim.key.startswith("device-dn:"):
                    what = f"device DN {claim.key.removeprefix('device-dn:')!r} of certificate"
                else:
                    what = f"unique key {claim.key!r} of"
                conflicts.append(f"{what} {claim.owner} is already registered in {holder}")
        return [self.app.mapper.to_stored_event(event) for event in pending], conflicts

    # -- restoring ------------------------------------------------------------------
    @fewer_young_collections()
    def restore(
        self,
        source: BinaryIO,
        until: datetime | None = None,
        until_position: int | None = None,
        progress: Progress | None = None,
    ) -> tuple[Plan, Summary]:
        """Verify the file and write it in ONE transaction of the event store, then let read
        models catch up. Lines stream into the open transaction as they are verified (the
        file is read once; PostgreSQL inserts on the other core meanwhile), and it commits
        only once the whole file is verified and this store checked. Raises BackupFormatError,
        RestoreRefused, or Conflict when a concurrent writer took something first: the
        transaction is rolled back, nothing written, in every case."""
        progress = progress or NoProgress()
        started = time.perf_counter()
        plan, lines = self._verifying(source, until, until_position, progress, "verify + write")
        feed = self.app.projections.expect(plan.manifest.event_count)
        committed = False
        try:
            written = self.backups.store.insert_atomically(
                self._batches(plan, lines, feed), feed.begin if feed is not None else None
            )
            committed = True
        except IntegrityError:
            raise Conflict(
                "a concurrent change claimed something this restore needs; nothing was "
                "written; retry"
            ) from None
        finally:
            if feed is not None:  # its read models commit after the events, or never
                feed.commit() if committed else feed.abort()
        progress.phase("read models", None)
        self.app.projections.wait(self.app.max_position(), timeout=SETTLE_SECONDS)
        return plan, Summary(written, time.perf_counter() - started)

    def _batches(
        self, plan: Plan, lines: Iterator[EventLine], feed: RestoreFeed | None
    ) -> Iterator[Sequence[StoredEvent]]:
        """Batches of stored events as their lines are verified; the last one (with the shared
        claims) only once every line is, so a bad file fails before the transaction ends.
        The file's events (not the claims) also go to the read models' feed, if any."""
        compress = self._compressor()
        revived = self._revived()
        batch: list[StoredEvent] = []
        fed: list[tuple[UUID, int, str, bytes, dict[str, Any] | None]] = []
        for e in lines:
            stored = compress(e.state_json)
            batch.append(StoredEvent(e.originator_id, e.version, e.topic, stored))
            if feed is not None:
                fed.append(
                    (e.originator_id, e.version, e.topic, stored, e.state if revived else None)
                )
            if len(batch) >= self.batch:
                if feed is not None:
                    feed.send(fed)
                    fed = []
                yield batch
                batch = []
        if feed is not None and fed:
            feed.send(fed)
        yield [*batch, *plan.claim_events]

    def _compressor(self) -> Callable[[bytes], bytes]:
        """This store's state encoding for the file's JSON, as one call per event when there
        is no cipher. A store on eventsourcing's ZlibCompressor (which allocates a full 256 KiB
        deflate state per event, ~20-100 us here) gets the codec's small-window deflate: the
        same bytes for typical states in ~8 us, read back by the library alike."""
        mapper = self.app.mapper
        if mapper.cipher is None and type(mapper.compressor) is ZlibCompressor:
            return deflate
        if mapper.cipher is None and type(mapper.compressor) is SmallStatesPlain:
            return mapper.compressor.compress
        return self.backups.stored_state
