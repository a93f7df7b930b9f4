"""When certwarden cannot answer properly, the broker denies and keeps running."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from adapters.mosquitto import wire
from adapters.mosquitto.authz_server import AuthzSocketServer
from application.ports import Changes

from .conftest import StackFactory
from .support import FakeAuthorizer, Grant, wait_until

NOT_AUTHORIZED = 0x87
ACCEPTED = (0x00, 0x10)


def everything(topic: str) -> Grant:
    return Grant(publish=(topic,), subscribe=(topic,), receive=(topic,))


class MisbehavingServer:
    """Answers HELLO and CHANGES correctly (so the plugin keeps its link and asks), and every
    CONNECT the way `mode` says."""

    REPLIES = {
        "bad-allowed-byte": wire.frame(wire.MsgType.DECISION, b"\x07\x00\x00\x00\x00\x00\x00"),
        "wrong-reply-type": wire.frame(wire.MsgType.CHANGES_REPLY, b"\x01\x00\x00\x00\x00\x00\x00"),
        "trailing-byte": wire.frame(wire.MsgType.DECISION, b"\x01\x00\x00\x00\x00\x00\x00\x00"),
        "oversize-length": struct.pack(">I", 0xFFFFFFF0) + b"\x82\x01",
        "truncated-frame": struct.pack(">I", 10) + b"\x82\x01",
        "reason-over-limit": wire.frame(
            wire.MsgType.DECISION, b"\x01\x00\x00\x00\x00" + struct.pack(">H", 2000) + b"r" * 2000
        ),
    }

    def __init__(self, path: Path, mode: str) -> None:
        self.mode = mode
        self.connects_seen = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(8)
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while True:
                header = conn.recv(4, socket.MSG_WAITALL)
                if len(header) < 4:
                    return
                body = conn.recv(struct.unpack(">I", header)[0], socket.MSG_WAITALL)
                if body[0] == wire.MsgType.HELLO:
                    conn.sendall(wire.encode_hello_reply(epoch=42))
                    continue
                if body[0] == wire.MsgType.CHANGES:
                    conn.sendall(wire.encode_changes(Changes(0)))
                    continue
                self.connects_seen += 1
                if self.mode == "close-connection":
                    return
                if self.mode == "never-answer":
                    continue
                conn.sendall(self.REPLIES[self.mode])
                if self.mode == "truncated-frame":
                    return

    def close(self) -> None:
        self._sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("mode", [*MisbehavingServer.REPLIES, "close-connection", "never-answer"])
def test_a_misbehaving_authz_server_means_connect_refused(
    make_stack: StackFactory, mode: str
) -> None:
    s = make_stack(serve=False, timeout_ms=300, retry_max_ms=20)
    evil = MisbehavingServer(s.server.socket_path, mode)
    try:
        device = s.device(Grant())
        for _ in range(2):  # the second attempt runs on a link reopened after the failure
            time.sleep(0.05)  # let the back-off (20 ms) lapse, so the plugin really asks
            seen = evil.connects_seen
            assert s.client(device).connect() == NOT_AUTHORIZED
            assert evil.connects_seen > seen, s.mosquitto.log_tail(60)
        assert s.mosquitto.running()
    finally:
        evil.close()


def test_authz_server_down_refuses_connects_and_recovers(
    make_stack: StackFactory, topic: str
) -> None:
    s = make_stack(retry_max_ms=100)
    device = s.device(everything(topic))
    live = s.connected(device)
    assert live.publish(topic + "cached") in ACCEPTED
    s.server.stop()
    assert s.client(device).connect() == NOT_AUTHORIZED
    assert live.publish(topic + "cached") == NOT_AUTHORIZED  # caches flushed on the failure
    assert s.mosquitto.running()
    restarted = AuthzSocketServer(s.fake, s.server.socket_path)
    restarted.start()
    try:
        assert wait_until(lambda: s.client(device).connect() == 0, timeout=5)
        assert live.inbox.disconnected_at is None
        assert live.publish(topic + "cached") in ACCEPTED
    finally:
        restarted.stop()


def test_a_new_authz_server_instance_rechecks_every_live_session(
    make_stack: StackFactory, topic: str
) -> None:
    s = make_stack(retry_max_ms=100)
    forgotten, remembered = s.device(everything(topic)), s.device(everything(topic))
    lost = s.connected(forgotten)
    kept = s.connected(remembered)
    s.server.stop()
    fresh = FakeAuthorizer()  # knows only one of the two devices
    fresh.grant(remembered.fingerprint, everything(topic))
    replacement = AuthzSocketServer(fresh, s.server.socket_path)
    replacement.start()
    try:
        assert lost.wait_disconnect(timeout=5)
        assert kept.publish(topic + "x") in ACCEPTED
        assert kept.inbox.disconnected_at is None
    finally:
        replacement.stop()
