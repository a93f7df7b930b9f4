"""A helper process that fills some read models from zero beside the main process (PostgreSQL).

When the projection runner finds every read model empty and a long log behind them (a first
start on an existing store, the catch-up after a restore into a new store, a rebuild), it hands
the read models named in HELPED to one of these and runs the others itself: the audit trail
costs about as much as all the others together, and both halves are GIL-bound Python, so two
processes use both cores. Each process commits its read models' rows with their tracking
positions in its own transactions (different rows of `projection_tracking`), so every read
model is still written exactly once; the runner takes them back afterwards at whatever
position was committed.

The child is a plain interpreter (`python -m adapters.catch_up_helper`, no fork: the parent
runs threads). It reads its spec from stdin - event-store environment, view database, read
model names - never from its command line (a database password must not show in `ps`). It
ends early, keeping the batches it committed, when its parent goes away or terminates it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from adapters.child_process import spawn_module

HELPED = ("audit",)
STOP_GRACE_SECONDS = 10.0

log = logging.getLogger(__name__)


class ProcessHelpers:
    """The runner's `Helpers` port: one child process per catch-up."""

    names: Sequence[str] = HELPED

    def __init__(self, eventsourcing_env: dict[str, str], conninfo: str, schema: str) -> None:
        self._spec = {"env": eventsourcing_env, "conninfo": conninfo, "schema": schema}
        self._warm: subprocess.Popen[bytes] | None = None  # started ahead, waiting for a spec
        self._lock = threading.Lock()

    def warm(self) -> None:
        with self._lock:
            if self._warm is None or self._warm.poll() is not None:
                self._warm = spawn_module(__name__, stdin=subprocess.PIPE)

    def close(self) -> None:
        with self._lock:
            process, self._warm = self._warm, None
        if process is not None:
            _dismiss(process)

    def start(self, names: Sequence[str], prepare: Callable[[], None]) -> HelperProcess:
        with self._lock:
            process, self._warm = self._warm, None
        if process is None or process.poll() is not None:
            process = spawn_module(__name__, stdin=subprocess.PIPE)
        assert process.stdin is not None
        try:
            prepare()  # while the child imports; it reads nothing before its spec arrives
            process.stdin.write(json.dumps({**self._spec, "names": list(names)}).encode())
            process.stdin.close()
        except BaseException:
            process.kill()
            process.wait()
            raise
        log.info("catch-up helper %s fills %s", process.pid, ", ".join(names))
        return HelperProcess(process)


def _dismiss(process: subprocess.Popen[bytes]) -> None:
    """End a helper that never got its spec: end of input tells it there is nothing to do."""
    try:
        if process.stdin is not None:
            process.stdin.close()
        process.wait(timeout=STOP_GRACE_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        process.kill()
        process.wait()


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
    raw = sys.stdin.read()
    if not raw.strip():
        return 0  # started ahead of time and dismissed unused
    spec: dict[str, Any] = json.loads(raw)
    registry = Registry(env=spec["env"])
    db = PostgresViewDb(spec["conninfo"], spec["schema"], max_size=2)
    chosen = [p for p in read_models(registry) if p.name in spec["names"]]
    runner = ProjectionRunner(registry, db, chosen, setup=False)
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
