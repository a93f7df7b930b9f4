"""A backup's hash chain and gzip in a helper process: the same bytes as in this process."""

from __future__ import annotations

import gzip
import io
import uuid
from typing import Any

import pytest

from adapters.chain_helper import ChainHelperError, ProcessChains
from application.backup_format import ChainWriter, LocalChainRun, genesis


def templates(count: int) -> list[bytes]:
    writer = ChainWriter("t")
    oid = str(uuid.uuid4())
    events = [
        (n, oid, n, "domain.folder:Folder.Renamed", b'{"name":"n-%d"}' % n)
        for n in range(1, count + 1)
    ]
    return [writer.templates(events[k : k + 700]) for k in range(0, count, 700)]


def test_the_helper_writes_the_same_chained_lines_as_this_process() -> None:
    prev = genesis("backup-1")
    here, there = io.BytesIO(), io.BytesIO()
    local = LocalChainRun(prev, 1, here)
    remote = ProcessChains().start(prev, 1, there)
    for chunk in templates(5000):
        local.feed(chunk)
        remote.feed(chunk)
    assert remote.finish() == local.finish()
    lines = gzip.decompress(there.getvalue())
    assert lines == gzip.decompress(here.getvalue())
    assert lines.count(b"\n") == 5001  # and the trailer


def test_a_helper_that_dies_fails_the_backup_instead_of_writing_a_short_file() -> None:
    run = ProcessChains().start(genesis("backup-2"), 1, io.BytesIO())
    run.feed(templates(10)[0])
    run.process.kill()
    run.process.wait()
    with pytest.raises(ChainHelperError):
        for chunk in templates(3000):
            run.feed(chunk)
        run.finish()


def test_an_aborted_helper_is_gone() -> None:
    run = ProcessChains().start(genesis("backup-3"), 1, io.BytesIO())
    run.feed(templates(10)[0])
    run.abort()
    assert run.process.poll() is not None


def test_a_state_with_a_raw_newline_cannot_be_templated() -> None:
    event = (1, str(uuid.uuid4()), 1, "domain.folder:Folder.Renamed", b'{"name":"a\nb"}')
    with pytest.raises(ValueError, match="raw newline"):
        ChainWriter("t").templates([event])


def test_a_sink_that_fails_fails_the_backup_instead_of_hanging_it() -> None:
    class Full(io.BytesIO):
        def write(self, data: Any) -> int:
            raise OSError(28, "No space left on device")

    run = ProcessChains().start(genesis("backup-4"), 0, Full())
    with pytest.raises(ChainHelperError, match="No space left"):
        for chunk in templates(60_000):
            run.feed(chunk)
        run.finish()
