"""Device requests over MQTT (org discovery, register, unregister) reach certwarden through the
real Mosquitto + plugin, and the replies come back through the broker to the device."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests import factories as f
from tests.e2e.conftest import ADMIN, Stack
from tests.integration.broker.support import (
    FD_SETSIZE,
    Device,
    MqttClient,
    correlation_of,
    descriptors_taken_below,
    raw_connack_311,
    tls_context,
    wait_until,
)

ACCEPTED = (0, 0x10)  # success, or "no matching subscribers" (MQTT 5 PUBACK)
COMPONENT = "comp-1"
POLICY = [
    {"topics": ["${org.uid}/feed/#"], "actions": ["PUBLISH", "SUBSCRIBE"]},
    {"topics": ["${org.uid}/manage/cert/+/cid/+"], "actions": ["PUBLISH"]},
    {"topics": ["${org.uid}/cid/+/reply"], "actions": ["SUBSCRIBE"]},
]


@dataclass
class Fleet:
    """One device: its registered root -> device CA -> leaf chain and the org it lives in."""

    org: str
    root: f.Issued
    ca: f.Issued
    leaf: f.Issued
    device: Device

    def reply_topic(self) -> str:
        return f"{self.org}/cid/{COMPONENT}/reply"

    def request_topic(self, verb: str) -> str:
        return f"{self.org}/manage/cert/{verb}/cid/{COMPONENT}"


@pytest.fixture
def fleet(stack: Stack) -> Fleet:
    org = stack.org(POLICY)
    root, ca, leaf = f.make_chain()
    stack.cw.registry.import_certificates(
        org, leaf.pem + ca.pem + root.pem, ADMIN, policy_id="devices"
    )
    stack.cw.sync()
    return Fleet(org, root, ca, leaf, Device.store(stack.tmp / "devices", leaf))


@pytest.fixture
def clients() -> Iterator[list[MqttClient]]:
    opened: list[MqttClient] = []
    yield opened
    for client in opened:
        client.close()


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Iterator[list[str]]:
    """Measurements printed in the test output (never asserted: timing belongs in bench/)."""
    lines: list[str] = []
    yield lines
    with capsys.disabled():
        for line in lines:
            print(f"\n  [measured] {line}", end="")


def connect(stack: Stack, device: Device, clients: list[MqttClient], **kw: object) -> MqttClient:
    client = MqttClient(stack.port, stack.ca_file, device, **kw)  # type: ignore[arg-type]
    clients.append(client)
    assert client.connect() == 0
    return client


def pems(*certs: f.Issued) -> list[str]:
    return [c.pem.decode() for c in certs]


def request(client: MqttClient, topic: str, reply_topic: str, body: bytes) -> dict[str, object]:
    """Publish a request and return the JSON reply that arrives on reply_topic."""
    seen = len(client.received(reply_topic))
    assert client.publish(topic, body) in ACCEPTED
    assert client._wait(lambda: len(client.received(reply_topic)) > seen, 5.0), "no reply"
    reply = json.loads(client.received(reply_topic)[seen].payload)
    assert isinstance(reply, dict)
    return reply


def register_next_chain(
    fleet: Fleet, client: MqttClient, stack: Stack
) -> tuple[dict[str, object], Device]:
    ca2 = f.make_intermediate(fleet.root, f.unique_cn("device-ca-v2"))
    leaf2 = f.make_leaf(ca2, f.unique_cn("dev-v2"))
    body = {"curCerts": pems(fleet.leaf, fleet.ca), "newCerts": pems(leaf2, ca2)}
    reply = request(
        client, fleet.request_topic("register"), fleet.reply_topic(), json.dumps(body).encode()
    )
    return reply, Device.store(stack.tmp / "devices", leaf2)


def accepted(stack: Stack, device: Device) -> bool:
    """One bare TLS + MQTT 3.1.1 CONNECT (no client library retrying behind our back): True
    for CONNACK 0; False when refused by CONNACK or at TLS (an unknown or removed CA)."""
    try:
        return raw_connack_311(stack.port, tls_context(stack.ca_file, device), "probe") == 0
    except (OSError, ValueError):  # ssl.SSLError and ConnectionError are OSErrors
        return False


def refused(stack: Stack, device: Device) -> bool:
    return not accepted(stack, device)


def test_myorg_with_a_private_response_topic_answers_the_org_uid_with_the_correlation_data(
    stack: Stack, fleet: Fleet, clients: list[MqttClient], report: list[str]
) -> None:
    client = connect(stack, fleet.device, clients)
    private = f"manage/cert/myorg/client/{client.client_id}/reply"
    assert client.subscribe(private) == [1]
    start = time.monotonic()
    sent = client.publish(
        f"manage/cert/myorg/cid/{COMPONENT}", b"", response_topic=private, correlation_data=b"q-17"
    )
    assert sent in ACCEPTED
    reply = client.next_message(private)
    report.append(f"myorg request -> reply: {(time.monotonic() - start) * 1000:.0f} ms")
    assert reply.payload == fleet.org.encode()
    assert correlation_of(reply) == b"q-17"


def test_myorg_over_mqtt_311_answers_on_the_component_reply_topic(
    stack: Stack, fleet: Fleet, clients: list[MqttClient]
) -> None:
    client = connect(stack, fleet.device, clients, protocol=4)
    assert client.subscribe(fleet.reply_topic()) == [1]
    assert client.publish(f"manage/cert/myorg/cid/{COMPONENT}", b"") == 0
    assert client.next_message(fleet.reply_topic()).payload == fleet.org.encode()


def test_a_device_registers_its_next_chain_over_mqtt_and_the_new_certificate_connects(
    stack: Stack, fleet: Fleet, clients: list[MqttClient], report: list[str]
) -> None:
    old = connect(stack, fleet.device, clients)
    assert old.subscribe(fleet.reply_topic()) == [1]
    reply, successor = register_next_chain(fleet, old, stack)
    replied = time.monotonic()
    assert reply["success"] is True and reply["reason"] == "registered", reply
    attempts: list[bool] = []

    def attempt() -> bool:
        attempts.append(accepted(stack, successor))
        return attempts[-1]

    assert wait_until(attempt)
    report.append(
        f"register reply -> first CONNACK 0 for the new certificate: "
        f"{(time.monotonic() - replied) * 1000:.0f} ms ({len(attempts)} attempt(s))"
    )
    new = connect(stack, successor, clients)
    assert new.publish(f"{fleet.org}/feed/cid/{COMPONENT}") in ACCEPTED
    assert old.inbox.disconnected_at is None  # registering alone retires nothing


def test_unregistering_the_old_chain_over_the_old_connection_drops_it_for_good(
    stack: Stack, fleet: Fleet, clients: list[MqttClient], report: list[str]
) -> None:
    old = connect(stack, fleet.device, clients)
    assert old.subscribe(fleet.reply_topic()) == [1]
    registered, successor = register_next_chain(fleet, old, stack)
    assert registered["success"] is True, registered
    assert wait_until(lambda: accepted(stack, successor), timeout=5.0)
    new = connect(stack, successor, clients)
    assert new.subscribe(fleet.reply_topic()) == [1]
    seen = len(new.received(fleet.reply_topic()))
    body = json.dumps({"certs": pems(fleet.leaf, fleet.ca)}).encode()
    assert old.publish(fleet.request_topic("unregister"), body) in ACCEPTED
    assert new._wait(lambda: len(new.received(fleet.reply_topic())) > seen, 5.0), "no reply"
    replied = time.monotonic()
    reply = json.loads(new.received(fleet.reply_topic())[seen].payload)
    assert reply["success"] is True and reply["reason"] == "unregistered", reply
    assert old.wait_disconnect(5.0)
    assert old.inbox.disconnected_at is not None
    report.append(
        f"unregister reply -> old connection dropped: "
        f"{max(0.0, old.inbox.disconnected_at - replied) * 1000:.0f} ms"
    )
    assert refused(stack, fleet.device)
    assert new.inbox.disconnected_at is None
    assert new.publish(f"{fleet.org}/feed/cid/{COMPONENT}") in ACCEPTED


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"curCerts": "x", "newCerts": []}', b"\xff\xfe"],
    ids=["not-json", "not-an-object", "wrong-types", "not-utf8"],
)
def test_a_garbage_register_request_gets_a_failure_reply(
    stack: Stack, fleet: Fleet, clients: list[MqttClient], body: bytes
) -> None:
    client = connect(stack, fleet.device, clients)
    assert client.subscribe(fleet.reply_topic()) == [1]
    reply = request(client, fleet.request_topic("register"), fleet.reply_topic(), body)
    assert reply["success"] is False and reply["reason"], reply


def test_replies_still_go_out_once_the_server_holds_descriptors_above_fd_setsize(
    stack: Stack, fleet: Fleet, clients: list[MqttClient]
) -> None:
    client = connect(stack, fleet.device, clients)  # its socket is opened before: low number
    assert client.subscribe(fleet.reply_topic()) == [1]
    fresh, previous = stack.runtime.reply_publisher(), stack.cw.enforcement.replies
    stack.cw.enforcement.replies = fresh  # its session is opened by the next reply ...
    try:
        with descriptors_taken_below(FD_SETSIZE):  # ... on a descriptor select() cannot watch
            reply = request(client, fleet.request_topic("register"), fleet.reply_topic(), b"{}")
    finally:
        stack.cw.enforcement.replies = previous
        fresh.close()
    assert reply["success"] is False and reply["reason"], reply  # answered, by `fresh`


def test_an_oversize_request_gets_no_reply_and_the_broker_keeps_answering(
    stack: Stack, fleet: Fleet, clients: list[MqttClient]
) -> None:
    client = connect(stack, fleet.device, clients)
    assert client.subscribe(fleet.reply_topic()) == [1]
    huge = json.dumps({"certs": ["x" * 70_000]}).encode()  # over the 64 KiB authz frame
    assert client.publish(fleet.request_topic("unregister"), huge) in ACCEPTED
    reply = request(client, fleet.request_topic("register"), fleet.reply_topic(), b"{}")
    assert reply["success"] is False  # the next request is answered, and it is the only reply
    time.sleep(0.2)
    assert len(client.received(fleet.reply_topic())) == 1
    assert stack.runtime.mosquitto is not None and stack.runtime.mosquitto.running()
    assert client.inbox.disconnected_at is None
