"""Side effects of broker decisions, run off the broker's thread.

Mosquitto is single-threaded and waits for every decision: writing to the event store
there (pinning a host, registering a component or a device's new chain) would stall every
client and, past the plugin's timeout, make it fail closed. Decisions stay synchronous and
in memory; what follows from them is queued here and saved by a small pool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

log = logging.getLogger(__name__)


class Background:
    def __init__(self, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cw-effects")
        self._pending: set[Future[Any]] = set()
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            future = self._pool.submit(fn, *args)
        except RuntimeError:  # shutting down: the decision stands, the effect is dropped
            log.warning(
                "background effect dropped during shutdown: %s", getattr(fn, "__name__", fn)
            )
            return
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)
        error = future.exception()
        if error is not None:
            log.error("background effect failed: %r", error)

    def drain(self, timeout: float = 10.0) -> None:
        """Wait for everything submitted so far (tests, read-your-writes, shutdown)."""
        with self._lock:
            pending = list(self._pending)
        if pending:
            wait(pending, timeout)

    def close(self) -> None:
        self.drain()
        self._pool.shutdown(wait=True)
