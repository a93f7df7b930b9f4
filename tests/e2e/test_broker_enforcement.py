"""Devices get in, publish, retain, subscribe and receive only where the registry says,
through a real Mosquitto with the certwarden plugin (paho MQTT 3.1.1 and 5, TLS client certs)."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from tests import factories as f
from tests.e2e.conftest import ADMIN, Stack
from tests.integration.broker.support import Device, MqttClient, wait_until

NOT_AUTHORIZED = 0x87
ACCEPTED = (0, 0x10)  # success, or "no matching subscribers" (MQTT 5 PUBACK)


def refused(client: MqttClient) -> bool:
    """Refused either at TLS (OpenSSL rejects expired or unknown chains) or by CONNACK."""
    try:
        return client.connect(timeout=2) != 0
    except (TimeoutError, OSError):
        return True


@pytest.mark.parametrize("protocol", [4, 5])
def test_an_unregistered_leaf_of_a_registered_ca_gets_connack_not_authorized(
    stack: Stack, protocol: int
) -> None:
    org = stack.org()
    root = f.make_root(f.unique_cn("root"))
    stack.cw.registry.import_certificates(org, root.pem, ADMIN)
    stack.cw.sync()
    stranger = Device.store(stack.tmp / "devices", f.make_leaf(root, f.unique_cn()))
    code = MqttClient(stack.port, stack.ca_file, stranger, protocol=protocol).connect()
    assert code == NOT_AUTHORIZED  # paho reports 3.1.1 return code 5 as reason 0x87


def test_a_certificate_of_an_unknown_chain_fails_the_tls_handshake(stack: Stack) -> None:
    stranger = Device.store(stack.tmp / "devices", f.make_self_signed_leaf(f.unique_cn()))
    with pytest.raises((TimeoutError, OSError)):
        MqttClient(stack.port, stack.ca_file, stranger).connect(timeout=2)


@pytest.mark.parametrize("protocol", [4, 5])
def test_a_registered_active_certificate_is_accepted(stack: Stack, protocol: int) -> None:
    _, device, _ = stack.device(stack.org())
    client = MqttClient(stack.port, stack.ca_file, device, protocol=protocol)
    assert client.connect() == 0
    client.close()


@pytest.mark.parametrize("link", [0, 1, 2], ids=["leaf", "intermediate", "root"])
def test_an_inactive_link_anywhere_in_the_chain_refuses_the_device(stack: Stack, link: int) -> None:
    org = stack.org()
    _, device, chain = stack.device(org)
    stack.cw.registry.update_certificate(org, chain[link], {"status": "INACTIVE"}, ADMIN)
    stack.cw.sync()
    assert refused(MqttClient(stack.port, stack.ca_file, device))


def test_an_expired_certificate_is_refused(stack: Stack) -> None:
    from datetime import UTC, datetime, timedelta

    org = stack.org()
    root = f.make_root(f.unique_cn("root"))
    past = datetime.now(UTC) - timedelta(days=2)
    leaf = f.make_leaf(root, f.unique_cn(), not_before=past - timedelta(days=1), not_after=past)
    stack.cw.registry.import_certificates(org, leaf.pem + root.pem, ADMIN, policy_id="devices")
    stack.cw.sync()
    device = Device.store(stack.tmp / "devices", leaf)
    assert refused(MqttClient(stack.port, stack.ca_file, device))


def test_publishing_outside_the_policy_gets_0x87_and_is_not_delivered(stack: Stack) -> None:
    org = stack.org(
        [
            {"topics": ["${org.uid}/feed/#"], "actions": ["PUBLISH"]},
            {"topics": ["${org.uid}/#"], "actions": ["SUBSCRIBE"]},
        ]
    )
    _, device, _ = stack.device(org)
    _, watcher_device, _ = stack.device(org)
    watcher = MqttClient(stack.port, stack.ca_file, watcher_device)
    assert watcher.connect() == 0 and watcher.subscribe(f"{org}/#") == [1]
    client = MqttClient(stack.port, stack.ca_file, device)
    assert client.connect() == 0
    assert client.publish(f"{org}/other/x") == NOT_AUTHORIZED
    assert client.publish(f"{org}/feed/cid/1") == 0
    assert watcher.wait_message(f"{org}/feed/cid/1")
    time.sleep(0.2)
    assert watcher.received(f"{org}/other/x") == []
    client.close()
    watcher.close()


def test_a_retained_publish_needs_publish_retain_message_and_is_not_stored_without_it(
    stack: Stack,
) -> None:
    org = stack.org([{"topics": ["${org.uid}/feed/#"], "actions": ["PUBLISH", "SUBSCRIBE"]}])
    _, device, _ = stack.device(org)
    client = MqttClient(stack.port, stack.ca_file, device)
    assert client.connect() == 0
    assert client.publish(f"{org}/feed/retained", b"r", retain=True) == NOT_AUTHORIZED
    late = MqttClient(stack.port, stack.ca_file, stack.device(org)[1])
    assert late.connect() == 0 and late.subscribe(f"{org}/feed/#") == [1]
    time.sleep(0.3)
    assert late.received(f"{org}/feed/retained") == []
    client.close()
    late.close()


def test_subscribing_outside_the_policy_gets_a_failure_suback(stack: Stack) -> None:
    org = stack.org([{"topics": ["${org.uid}/feed/#"], "actions": ["SUBSCRIBE"]}])
    _, device, _ = stack.device(org)
    for protocol, refused in ((5, NOT_AUTHORIZED), (4, 0x80)):
        client = MqttClient(stack.port, stack.ca_file, device, protocol=protocol)
        assert client.connect() == 0
        assert client.subscribe(f"{org}/other/#") == [refused]
        assert client.subscribe(f"{org}/feed/a/#") == [1]
        client.close()


def test_the_first_connect_pins_the_host_and_another_address_is_refused(stack: Stack) -> None:
    org = stack.org()
    cid, device, _ = stack.device(org)
    first = MqttClient(stack.port, stack.ca_file, device)
    assert first.connect() == 0
    first.close()
    stack.cw.sync()
    assert stack.cw.registry.certificate(org, cid).pinned_host == "127.0.0.1"
    other = MqttClient(stack.port, stack.ca_file, device)
    other._c.connect("127.0.0.1", stack.port, keepalive=30, bind_address="127.0.0.2")
    other._c.loop_start()
    assert other._wait(lambda: other.inbox.connack is not None, 5) and other.inbox.connack != 0
    other.close()
    stack.cw.registry.update_certificate(org, cid, {"pinned_host": None}, ADMIN)
    stack.cw.sync()
    again = MqttClient(stack.port, stack.ca_file, device)
    again._c.connect("127.0.0.1", stack.port, keepalive=30, bind_address="127.0.0.2")
    again._c.loop_start()
    assert again._wait(lambda: again.inbox.connack is not None, 5) and again.inbox.connack == 0
    again.close()
    stack.cw.sync()
    assert stack.cw.registry.certificate(org, cid).pinned_host == "127.0.0.2"


def test_a_tenant_with_policy_hash_cannot_reach_another_tenant(stack: Stack) -> None:
    everything = [{"topics": ["#"], "actions": ["PUBLISH", "PUBLISH_RETAIN_MESSAGE", "SUBSCRIBE"]}]
    org_a, org_b = stack.org(everything), stack.org(everything)
    a = MqttClient(stack.port, stack.ca_file, stack.device(org_a)[1])
    b = MqttClient(stack.port, stack.ca_file, stack.device(org_b)[1])
    assert a.connect() == 0 and b.connect() == 0
    assert b.publish(f"{org_b}/secret", b"s", retain=True) in ACCEPTED
    assert a.publish(f"{org_b}/feed", b"x") == NOT_AUTHORIZED
    assert a.subscribe("#") == [NOT_AUTHORIZED]
    assert a.subscribe(f"{org_b}/#") == [NOT_AUTHORIZED]
    assert a.subscribe("+/secret") == [NOT_AUTHORIZED]
    assert a.subscribe(f"{org_a}/#") == [1]
    time.sleep(0.3)
    assert a.received() == []
    a.close()
    b.close()


def test_a_will_message_is_checked_like_a_publish(stack: Stack) -> None:
    org = stack.org(
        [
            {"topics": ["${org.uid}/feed/#"], "actions": ["PUBLISH"]},
            {"topics": ["${org.uid}/#"], "actions": ["SUBSCRIBE"]},
        ]
    )
    watcher = MqttClient(stack.port, stack.ca_file, stack.device(org)[1])
    assert watcher.connect() == 0 and watcher.subscribe(f"{org}/#") == [1]
    denied = MqttClient(
        stack.port, stack.ca_file, stack.device(org)[1], will=(f"{org}/other/will", b"w", 1, False)
    )
    allowed = MqttClient(
        stack.port, stack.ca_file, stack.device(org)[1], will=(f"{org}/feed/will", b"w", 1, False)
    )
    for client in (denied, allowed):
        if client.connect() == 0:
            client.abort()
    assert watcher.wait_message(f"{org}/feed/will")
    time.sleep(0.3)
    assert watcher.received(f"{org}/other/will") == []
    watcher.close()


def test_deactivating_an_intermediate_drops_live_sessions_within_a_second(stack: Stack) -> None:
    org = stack.org()
    _, device, chain = stack.device(org)
    client = MqttClient(stack.port, stack.ca_file, device)
    assert client.connect() == 0
    start = time.monotonic()
    stack.cw.registry.update_certificate(org, chain[1], {"status": "INACTIVE"}, ADMIN)
    stack.cw.sync()
    assert client.wait_disconnect(2.0)
    assert client.inbox.disconnected_at is not None
    assert client.inbox.disconnected_at - start < 1.0


def test_changing_the_policy_drops_the_session(stack: Stack) -> None:
    org = stack.org()
    stack.cw.registry.create_policy(
        org, "other", "Other", [{"topics": ["${org.uid}/x"], "actions": ["PUBLISH"]}], ADMIN
    )
    cid, device, _ = stack.device(org)
    client = MqttClient(stack.port, stack.ca_file, device)
    assert client.connect() == 0
    stack.cw.registry.update_certificate(org, cid, {"policy_id": "other"}, ADMIN)
    stack.cw.sync()
    assert client.wait_disconnect(2.0)


def test_mosquitto_command_line_clients_are_enforced_too(stack: Stack) -> None:
    org = stack.org()
    _, device, _ = stack.device(org)
    base = [
        "--cafile",
        str(stack.ca_file),
        "--cert",
        str(device.cert_path),
        "--key",
        str(device.key_path),
        "-h",
        "127.0.0.1",
        "-p",
        str(stack.port),
        "-V",
        "mqttv5",
        "-q",
        "1",
    ]
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            *base,
            "-t",
            f"{org}/feed/#",
            "-C",
            "1",
            "-W",
            "10",
            "-i",
            f"sub-{uuid.uuid4().hex[:6]}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    ok = subprocess.run(
        [
            "mosquitto_pub",
            *base,
            "-t",
            f"{org}/feed/cli",
            "-m",
            "hello",
            "-i",
            f"pub-{uuid.uuid4().hex[:6]}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert ok.returncode == 0, ok.stderr
    out, _ = sub.communicate(timeout=10)
    assert out.strip() == "hello"
    denied = subprocess.run(
        [
            "mosquitto_pub",
            *base,
            "-t",
            f"{org}/elsewhere",
            "-m",
            "x",
            "-i",
            f"pub-{uuid.uuid4().hex[:6]}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert "not authorized" in (denied.stdout + denied.stderr).lower()
    stranger = Device.store(stack.tmp / "devices", f.make_self_signed_leaf(f.unique_cn()))
    refused = subprocess.run(
        [
            "mosquitto_pub",
            "--cafile",
            str(stack.ca_file),
            "--cert",
            str(stranger.cert_path),
            "--key",
            str(stranger.key_path),
            "-h",
            "127.0.0.1",
            "-p",
            str(stack.port),
            "-t",
            f"{org}/feed/x",
            "-m",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert refused.returncode != 0
    assert wait_until(lambda: True)
