"""A helper process that hash-chains and gzips a backup's lines beside the process reading them.

A backup is two strands of GIL-bound Python: reading and selecting events into line templates
(this process), and the SHA-256 chain plus the gzip (sequential by design: every line's hash
covers the one before). Measured at 1M events, each takes about half of a backup's time in one
process; here the second runs on the other core. The file is the same byte for byte
(application/backup_format.py: ChainWriter.templates / ChainWriter.chain, LocalChainRun).

The child is a plain interpreter (`python -m adapters.chain_helper`, no fork: the parent runs
threads) that needs nothing but its stdin. Protocol, all frames length-prefixed (4 bytes, little
endian): stdin carries a JSON spec ({"prev": genesis hash, "level": gzip level}) then template
chunks, then an empty frame (end); stdout carries "D" frames of gzip bytes and one "R" frame of
JSON ({"count": lines, "prev": last hash}) after the trailer. The child holds no secrets and
no database connection; it stops when its stdin closes early (parent gone or aborting).
"""

from __future__ import annotations

import fcntl
import json
import logging
import struct
import subprocess
import sys
import threading
from typing import IO, Any, BinaryIO

from adapters.child_process import spawn_module
from application.backup_format import LocalChainRun

LENGTH = struct.Struct("<I")
ABORTED = 3

log = logging.getLogger(__name__)


class ChainHelperError(RuntimeError):
    """The helper process failed; the backup is abandoned (its spool file is discarded)."""


def _frame(kind: bytes, data: bytes) -> bytes:
    return kind + LENGTH.pack(len(data)) + data


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    data = stream.read(size)
    return data if data is not None and len(data) == size else None


PIPE_BYTES = 1 << 20  # Linux's limit for an unprivileged process (64 KiB by default)


def _widen(pipe: Any) -> None:
    """A 1 MiB pipe: a page's templates (~3.5 MB) go through in a few writes, not fifty."""
    try:
        fcntl.fcntl(pipe.fileno(), 1031, PIPE_BYTES)  # F_SETPIPE_SZ
    except (OSError, AttributeError):
        pass


class ProcessChains:
    """The Backups' `Chains` port: one child process per backup."""

    def start(self, prev: str, level: int, sink: BinaryIO) -> ProcessChainRun:
        process = spawn_module(__name__, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        _widen(process.stdin)
        _widen(process.stdout)
        run = ProcessChainRun(process, sink)
        try:
            run.send(json.dumps({"prev": prev, "level": level}).encode())
        except BaseException:
            run.abort()
            raise
        return run


class ProcessChainRun:
    def __init__(self, process: subprocess.Popen[bytes], sink: BinaryIO) -> None:
        self.process = process
        self.sink = sink
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._reader = threading.Thread(target=self._read, name="backup-chain-out", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Child's stdout -> sink (on this thread: the pipe and the file release the GIL)."""
        out = self.process.stdout
        assert out is not None
        try:
            while (head := _read_exactly(out, 5)) is not None:
                data = _read_exactly(out, LENGTH.unpack(head[1:])[0])
                if data is None:
                    break
                if head[:1] == b"D":
                    self.sink.write(data)
                elif head[:1] == b"R":
                    self.result = json.loads(data)
        except BaseException as exc:  # noqa: BLE001 - reported by feed() / finish()
            self.error = exc
            self.process.kill()  # else it blocks on a full stdout and feed() on its stdin

    def send(self, data: bytes) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(LENGTH.pack(len(data)))
            stdin.write(data)
        except (BrokenPipeError, ValueError):
            raise ChainHelperError(self._failure("stopped reading")) from None

    def feed(self, templates: bytes) -> None:
        if templates:
            self.send(templates)

    def finish(self) -> tuple[int, str]:
        self.send(b"")
        assert self.process.stdin is not None
        self.process.stdin.close()
        self._reader.join()
        code = self.process.wait()
        if code or self.error is not None or self.result is None:
            raise ChainHelperError(self._failure(f"exited with {code}"))
        return int(self.result["count"]), str(self.result["prev"])

    def abort(self) -> None:
        self.process.kill()
        self.process.wait()
        self._reader.join(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def _failure(self, what: str) -> str:
        detail = f" ({self.error})" if self.error is not None else ""
        return f"backup chain helper {self.process.pid} {what}{detail}"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer

    def frame() -> bytes | None:
        head = _read_exactly(stdin, LENGTH.size)
        if head is None:
            return None
        return _read_exactly(stdin, LENGTH.unpack(head)[0])

    class Out:
        def write(self, data: bytes) -> None:
            stdout.write(_frame(b"D", data))

    spec = frame()
    if spec is None:
        return ABORTED
    settings = json.loads(spec)
    run = LocalChainRun(settings["prev"], int(settings["level"]), Out(), threaded=True)  # type: ignore[arg-type]
    while (chunk := frame()) is not None:
        if not chunk:  # the end
            count, prev = run.finish()
            stdout.write(_frame(b"R", json.dumps({"count": count, "prev": prev}).encode()))
            stdout.flush()
            return 0
        run.feed(chunk)
    return ABORTED  # stdin closed before the end: the parent is gone or gave up


if __name__ == "__main__":
    sys.exit(main())
