"""Keep a run publishing: read catalogue pages ahead and commit acknowledged pages behind, in
threads (SQLite and psycopg release the GIL while the database works)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from application.ports import CertificateOutcome, RunCheckpoint

Page = tuple[list[dict[str, Any]], str | None]


class PagePrefetcher:
    """Yields (rows, next cursor) pages in order, at most `depth` pages ahead of the reader."""

    def __init__(self, fetch: Callable[[str | None], Page], cursor: str | None, depth: int = 1):
        self._fetch = fetch
        self._queue: queue.Queue[tuple[Page, BaseException | None]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(cursor,), daemon=True)
        self._thread.start()

    def _put(self, item: tuple[Page, BaseException | None]) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self, cursor: str | None) -> None:
        try:
            while not self._stop.is_set():
                rows, following = self._fetch(cursor)
                self._put(((rows, following), None))
                if following is None:
                    return
                cursor = following
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which fails the run
            self._put((([], None), exc))

    def __iter__(self) -> Iterator[Page]:
        while True:
            page, error = self._queue.get()
            if error is not None:
                raise error
            yield page
            if page[1] is None:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class PageCommitter:
    """Commits pages in submission order, each once every message published before its mark
    is acknowledged. At most `depth` pages wait (bounded memory, bounded redelivery: pages
    not yet committed are the only ones published again after a crash)."""

    Commit = Callable[[Sequence[CertificateOutcome], str | None, bool], RunCheckpoint | None]

    def __init__(
        self,
        commit: Commit,
        wait_acked: Callable[[int], None],
        lost: Callable[[], BaseException],
        depth: int = 2,
    ) -> None:
        self._commit = commit
        self._wait_acked = wait_acked
        self._lost = lost
        self._queue: queue.Queue[tuple[Sequence[CertificateOutcome], str | None, bool, int] | None]
        self._queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.last: RunCheckpoint | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue  # keep draining so a blocked submit() returns
            outcomes, cursor, done, mark = item
            try:
                self._wait_acked(mark)
                committed = self._commit(outcomes, cursor, done)
                if committed is None:
                    raise self._lost()
                self.last = committed
            except BaseException as exc:  # noqa: BLE001 - re-raised in the worker thread
                self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(
        self, outcomes: Sequence[CertificateOutcome], cursor: str | None, done: bool, mark: int
    ) -> None:
        self.check()
        self._queue.put((outcomes, cursor, done, mark))

    def finish(self) -> RunCheckpoint | None:
        """Wait for every submitted page; re-raises the first failure."""
        self._queue.put(None)
        self._thread.join()
        self.check()
        return self.last

    def stop(self) -> None:
        if self._thread.is_alive():
            self.error = self.error or RuntimeError("run stopped")
            self._queue.put(None)
            self._thread.join(timeout=10)
