"""Live sessions: revocation kicks, re-checks, session takeover, persistent sessions, SIGHUP."""

from __future__ import annotations

import time

from .conftest import Stack, StackFactory
from .support import Grant, wait_until

ACCEPTED = (0x00, 0x10)
NOT_AUTHORIZED = 0x87
ADMINISTRATIVE_ACTION = 0x98  # MQTT 5 section 3.14.2.1
REVOCATION_BUDGET_S = 1.0  # the product promise: a revoked device is off within a second


def everything(topic: str) -> Grant:
    return Grant(publish=(topic,), subscribe=(topic,), receive=(topic,))


def test_revocation_disconnects_the_live_session_within_a_second(
    stack: Stack, topic: str, record_property: object
) -> None:
    device = stack.device(everything(topic))
    client = stack.connected(device)
    started = time.monotonic()
    stack.fake.revoke(device.fingerprint)
    assert client.wait_disconnect(timeout=5)
    assert client.inbox.disconnected_at is not None
    latency = client.inbox.disconnected_at - started
    if callable(record_property):
        record_property("revocation_latency_ms", round(latency * 1000))
    print(f"revocation latency: {latency * 1000:.0f} ms")
    assert client.inbox.disconnect_reason == ADMINISTRATIVE_ACTION
    assert latency < REVOCATION_BUDGET_S


def test_a_revoked_certificate_cannot_connect_again(stack: Stack, topic: str) -> None:
    device = stack.device(everything(topic))
    stack.connected(device).close()
    stack.fake.revoke(device.fingerprint)
    assert stack.client(device).connect() == NOT_AUTHORIZED


def test_a_recheck_that_now_fails_disconnects_the_session(stack: Stack, topic: str) -> None:
    device = stack.device(everything(topic))
    client = stack.connected(device)
    keeper = stack.connected(stack.device(everything(topic)))
    checks_before = len(stack.fake.connects)
    stack.fake.withdraw(device.fingerprint)  # recheck, not kick
    assert client.wait_disconnect(timeout=5)
    rechecks = [
        d for r, d in stack.fake.connects[checks_before:] if r.client_id == client.client_id
    ]
    assert [d.allowed for d in rechecks] == [False]
    assert keeper.inbox.disconnected_at is None
    assert keeper.publish(topic + "still-here") in ACCEPTED


def test_revoking_one_device_leaves_the_others_connected(stack: Stack, topic: str) -> None:
    revoked_device = stack.device(everything(topic))
    revoked = stack.connected(revoked_device)
    other = stack.connected(stack.device(everything(topic)))
    stack.fake.revoke(revoked_device.fingerprint)
    assert revoked.wait_disconnect(timeout=5)
    time.sleep(0.2)  # a few ticks
    assert other.inbox.disconnected_at is None
    assert other.publish(topic + "x") in ACCEPTED


def test_a_session_taken_over_by_the_same_client_id_keeps_working(stack: Stack, topic: str) -> None:
    device = stack.device(everything(topic))
    first = stack.connected(device, client_id="same-" + topic.split("/")[1])
    second = stack.connected(device, client_id=first.client_id)
    assert first.wait_disconnect(timeout=5)  # Mosquitto closes the older connection
    assert second.subscribe(topic + "#") == [1]
    assert second.publish(topic + "after-takeover") in ACCEPTED
    assert second.wait_message(topic + "after-takeover")


def test_a_persistent_session_gets_messages_queued_while_offline(stack: Stack, topic: str) -> None:
    device = stack.device(everything(topic))
    client_id = "persist-" + topic.split("/")[1]
    sleeper = stack.connected(device, client_id=client_id, protocol=311, clean=False)
    assert sleeper.subscribe(topic + "#", qos=1) == [1]
    sleeper.close()
    sender = stack.connected(stack.device(everything(topic)))
    assert sender.publish(topic + "while-away", qos=1) in ACCEPTED
    woken = stack.connected(device, client_id=client_id, protocol=311, clean=False)
    assert woken.wait_message(topic + "while-away")


def test_sighup_keeps_authorized_certificate_sessions(make_stack: StackFactory, topic: str) -> None:
    s = make_stack()
    client = s.connected(s.device(everything(topic)))
    assert client.subscribe(topic + "#") == [1]
    s.mosquitto.reload()
    assert wait_until(lambda: "Reloading config" in s.mosquitto.log_tail(), timeout=5)
    time.sleep(0.3)
    assert client.inbox.disconnected_at is None
    assert client.publish(topic + "after-reload") in ACCEPTED
    assert client.wait_message(topic + "after-reload")
