"""ProcessCommandPublisher: the CommandPublisher port with its paho client in a child process.

Why a process: in one process, paho's network thread and the run's per-certificate work
(catalogue pages, outcomes, idempotency records) share one GIL, and a ROLL_ALL published at
~0.6x a bare paho client (bench/operations.py). In a child process paho works exactly as a
bare client does, on its own core, while the worker plans and commits the next pages.
Messages cross in batches (one pickle per ~256 messages); the child reports back how many
messages are acknowledged, from the first, and the first error.

At-least-once is unchanged: a page is committed only once the child reports every message
up to its mark acknowledged. If the worker dies, the child reads EOF and ends; messages
already handed over may still go out, and their page (not committed) is published again on
redelivery: once more than needed, never skipped."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from adapters.child_process import spawn_module
from adapters.mqtt_publisher import MqttTarget, PahoCommandPublisher
from application.ports import PublishError

log = logging.getLogger(__name__)

Message = tuple[str, bytes, int, bool]


class ProcessCommandPublisher:
    """publish() only appends to a batch (the hot path); mark() hands the batch to the child,
    so every message up to a mark is on its way when wait_acked(mark) is called. A reader
    thread turns the child's reports into `acked` / `error` under a condition variable."""

    def __init__(self, target: MqttTarget, batch: int = 256) -> None:
        self.target = target
        self.batch = batch
        self.child_peak_rss_kib = 0  # the child's max RSS, reported when it ends
        self._buffer: list[Message] = []
        self._sequence = 0  # messages published so far
        self._send_lock = threading.Lock()  # the batch and the pipe (mark() may be elsewhere)
        self._cond = threading.Condition()
        self._acked = 0
        self._error: str | None = None
        self._closing = False
        self._process: Any = None
        self._outbox: Connection | None = None
        self._reports: Connection | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The child process (None before open() and after close())."""
        return int(self._process.pid) if self._process is not None else None

    # -- port -----------------------------------------------------------------
    def open(self) -> None:
        # A plain child interpreter (adapters/child_process.py); it imports paho and this
        # module only (~0.15 s).
        inbox, outbox = os.pipe()
        reports, report_to = os.pipe()
        try:
            self._process = spawn_module(
                __name__,
                str(inbox),
                str(report_to),
                pass_fds=(inbox, report_to),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            for fd in (outbox, reports):
                os.close(fd)
            raise PublishError(f"cannot start the publisher process: {exc}") from None
        finally:
            os.close(inbox)  # the child's ends: EOF on either side means the peer is gone
            os.close(report_to)
        self._outbox = Connection(outbox, readable=False)
        self._reports = Connection(reports, writable=False)
        try:
            self._outbox.send(self.target)
            ready = self._reports.poll(self.target.connect_timeout + 10)
            opened = self._reports.recv() if ready else ("error", "publisher process did not start")
        except (EOFError, OSError):
            opened = ("error", "publisher process ended before connecting")
        if opened[0] != "open":
            self.close()
            raise PublishError(str(opened[1]))
        self._reader = threading.Thread(target=self._read, daemon=True, name="mqtt-reports")
        self._reader.start()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if self._error is not None:
            raise PublishError(self._error)
        with self._send_lock:
            self._buffer.append((topic, payload, qos, retain))
            self._sequence += 1
            if len(self._buffer) >= self.batch:
                self._flush()

    def mark(self) -> int:
        with self._send_lock:
            self._flush()
            return self._sequence

    def wait_acked(self, mark: int, timeout: float) -> None:
        with self._send_lock:
            if self._sequence - len(self._buffer) < mark:
                self._flush()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._acked < mark and self._error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = mark - self._acked
                    self._error = f"{missing} message(s) unacknowledged after {timeout:g}s"
                    break
                self._cond.wait(remaining)
            if self._error is not None:
                raise PublishError(self._error)

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        self._closing = True
        if self._outbox is not None:
            try:
                self._outbox.send(None)  # the child disconnects from the broker and ends
            except OSError:
                pass
            self._outbox.close()
        try:
            process.wait(self.target.connect_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        if self._reports is not None:
            self._reports.close()

    # -- internals ------------------------------------------------------------------
    def _flush(self) -> None:
        """Hand the batch to the child (blocks while the pipe is full: back-pressure)."""
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        assert self._outbox is not None, "publisher is not open"
        try:
            self._outbox.send(batch)
        except OSError:  # the child is gone: its last report says why
            if self._reader is not None:
                self._reader.join(5)
            with self._cond:
                self._error = self._error or "publisher process ended"
            raise PublishError(self._error) from None

    def _read(self) -> None:
        """Reader thread: the child's reports, until it ends."""
        reports = self._reports
        assert reports is not None
        while True:
            try:
                kind, value = reports.recv()
            except (EOFError, OSError):
                kind, value = "ended", None
            with self._cond:
                if kind == "acked":
                    self._acked = int(value)
                elif kind == "closed":
                    self.child_peak_rss_kib = int(value)
                elif kind == "error":
                    self._error = self._error or str(value)
                elif not self._closing:
                    self._error = self._error or "publisher process ended"
                self._cond.notify_all()
            if kind == "ended":
                return


def _serve(inbox: Connection, reports: Connection) -> None:
    """The child: read the target, connect, then publish batches as they come, reporting
    acknowledgements (after each batch, and every ~2 ms while some are pending) and the
    first error. Ends on None (close) or EOF (the worker is gone)."""
    target = inbox.recv()
    if not isinstance(target, MqttTarget):
        raise SystemExit("expected an MqttTarget first")
    publisher = PahoCommandPublisher(target)
    try:
        try:
            publisher.open()
        except PublishError as exc:
            reports.send(("error", str(exc)))
            return
        reports.send(("open", None))
        reported = 0

        def report() -> None:
            nonlocal reported
            acked = publisher.acknowledged()
            error = publisher.error  # read after: a refused PUBACK is noted before it counts
            if error is not None:
                raise PublishError(error)
            if acked != reported:
                reports.send(("acked", acked))
                reported = acked

        while True:
            waiting = publisher.mark() != reported
            if not inbox.poll(0.002 if waiting else 0.5):
                report()
                continue
            batch = inbox.recv()
            if batch is None:
                return
            for topic, payload, qos, retain in batch:
                publisher.publish(topic, payload, qos, retain)
            report()
    except PublishError as exc:
        _send(reports, ("error", str(exc)))
    except (EOFError, OSError):  # the worker is gone
        pass
    finally:
        publisher.close()
        _send(reports, ("closed", _peak_rss_kib()))


def _peak_rss_kib() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: ru_maxrss keeps the parent's peak
    across the fork + exec that started this process."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _send(reports: Connection, item: tuple[str, Any]) -> None:
    try:
        reports.send(item)
    except OSError:
        log.debug("publisher process: the worker is gone")


if __name__ == "__main__":
    _serve(
        Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)
    )
