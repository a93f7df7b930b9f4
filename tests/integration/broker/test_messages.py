"""Device requests reach certwarden as MESSAGE frames and its PUBLISHES replies go back through
the real broker (plugin + fake authorizer; PROTOCOL.md, MESSAGE and PUBLISHES)."""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.mosquitto import authz_server, wire
from adapters.mosquitto.authz_server import AuthzSocketServer
from adapters.mosquitto.broker import ServerPki
from application.ports import Publish
from tests.factories import Issued

from .conftest import Stack, StackFactory, start_stack
from .support import FakeAuthorizer, Grant, Message, correlation_of, wait_until

NOT_AUTHORIZED = 0x87
ACCEPTED = (0x00, 0x10)  # success, or "no matching subscribers" (MQTT 5 section 3.4.2.1)
PEER = "127.0.0.1"


def new_org() -> str:
    return f"o{uuid.uuid4().hex[:10]}"


def requester(org: str) -> Grant:
    """May publish requests and read anything in its org and the discovery topics."""
    return Grant(
        publish=(f"{org}/", "manage/cert/myorg/"),
        subscribe=(f"{org}/", "manage/"),
        receive=(f"{org}/", "manage/"),
        retain=False,
    )


@pytest.fixture
def fake(stack: Stack) -> Iterator[FakeAuthorizer]:
    yield stack.fake
    stack.fake.replier = lambda _m: []


def test_a_request_reaches_certwarden_with_every_field_and_the_reply_keeps_its_correlation(
    stack: Stack, fake: FakeAuthorizer
) -> None:
    org = new_org()
    fake.replier = lambda m: [
        Publish(m.response_topic or "", b"ok:" + m.payload, 1, b"c-" + (m.correlation_data or b""))
    ]
    device = stack.device(requester(org))
    client = stack.connected(device)
    assert client.subscribe(f"{org}/answers/me") == [1]
    topic = f"{org}/manage/cert/register/cid/comp-1"
    sent = client.publish(
        topic, b'{"curCerts":[]}', response_topic=f"{org}/answers/me", correlation_data=b"\x00\x01"
    )
    assert sent in ACCEPTED
    assert fake.messages_on(topic) == [
        Message(
            device.fingerprint,
            client.client_id,
            PEER,
            topic,
            b'{"curCerts":[]}',
            f"{org}/answers/me",
            b"\x00\x01",
        )
    ]
    reply = client.next_message(f"{org}/answers/me")
    assert reply.payload == b'ok:{"curCerts":[]}'
    assert correlation_of(reply) == b"c-\x00\x01"


def test_a_request_over_mqtt_311_carries_no_response_topic_or_correlation_data(
    stack: Stack, fake: FakeAuthorizer
) -> None:
    org = new_org()
    fake.replier = lambda m: [Publish(f"{org}/cid/comp-1/reply", m.payload, 1, None)]
    client = stack.connected(stack.device(requester(org)), protocol=4)
    assert client.subscribe(f"{org}/cid/comp-1/reply") == [1]
    topic = f"{org}/manage/cert/unregister/cid/comp-1"
    assert client.publish(topic, b"{}") == 0
    [message] = fake.messages_on(topic)
    assert (message.response_topic, message.correlation_data) == (None, None)
    assert client.next_message(f"{org}/cid/comp-1/reply").payload == b"{}"


def test_only_the_three_request_shapes_are_forwarded(stack: Stack, fake: FakeAuthorizer) -> None:
    org = new_org()
    client = stack.connected(stack.device(requester(org)))
    ignored = [
        f"{org}/manage/cert/roll/cid/c",
        f"{org}/manage/cert/register/cid/c/extra",
        f"{org}/manage/cert/register/c",
        f"{org}/x/manage/cert/register/cid/c",
        f"{org}/feed/cid/c",
        "manage/cert/myorg/cid/c/extra",
    ]
    forwarded = [
        f"{org}/manage/cert/register/cid/c",
        f"{org}/manage/cert/unregister/cid/c",
        f"{org}/manage/cert/register/cid/",  # '+' matches an empty level (MQTT 5 4.7.1.3)
        "manage/cert/myorg/cid/c",
    ]
    for topic in ignored + forwarded:
        assert client.publish(topic) in ACCEPTED  # PUBACK follows the plugin's MESSAGE call
    mine = [m.topic for m in fake.messages if m.client_id == client.client_id]
    assert mine == forwarded


def test_a_request_the_acl_refuses_is_not_forwarded(stack: Stack, fake: FakeAuthorizer) -> None:
    org = new_org()
    client = stack.connected(stack.device(Grant(publish=(f"{org}/feed/",))))
    topic = f"{org}/manage/cert/register/cid/c"
    assert client.publish(topic) == NOT_AUTHORIZED
    assert fake.messages_on(topic) == []


def test_the_request_is_still_delivered_to_subscribers_allowed_to_receive_it(
    stack: Stack, fake: FakeAuthorizer
) -> None:
    org = new_org()
    watcher = stack.connected(stack.device(requester(org)))
    assert watcher.subscribe(f"{org}/manage/#") == [1]
    client = stack.connected(stack.device(requester(org)))
    topic = f"{org}/manage/cert/register/cid/c"
    assert client.publish(topic, b"public certificates only") == 0
    assert watcher.next_message(topic).payload == b"public certificates only"
    assert len(fake.messages_on(topic)) == 1


def largest_payload(client_id: str, topic: str) -> int:
    """MESSAGE = type | fp | client id | peer | topic | u32 payload | response | u16 corr."""
    fields = 1 + wire.FP_LEN + 2 + len(client_id) + 2 + len(PEER) + 2 + len(topic) + 4 + 2 + 2
    return wire.MAX_FRAME - fields


def test_a_payload_filling_the_frame_exactly_is_forwarded_and_one_byte_more_is_not(
    stack: Stack, fake: FakeAuthorizer
) -> None:
    org = new_org()
    client = stack.connected(stack.device(requester(org)), protocol=4)
    topic = f"{org}/manage/cert/register/cid/big"
    limit = largest_payload(client.client_id, topic)
    assert client.publish(topic, b"a" * limit) == 0
    assert client.publish(topic, b"b" * (limit + 1)) == 0  # still delivered, not forwarded
    assert client.publish(topic, b"small") == 0
    assert [m.payload for m in fake.messages_on(topic)] == [b"a" * limit, b"small"]
    assert "not forwarded: over the frame limit" in stack.mosquitto.log_tail(200)


def test_replies_that_are_not_topic_names_or_beyond_the_limits_are_left_out(
    stack: Stack, fake: FakeAuthorizer
) -> None:
    org = new_org()
    many = [Publish(f"{org}/n/{i}", b"n", 1) for i in range(wire.MAX_PUBLISHES + 4)]
    fake.replier = lambda _m: [
        Publish(f"{org}/wild/#", b"w", 1),
        Publish("$SYS/broker/x", b"s", 1),
        Publish(f"{org}/huge", b"h" * wire.MAX_FRAME, 1),
        *many,
    ]
    client = stack.connected(stack.device(requester(org)))
    assert client.subscribe(f"{org}/#") == [1]
    assert client.publish(f"{org}/manage/cert/register/cid/c") in ACCEPTED
    last = f"{org}/n/{wire.MAX_PUBLISHES - 1}"
    assert client.wait_message(last)
    replies = {m.topic for m in client.received() if m.topic != f"{org}/manage/cert/register/cid/c"}
    assert replies == {f"{org}/n/{i}" for i in range(wire.MAX_PUBLISHES)}


def test_an_authorizer_that_raises_means_no_reply_and_decisions_go_on(
    stack: Stack, fake: FakeAuthorizer
) -> None:
    def broken(_m: Message) -> list[Publish]:
        raise RuntimeError("registry down")

    org = new_org()
    fake.replier = broken
    client = stack.connected(stack.device(requester(org)))
    assert client.subscribe(f"{org}/cid/c/reply") == [1]
    assert client.publish(f"{org}/manage/cert/register/cid/c") in ACCEPTED
    fake.replier = lambda _m: [Publish(f"{org}/cid/c/reply", b"second", 1)]
    assert client.publish(f"{org}/manage/cert/register/cid/c") in ACCEPTED
    assert client.next_message(f"{org}/cid/c/reply").payload == b"second"
    assert [m.payload for m in client.received(f"{org}/cid/c/reply")] == [b"second"]


def test_a_server_speaking_only_version_1_is_never_sent_a_message(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(authz_server, "PROTOCOL_VERSION", 1)
    s = make_stack()
    org = new_org()
    client = s.connected(s.device(requester(org)))
    assert client.publish(f"{org}/manage/cert/register/cid/c") in ACCEPTED
    assert client.publish(f"{org}/feed/x") in ACCEPTED  # the link is still up
    assert s.fake.messages == []
    assert "denying until it answers" not in s.mosquitto.log_tail(200)


# ---- a server whose PUBLISHES replies are set by the test ----------------------------------


def entry(topic: bytes, qos: int = 1, payload: bytes = b"p", corr: bytes = b"") -> bytes:
    return (
        struct.pack(">H", len(topic))
        + topic
        + struct.pack(">BI", qos, len(payload))
        + payload
        + struct.pack(">H", len(corr))
        + corr
    )


def publishes(*entries: bytes, count: int | None = None, tail: bytes = b"") -> bytes:
    n = len(entries) if count is None else count
    return wire.frame(wire.MsgType.PUBLISHES, struct.pack(">H", n) + b"".join(entries) + tail)


class ScriptedServer(AuthzSocketServer):
    """The real server, except that MESSAGE is answered with the raw frame in `reply`."""

    def __init__(self, authorizer: FakeAuthorizer, path: Path) -> None:
        super().__init__(authorizer, path)
        self.reply = publishes()
        self.connections = 0

    def _serve(self, conn: socket.socket) -> None:
        self.connections += 1
        super()._serve(conn)

    def _answer(self, request: wire.Request) -> bytes:
        if isinstance(request, wire.MessageQuery):
            return self.reply
        return super()._answer(request)


def log_count(s: Stack, text: str) -> int:
    return s.config.log_path.read_text(errors="replace").count(text)


@pytest.fixture(scope="module")
def scripted(
    plugin_path: Path, server_pki: ServerPki, device_ca: Issued
) -> Iterator[tuple[Stack, ScriptedServer]]:
    s = start_stack(plugin_path, server_pki, device_ca, serve=False, retry_max_ms=20)
    server = ScriptedServer(s.fake, s.server.socket_path)
    server.start()
    yield s, server
    server.stop()
    s.close()


def garbled(case: str, topic: bytes) -> bytes:
    """PUBLISHES frames that do not parse exactly; each would publish on `topic` if obeyed."""
    one = entry(topic)
    return {
        "too-many": publishes(*[one] * (wire.MAX_PUBLISHES + 1)),
        "qos-3": publishes(entry(topic, qos=3)),
        "empty-topic": publishes(entry(b""), one),
        "count-over-entries": publishes(one, count=2),
        "trailing-byte": publishes(one, tail=b"\x00"),
        "payload-past-the-end": publishes(one[: -(4 + 1 + 2)] + b"\xff\xff\xff\xff\x00\x00"),
    }[case]


GARBLED = [
    "too-many",
    "qos-3",
    "empty-topic",
    "count-over-entries",
    "trailing-byte",
    "payload-past-the-end",
]


@pytest.mark.parametrize("case", GARBLED)
def test_a_garbled_publishes_reply_publishes_nothing_and_the_link_is_reopened(
    scripted: tuple[Stack, ScriptedServer], case: str
) -> None:
    s, server = scripted
    org = new_org()
    client = s.connected(s.device(requester(org)))
    assert client.subscribe(f"{org}/#") == [1]
    server.reply = garbled(case, f"{org}/r".encode())
    before = server.connections
    assert client.publish(f"{org}/manage/cert/register/cid/c") in ACCEPTED
    assert "garbled PUBLISHES" in s.mosquitto.log_tail(50)
    assert wait_until(lambda: server.connections > before, timeout=3)  # a fresh HELLO
    assert wait_until(lambda: client.publish(f"{org}/feed/x") in ACCEPTED, timeout=3)
    assert client.wait_message(f"{org}/feed/x")
    time.sleep(0.2)  # a reply would have left at the broker's next loop (<= 100 ms)
    assert client.received(f"{org}/r") == []
    assert s.mosquitto.running()


def test_a_reply_to_a_topic_filter_is_dropped_by_the_plugin_and_the_others_published(
    scripted: tuple[Stack, ScriptedServer],
) -> None:
    s, server = scripted
    org = new_org()
    client = s.connected(s.device(requester(org)))
    assert client.subscribe(f"{org}/#") == [1]
    server.reply = publishes(
        entry(f"{org}/wild/#".encode()),
        entry(f"{org}/bad\xff".encode("latin-1")),
        entry(f"{org}/ok".encode(), qos=0, payload=b"fine", corr=b"k"),
    )
    before, dropped = server.connections, log_count(s, "reply to an invalid topic dropped")
    assert client.publish(f"{org}/manage/cert/register/cid/c") in ACCEPTED
    reply = client.next_message(f"{org}/ok")
    assert (reply.payload, reply.qos) == (b"fine", 0)
    assert correlation_of(reply) == b"k"
    assert wait_until(lambda: log_count(s, "reply to an invalid topic dropped") == dropped + 2)
    assert [m.topic for m in client.received() if "/manage/" not in m.topic] == [f"{org}/ok"]
    assert server.connections == before  # not a protocol error: the link stays
