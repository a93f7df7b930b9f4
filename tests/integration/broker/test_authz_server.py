"""The authz socket server speaks PROTOCOL.md and closes the connection on any defect."""

from __future__ import annotations

import socket
import stat
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.mosquitto import wire
from adapters.mosquitto.authz_server import AuthzSocketServer
from application.ports import AccessRequest, Action, Changes, ConnectRequest, Decision, Publish
from tests.factories import make_self_signed_leaf

from .support import FakeAuthorizer, Grant, Message, fingerprint_of


@pytest.fixture
def fake() -> FakeAuthorizer:
    return FakeAuthorizer()


@pytest.fixture
def server(fake: FakeAuthorizer) -> Iterator[AuthzSocketServer]:
    with tempfile.TemporaryDirectory(prefix="cw-", dir="/tmp") as d:
        srv = AuthzSocketServer(fake, Path(d) / "authz.sock", cache_ttl_ms=1234)
        srv.start()
        yield srv
        srv.stop()


def dial(server: AuthzSocketServer, hello: bool = True) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(5)
    conn.connect(str(server.socket_path))
    if hello:
        conn.sendall(wire.encode_hello())
        reply = read_frame(conn)
        assert reply[0] == wire.MsgType.HELLO_REPLY
        assert struct.unpack(">BQ", reply[1:]) == (wire.PROTOCOL_VERSION, server.epoch)
    return conn


def read_frame(conn: socket.socket) -> bytes:
    header = conn.recv(4, socket.MSG_WAITALL)
    (n,) = struct.unpack(">I", header)
    return conn.recv(n, socket.MSG_WAITALL)


def closed_by_peer(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def test_socket_file_is_private_and_removed_on_stop(fake: FakeAuthorizer) -> None:
    with tempfile.TemporaryDirectory(prefix="cw-", dir="/tmp") as d:
        path = Path(d) / "authz.sock"
        srv = AuthzSocketServer(fake, path)
        srv.start()
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert sorted(p.name for p in Path(d).iterdir()) == ["authz.sock"]
        srv.stop()
        assert not path.exists()


def test_a_second_server_on_a_live_socket_is_refused(server: AuthzSocketServer) -> None:
    with pytest.raises(FileExistsError):
        AuthzSocketServer(FakeAuthorizer(), server.socket_path).start()


def test_connect_request_reaches_the_authorizer_and_its_decision_comes_back(
    server: AuthzSocketServer, fake: FakeAuthorizer
) -> None:
    leaf = make_self_signed_leaf()
    fake.grant(fingerprint_of(leaf.der), Grant())
    conn = dial(server)
    conn.sendall(wire.encode_connect(ConnectRequest(leaf.der, "dev-1", "10.0.0.7")))
    assert wire.decode_decision(read_frame(conn)) == (True, 0, "allowed")
    request, _ = fake.connects[-1]
    assert request == ConnectRequest(leaf.der, "dev-1", "10.0.0.7")


def test_a_connect_check_goes_to_recheck_connect_when_the_authorizer_has_it(
    server: AuthzSocketServer,
) -> None:
    class Rechecking(FakeAuthorizer):
        def __init__(self) -> None:
            super().__init__()
            self.rechecks: list[ConnectRequest] = []

        def recheck_connect(self, request: ConnectRequest) -> Decision:
            self.rechecks.append(request)
            return Decision(False, "revoked")

    rechecking = Rechecking()
    server.authorizer = rechecking
    leaf = make_self_signed_leaf()
    conn = dial(server)
    conn.sendall(
        wire.encode_connect(ConnectRequest(leaf.der, "dev-1", "10.0.0.7"), check_only=True)
    )
    assert wire.decode_decision(read_frame(conn)) == (False, 0, "revoked")
    conn.sendall(wire.encode_connect(ConnectRequest(leaf.der, "dev-1", "10.0.0.7")))
    assert wire.decode_decision(read_frame(conn)) == (False, 0, "unknown-certificate")
    assert [r.client_id for r in rechecking.rechecks] == ["dev-1"]
    assert len(rechecking.connects) == 1


def test_access_request_round_trips_every_field(
    server: AuthzSocketServer, fake: FakeAuthorizer
) -> None:
    fp = "ab" * 32
    fake.grant(fp, Grant(publish=("org/",), retain=False))
    conn = dial(server)
    sent = AccessRequest(fp, "dev-1", "::1", Action.PUBLISH, "org/a/é", retain=True, qos=2)
    conn.sendall(wire.encode_access(sent))
    assert wire.decode_decision(read_frame(conn)) == (False, 1234, "topic-denied")
    assert fake.accesses[-1][0] == sent


def test_changes_list_kicked_and_rechecked_fingerprints(
    server: AuthzSocketServer, fake: FakeAuthorizer
) -> None:
    fake.revoke("01" * 32)
    fake.withdraw("02" * 32)
    conn = dial(server)
    conn.sendall(wire.encode_changes_query(0))
    reply = read_frame(conn)
    assert reply[0] == wire.MsgType.CHANGES_REPLY
    generation, flags, nk = struct.unpack(">QBH", reply[1:12])
    assert (generation, flags, nk) == (2, 0, 1)
    assert reply[12:44] == bytes.fromhex("01" * 32)
    assert struct.unpack(">H", reply[44:46]) == (1,)
    assert reply[46:] == bytes.fromhex("02" * 32)


def test_changes_too_long_for_one_frame_become_a_resync() -> None:
    many = frozenset(f"{i:064x}" for i in range(wire.MAX_LISTED_FINGERPRINTS + 1))
    frame = wire.encode_changes(Changes(9, kick=many))
    assert frame[5:] == struct.pack(">QBHH", 9, wire.FLAG_RESYNC, 0, 0)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(struct.pack(">I", 0), id="zero-length"),
        pytest.param(struct.pack(">I", wire.MAX_FRAME + 1) + b"\x03", id="oversize-frame"),
        pytest.param(wire.frame(wire.MsgType.ACCESS, b"\x00" * 5), id="truncated-fields"),
        pytest.param(wire.frame(wire.MsgType.CHANGES, b"\x00" * 9), id="trailing-bytes"),
        pytest.param(
            wire.frame(
                wire.MsgType.ACCESS, b"\x00" * 32 + b"\x00\x01a\x00\x01b\x09\x00\x00\x00\x00"
            ),
            id="unknown-action",
        ),
        pytest.param(wire.frame(wire.MsgType.HELLO, b"\x01\x00\x02\xff\xfe"), id="not-utf8"),
        pytest.param(wire.frame(0x7F, b""), id="unknown-type"),  # type: ignore[arg-type]
        pytest.param(
            wire.frame(wire.MsgType.CONNECT, struct.pack(">I", wire.MAX_DER + 1)), id="der-too-big"
        ),
        pytest.param(wire.encode_hello(), id="second-hello"),
        pytest.param(wire.frame(wire.MsgType.MESSAGE, b"\x00" * 40), id="truncated-message"),
        pytest.param(
            wire.frame(
                wire.MsgType.MESSAGE,
                b"\x00" * 32
                + b"\x00\x01c\x00\x00\x00\x01t\x00\x00\x00\x00\x00\x02\xc3\x28\x00\x00",
            ),
            id="message-response-topic-not-utf8",
        ),
        pytest.param(wire.frame(wire.MsgType.PUBLISHES, b"\x00\x00"), id="a-reply-type-sent-in"),
    ],
)
def test_malformed_frames_close_the_connection(server: AuthzSocketServer, frame: bytes) -> None:
    conn = dial(server)
    conn.sendall(frame)
    assert closed_by_peer(conn)


def test_a_request_before_hello_closes_the_connection(server: AuthzSocketServer) -> None:
    conn = dial(server, hello=False)
    conn.sendall(wire.encode_changes_query(0))
    assert closed_by_peer(conn)


def test_an_unsupported_protocol_version_closes_the_connection(server: AuthzSocketServer) -> None:
    conn = dial(server, hello=False)
    conn.sendall(wire.encode_hello(version=0))
    assert closed_by_peer(conn)


def test_a_newer_plugin_is_answered_with_the_version_the_server_speaks(
    server: AuthzSocketServer,
) -> None:
    conn = dial(server, hello=False)
    conn.sendall(wire.encode_hello(version=7))
    reply = read_frame(conn)
    assert reply[0] == wire.MsgType.HELLO_REPLY and reply[1] == wire.PROTOCOL_VERSION


def test_an_authorizer_that_raises_yields_a_deny(server: AuthzSocketServer) -> None:
    class Broken(FakeAuthorizer):
        def authorize(self, request: AccessRequest):  # type: ignore[no-untyped-def]
            raise RuntimeError("index not loaded")

    server.authorizer = Broken()
    conn = dial(server)
    conn.sendall(wire.encode_access(AccessRequest("cd" * 32, "d", "1.2.3.4", Action.RECEIVE, "a")))
    assert wire.decode_decision(read_frame(conn)) == (False, 1234, "authz-error")


def test_several_connections_are_served_at_once(server: AuthzSocketServer) -> None:
    first, second = dial(server), dial(server)
    for conn in (second, first):
        conn.sendall(wire.encode_changes_query(0))
        assert read_frame(conn)[0] == wire.MsgType.CHANGES_REPLY


def test_reasons_are_clipped_on_a_character_boundary() -> None:
    frame = wire.encode_decision(Decision(False, "é" * wire.MAX_REASON), ttl_ms=0)
    allowed, _, reason = wire.decode_decision(frame[4:])
    assert not allowed and reason == "é" * (wire.MAX_REASON // 2)


QUERY = wire.MessageQuery(
    "ef" * 32, "dev-1", "10.0.0.7", "org/manage/cert/register/cid/c1", b'{"x":1}', "org/r", b"\x01"
)


def test_a_message_reaches_on_message_and_its_replies_come_back_as_publishes(
    server: AuthzSocketServer, fake: FakeAuthorizer
) -> None:
    fake.replier = lambda m: [
        Publish(m.response_topic or "", b"one", 1, m.correlation_data),
        Publish("org/cid/c1/reply", b"", 0, None),
    ]
    conn = dial(server)
    conn.sendall(wire.encode_message(QUERY))
    assert wire.decode_publishes(read_frame(conn)) == [
        Publish("org/r", b"one", 1, b"\x01"),
        Publish("org/cid/c1/reply", b"", 0, None),
    ]
    assert fake.messages == [
        Message("ef" * 32, "dev-1", "10.0.0.7", QUERY.topic, b'{"x":1}', "org/r", b"\x01")
    ]


def test_an_empty_response_topic_and_correlation_reach_on_message_as_none(
    server: AuthzSocketServer, fake: FakeAuthorizer
) -> None:
    conn = dial(server)
    conn.sendall(wire.encode_message(wire.MessageQuery("ef" * 32, "d", "", "t", b"")))
    assert wire.decode_publishes(read_frame(conn)) == []
    assert (fake.messages[-1].response_topic, fake.messages[-1].correlation_data) == (None, None)


def test_a_version_1_plugin_gets_version_1_and_may_not_send_a_message(
    server: AuthzSocketServer, fake: FakeAuthorizer
) -> None:
    conn = dial(server, hello=False)
    conn.sendall(wire.encode_hello(version=1))
    assert struct.unpack(">BQ", read_frame(conn)[1:]) == (1, server.epoch)
    conn.sendall(wire.encode_changes_query(0))
    assert read_frame(conn)[0] == wire.MsgType.CHANGES_REPLY
    conn.sendall(wire.encode_message(QUERY))
    assert closed_by_peer(conn)
    assert fake.messages == []


def test_an_authorizer_without_on_message_or_one_that_raises_answers_no_replies(
    server: AuthzSocketServer, fake: FakeAuthorizer
) -> None:
    class Old:
        def authorize(self, request: AccessRequest) -> Decision:
            return Decision(True, "allowed")

    def broken(_m: Message) -> list[Publish]:
        raise RuntimeError("boom")

    fake.replier = broken
    conn = dial(server)
    conn.sendall(wire.encode_message(QUERY))
    assert wire.decode_publishes(read_frame(conn)) == []
    server.authorizer = Old()  # type: ignore[assignment]
    conn.sendall(wire.encode_message(QUERY))
    assert wire.decode_publishes(read_frame(conn)) == []
    conn.sendall(wire.encode_access(AccessRequest("ab" * 32, "d", "", Action.PUBLISH, "t")))
    assert wire.decode_decision(read_frame(conn))[0]  # the connection is still served


def test_replies_are_capped_to_valid_topic_names_the_count_and_the_frame() -> None:
    ok = [Publish(f"o/{i}", b"p", 1) for i in range(wire.MAX_PUBLISHES + 2)]
    invalid = [
        Publish("o/+/x", b"", 1),
        Publish("o/#", b"", 1),
        Publish("$SYS/x", b"", 1),
        Publish("", b"", 1),
        Publish("o/\x00", b"", 1),
        Publish("o/\x1f", b"", 1),
        Publish("o/\ud800", b"", 1),
        Publish("o/" + "t" * wire.MAX_TOPIC, b"", 1),
        Publish("o/qos", b"", 3),
        Publish("o/corr", b"", 1, b"c" * (wire.MAX_CORRELATION + 1)),
    ]
    frame, dropped = wire.encode_publishes([*invalid, *ok])
    assert wire.decode_publishes(frame[4:]) == ok[: wire.MAX_PUBLISHES]
    assert dropped == len(invalid) + 2
    big = Publish("o/big", b"b" * (wire.MAX_FRAME - 100), 1)
    frame, dropped = wire.encode_publishes([Publish("o/a", b"a" * 200, 1), big, ok[0]])
    assert len(frame) - 4 <= wire.MAX_FRAME
    assert [p.topic for p in wire.decode_publishes(frame[4:])] == ["o/a", "o/0"]
    assert dropped == 1
    largest = wire.MAX_FRAME - 1 - 2 - (2 + 5 + 1 + 4 + 2)
    frame, dropped = wire.encode_publishes([Publish("o/big", b"b" * largest, 1)])
    assert (len(frame) - 4, dropped) == (wire.MAX_FRAME, 0)
