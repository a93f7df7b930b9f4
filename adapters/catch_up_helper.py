"""A helper process that fills some read models from zero beside the main process (PostgreSQL).

When the projection runner finds every read model empty and a long log behind them (a first
start on an existing store, the catch-up after a restore into a new store, a rebuild), it hands
the read models named in HELPED to one of these and runs the others itself: the audit trail
costs about as much as all the others together, and both halves are GIL-bound Python, so two
processes use both cores. Each process commits its read models' rows with their tracking
positions in its own transactions (different rows of `projection_tracking`), so every read
model is still written exactly once; the runner takes them back afterwards at whatever
position was committed.

Feed mode (a restore into a new store, see projections.runner.RestoreFeedRun): the helper
takes the audit trail's whole group and is sent the restore's events as they are verified -
frames of (position, id, version, topic, stored state), marshal over its stdin - before they
are committed. It applies them in ONE transaction, reads nothing back from the event store,
and commits only on the "commit" frame, which the restore sends after its own commit; end of
input without it rolls everything back. Then it builds the trail's indexes and exits 0 (3: the
restore did not commit; 4: its read models were not where the restore started). The restore
never waits on it for long: a helper that takes no input for STALL_SECONDS is killed.

The child is a plain interpreter (`python -m adapters.catch_up_helper`, no fork: the parent
runs threads). It reads its spec from stdin - event-store environment, view database, read
model names - never from its command line (a database password must not show in `ps`). It
ends early, keeping the batches it committed, when its parent goes away or terminates it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import marshal
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO
from uuid import UUID

from adapters.child_process import spawn_module

HELPED = ("audit",)
STOP_GRACE_SECONDS = 10.0
F_SETPIPE_SZ = 1031  # Linux fcntl: a pipe's capacity
PIPE_BYTES = 1 << 20
STALL_SECONDS = 60.0  # a restore's helper that takes no input this long is ended

log = logging.getLogger(__name__)


class ProcessHelpers:
    """The runner's `Helpers` port: one child process per catch-up."""

    names: Sequence[str] = HELPED

    def __init__(self, eventsourcing_env: dict[str, str], conninfo: str, schema: str) -> None:
        self._spec = {"env": eventsourcing_env, "conninfo": conninfo, "schema": schema}

    def close(self) -> None:
        return None  # each helper ends with its catch-up

    def _spawn(self, send_spec: Callable[[Any], None]) -> subprocess.Popen[bytes]:
        """A helper given its spec by `send_spec(its stdin)`; killed if that fails."""
        process = spawn_module(__name__, stdin=subprocess.PIPE)
        assert process.stdin is not None
        try:
            send_spec(process.stdin)
        except BaseException:
            process.kill()
            process.wait()
            raise
        return process

    def feed(self, names: Sequence[str], indexes: Sequence[str]) -> FeedProcess:
        spec = {**self._spec, "names": list(names), "feed": True, "indexes": list(indexes)}

        def send_spec(stdin: Any) -> None:  # a line: the restore's frames follow it
            with contextlib.suppress(OSError):  # a bigger pipe: fewer waits on either side
                fcntl.fcntl(stdin.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
            stdin.write(json.dumps(spec).encode() + b"\n")
            stdin.flush()
            os.set_blocking(stdin.fileno(), False)  # see FeedProcess._frame

        process = self._spawn(send_spec)
        log.info("restore helper %s fills %s", process.pid, ", ".join(names))
        return FeedProcess(process)

    def start(self, names: Sequence[str], prepare: Callable[[], None]) -> HelperProcess:
        def send_spec(stdin: Any) -> None:
            prepare()  # while the child imports; it reads nothing before its spec arrives
            stdin.write(json.dumps({**self._spec, "names": list(names)}).encode())
            stdin.close()

        process = self._spawn(send_spec)
        log.info("catch-up helper %s fills %s", process.pid, ", ".join(names))
        return HelperProcess(process)


class HelperProcess:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    def wait(self, stop: threading.Event | None) -> bool:
        while True:
            try:
                code = self.process.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if stop is not None and stop.is_set():
                    self.end()
                    return False
                continue
            if code:
                log.warning("catch-up helper %s exited with %s", self.process.pid, code)
            return code == 0

    def end(self) -> None:
        self.process.terminate()  # a transaction cut short rolls back; committed ones stay
        try:
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class FeedProcess(HelperProcess):
    """A helper filled from a restore (projections.runner.FeedRun): frames on its stdin for
    the feed's side, the process for the runner's. Never raises into the restore: a helper
    gone away only marks the feed failed, and its read models then catch up from the event
    store as usual."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        super().__init__(process)
        self.begun = False
        self.failed = False
        self._pipe = threading.Lock()

    def begin(self, base: int) -> None:
        self._frame(("begin", base))
        self.begun = True

    def send_share(self, last: int, events: Sequence[tuple[int, int, int, str, bytes]]) -> None:
        self._frame(("events", last, list(events)))

    def commit_share(self) -> None:
        if self.begun:
            self._frame(("commit",))
        self._close()

    def abort(self) -> None:
        self.failed = True
        self._close()

    def running(self) -> bool:
        return self.process.poll() is None

    def end(self) -> None:
        self.abort()  # end of input before "commit": the helper rolls back
        super().end()

    def _frame(self, message: tuple[Any, ...]) -> None:
        """Write one message; a helper that takes nothing for STALL_SECONDS is ended (the
        restore holds the event store's lock: it must never wait on a stuck helper)."""
        data = marshal.dumps(message)
        view = memoryview(len(data).to_bytes(4, "big") + data)
        with self._pipe:  # (the runner may end the helper from another thread)
            if self.failed or self.process.stdin is None or self.process.stdin.closed:
                return
            fd = self.process.stdin.fileno()
            writable = select.poll()  # (any descriptor number, unlike select.select)
            writable.register(fd, select.POLLOUT)
            try:
                while view:
                    if not writable.poll(STALL_SECONDS * 1000):
                        log.warning("restore helper %s takes nothing: ended", self.process.pid)
                        self.failed = True
                        self.process.kill()
                        return
                    view = view[os.write(fd, view[:PIPE_BYTES]) :]
            except OSError:  # the helper is gone: its exit code tells the runner
                self.failed = True

    def _close(self) -> None:
        with self._pipe, contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()


def _frames(stream: BinaryIO) -> Iterator[tuple[Any, ...]]:
    """The feed's messages until the end of input (a cut-off frame ends it too)."""
    while len(head := stream.read(4)) == 4:
        data = stream.read(int.from_bytes(head, "big"))
        message = marshal.loads(data)  # noqa: S302 - from our own parent, over a pipe
        if not isinstance(message, tuple) or not message:
            return
        yield message


class _Aborted(Exception):
    """The input ended before "commit": the restore failed or was cut short."""


def _fill_from_feed(runner: Any, db: Any, registry: Any, spec: dict[str, Any]) -> int:
    """Feed mode: apply the events sent, each at its given position, in ONE transaction
    committed only on "commit", then build the indexes. Exit codes: 0 filled, 3 the restore did not commit (nothing written), 4 the
    read models were not where the restore starts (nothing written)."""
    from application.allocation import fewer_young_collections
    from projections.batches import Read
    from projections.event_feed import FeedItem, event_decoder

    frames = _frames(sys.stdin.buffer)
    first = next(frames, None)
    if first is None or first[0] != "begin":
        return 3
    base = int(first[1])
    positions = {name: runner.position_of(name) for name in spec["names"]}
    if any(position != base for position in positions.values()):
        log.warning("restore helper: read models at %s, the restore starts at %s", positions, base)
        return 4
    runner.fed_by_restore()  # nothing is committed yet: every entity starts in the feed
    to_event = event_decoder(registry.mapper)
    ids: dict[int, UUID] = {}
    last = base
    try:
        with fewer_young_collections(), db.transaction() as tx:
            for message in frames:
                if message[0] == "commit":
                    break
                events = []
                for position, id_int, version, topic, state in message[2]:
                    oid = ids.get(id_int)
                    if oid is None:
                        if len(ids) > 100_000:
                            ids.clear()
                        oid = ids[id_int] = UUID(int=id_int)
                    events.append(
                        (position, to_event(FeedItem(position, oid, version, topic, state)))
                    )
                first_position = events[0][0] if events else int(message[1])
                last = int(message[1])
                runner.write_in(tx, Read(first_position, last, len(events), events))
            else:
                raise _Aborted
    except _Aborted:
        log.info("restore helper: the restore did not commit; nothing written")
        return 3
    log.info("restore helper: %s filled up to %d", spec["names"], last)
    runner.build_indexes(spec["indexes"])
    return 0


def _watch_parent(stop: threading.Event) -> None:
    parent = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != parent:
            stop.set()


def main() -> int:
    from application.bootstrap import read_models
    from application.registry import Registry
    from projections.db import PostgresViewDb
    from projections.runner import ProjectionRunner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    raw = sys.stdin.buffer.readline()
    if not raw.strip():
        return 0  # no work: the parent gave up before sending it
    spec: dict[str, Any] = json.loads(raw)
    # the tables exist (the parent made them), and a restore may hold the event store's lock
    registry = Registry(env={**spec["env"], "CREATE_TABLE": "no"})
    db = PostgresViewDb(spec["conninfo"], spec["schema"], max_size=2)
    chosen = [p for p in read_models(registry) if p.name in spec["names"]]
    runner = ProjectionRunner(registry, db, chosen, setup=False)
    if spec.get("feed"):
        try:
            return _fill_from_feed(runner, db, registry, spec)
        finally:
            runner.stop()
            db.close()
            registry.close()
    stop = threading.Event()
    threading.Thread(target=_watch_parent, args=(stop,), daemon=True).start()
    try:
        done = runner.follow_to_end(stop)
        log.info("catch-up helper: %d notifications read for %s", done, spec["names"])
    finally:
        runner.stop()
        db.close()
        registry.close()
    return 3 if stop.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
