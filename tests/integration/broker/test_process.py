"""The Mosquitto child process: start errors carry the log, and it never outlives its parent."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from adapters.mosquitto.broker import MosquittoConfig, MosquittoError, MosquittoProcess, ServerPki

from .conftest import REPO, Stack
from .support import free_port


def config_for(stack: Stack, port: int, work: Path) -> MosquittoConfig:
    return MosquittoConfig(
        socket_path=stack.server.socket_path,
        capath=stack.config.capath,
        certfile=stack.pki.cert_path,
        keyfile=stack.pki.key_path,
        log_path=work / "mosquitto.log",
        plugin_path=stack.config.plugin_path,
        port=port,
    )


def test_a_port_already_taken_fails_start_with_the_log_tail(stack: Stack, tmp_path: Path) -> None:
    process = MosquittoProcess.from_config(config_for(stack, stack.port, tmp_path), tmp_path / "c")
    with pytest.raises(MosquittoError, match="(?i)address already in use"):
        process.start(timeout=5)
    assert not process.running()


def test_a_missing_plugin_option_fails_start(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "mosquitto.conf"
    process = MosquittoProcess.from_config(config_for(stack, free_port(), tmp_path), path)
    path.write_text(path.read_text().replace("plugin_opt_socket", "# plugin_opt_socket"))
    with pytest.raises(MosquittoError, match="plugin_opt_socket is required"):
        process.start(timeout=5)


def test_the_broker_exits_when_the_process_that_started_it_dies(
    stack: Stack, server_pki: ServerPki, tmp_path: Path
) -> None:
    port = free_port()
    parent = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from adapters.mosquitto.broker import MosquittoConfig, MosquittoProcess
        config = MosquittoConfig(
            socket_path=Path({str(stack.server.socket_path)!r}),
            capath=Path({str(stack.config.capath)!r}),
            certfile=Path({str(server_pki.cert_path)!r}),
            keyfile=Path({str(server_pki.key_path)!r}),
            log_path=Path({str(tmp_path / "m.log")!r}),
            plugin_path=Path({str(stack.config.plugin_path)!r}),
            port={port},
        )
        process = MosquittoProcess.from_config(config, Path({str(tmp_path / "m.conf")!r}))
        process.start()
        print(process.pid, flush=True)
        os._exit(0)  # no stop(): a crash
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", parent], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.strip())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # the port is free again


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not yet reaped


def test_reload_of_a_stopped_broker_raises(stack: Stack, tmp_path: Path) -> None:
    process = MosquittoProcess.from_config(config_for(stack, free_port(), tmp_path), tmp_path / "c")
    with pytest.raises(MosquittoError):
        process.reload()
