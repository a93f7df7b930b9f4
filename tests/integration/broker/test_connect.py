"""CONNECT through the real Mosquitto + plugin: certwarden decides who gets in."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from adapters.mosquitto.broker import issue_service_client_cert, write_capath
from tests.factories import make_chain, make_root, make_self_signed_leaf, unique_cn

from .conftest import Stack
from .support import Device, Grant, raw_connack_311, tls_context

NOT_AUTHORIZED_311 = 5  # MQTT 3.1.1 section 3.2.2.3
NOT_AUTHORIZED_5 = 0x87  # MQTT 5 section 3.2.2.2


def test_unknown_certificate_gets_connack_5_over_mqtt_311(stack: Stack) -> None:
    device = stack.device()  # trusted by TLS, unknown to certwarden
    ctx = tls_context(stack.pki.ca_cert_path, device)
    assert raw_connack_311(stack.port, ctx, unique_cn("c")) == NOT_AUTHORIZED_311


def test_unknown_certificate_gets_connack_0x87_over_mqtt_5(stack: Stack) -> None:
    client = stack.client(stack.device(), protocol=5)
    assert client.connect() == NOT_AUTHORIZED_5


def test_known_certificate_is_accepted_and_its_details_reach_certwarden(stack: Stack) -> None:
    device = stack.device(Grant())
    client = stack.client(device, protocol=311)
    assert client.connect() == 0
    request, decision = stack.fake.connects[-1]
    assert request.certificate_der == device.issued.der
    assert (request.client_id, request.peer_ip) == (client.client_id, "127.0.0.1")
    assert decision.allowed


def test_client_without_certificate_never_reaches_mqtt(stack: Stack) -> None:
    before = len(stack.fake.connects)
    ctx = tls_context(stack.pki.ca_cert_path, None)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        raw_connack_311(stack.port, ctx, unique_cn("anon"))
    assert len(stack.fake.connects) == before


def test_certificate_from_an_untrusted_root_fails_the_tls_handshake(stack: Stack) -> None:
    stranger = stack.device(Grant(), issuer=make_root(unique_cn("stranger")))
    ctx = tls_context(stack.pki.ca_cert_path, stranger)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        raw_connack_311(stack.port, ctx, unique_cn("c"))


def test_a_root_added_to_capath_is_trusted_without_restart(stack: Stack, tmp_path: Path) -> None:
    root, intermediate, _ = make_chain()
    device = stack.device(Grant(), issuer=intermediate)
    anchors = [stack.pki.ca_pem, stack.device_ca.pem.decode()]
    write_capath(stack.config.capath, [*anchors, root.pem.decode(), intermediate.pem.decode()])
    try:
        assert stack.client(device).connect() == 0
    finally:
        write_capath(stack.config.capath, anchors)


def test_a_self_signed_device_certificate_in_capath_connects(stack: Stack, tmp_path: Path) -> None:
    leaf = make_self_signed_leaf(unique_cn("self"))
    device = Device.store(tmp_path, leaf)
    stack.fake.grant(device.fingerprint, Grant())
    anchors = [stack.pki.ca_pem, stack.device_ca.pem.decode()]
    write_capath(stack.config.capath, [*anchors, leaf.pem.decode()])
    try:
        assert stack.client(device).connect() == 0
    finally:
        write_capath(stack.config.capath, anchors)


def test_the_service_client_certificate_validates_against_the_server_ca(
    stack: Stack, tmp_path: Path
) -> None:
    device = Device.from_pem(tmp_path, *issue_service_client_cert(stack.pki))
    stack.fake.grant(device.fingerprint, Grant())
    assert stack.client(device).connect() == 0


def _cli(stack: Stack, device: Device, *args: str) -> list[str]:
    return [
        *args,
        "-h",
        "127.0.0.1",
        "-p",
        str(stack.port),
        "--cafile",
        str(stack.pki.ca_cert_path),
        "--cert",
        str(device.cert_path),
        "--key",
        str(device.key_path),
    ]


def test_mosquitto_cli_clients_publish_and_subscribe_through_the_plugin(
    stack: Stack, topic: str
) -> None:
    device = stack.device(Grant(publish=(topic,), subscribe=(topic,), receive=(topic,)))
    sub = subprocess.Popen(
        _cli(stack, device, "mosquitto_sub", "-t", topic + "#", "-C", "1", "-W", "10", "-i", "s1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # retained, so the order of subscribe and publish does not matter
        pub = subprocess.run(
            _cli(
                stack, device, "mosquitto_pub", "-t", topic + "cli", "-m", "hello", "-r", "-q", "1"
            ),
            capture_output=True,
            timeout=10,
        )
        assert pub.returncode == 0, pub.stderr
        out, err = sub.communicate(timeout=10)
        assert out.strip() == b"hello", err
    finally:
        sub.kill()
        sub.wait()


def test_mosquitto_cli_with_an_unknown_certificate_is_not_authorised(
    stack: Stack, topic: str
) -> None:
    device = stack.device()
    pub = subprocess.run(
        _cli(stack, device, "mosquitto_pub", "-t", topic + "x", "-m", "m", "-V", "mqttv311"),
        capture_output=True,
        timeout=10,
    )
    assert pub.returncode != 0
    assert b"not authorised" in pub.stderr.lower()
