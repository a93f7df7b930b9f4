"""PUBLISH / SUBSCRIBE / RECEIVE / retain / will through the real broker: certwarden decides."""

from __future__ import annotations

import time

from application.ports import Action

from .conftest import Stack
from .support import Grant, wait_until

NOT_AUTHORIZED = 0x87  # MQTT 5 section 2.4
SUBACK_FAILURE_311 = 0x80  # MQTT 3.1.1 section 3.9.3
ACCEPTED = (0x00, 0x10)  # success, or "no matching subscribers" (MQTT 5 section 3.4.2.1)


def everything(topic: str, retain: bool = True) -> Grant:
    return Grant(publish=(topic,), subscribe=(topic,), receive=(topic,), retain=retain)


def test_publish_outside_the_grant_gets_puback_0x87_and_is_not_delivered(
    stack: Stack, topic: str
) -> None:
    watcher = stack.connected(stack.device(Grant(subscribe=("t/",), receive=("t/",))))
    assert watcher.subscribe(topic + "#") == [1]
    sender = stack.connected(stack.device(Grant(publish=(topic + "ok/",))))
    assert sender.publish(topic + "secret/1") == NOT_AUTHORIZED
    assert sender.publish(topic + "ok/1") in ACCEPTED
    assert watcher.wait_message(topic + "ok/1")
    assert watcher.received(topic + "secret/1") == []


def test_subscribe_outside_the_grant_gets_a_failure_suback(stack: Stack, topic: str) -> None:
    device = stack.device(Grant(subscribe=(topic + "ok/",)))
    assert stack.connected(device, protocol=5).subscribe(topic + "no/#") == [NOT_AUTHORIZED]
    assert stack.connected(device, protocol=311).subscribe(topic + "no/#") == [SUBACK_FAILURE_311]
    assert stack.connected(device, protocol=311).subscribe(topic + "ok/#") == [1]


def test_receive_outside_the_grant_is_not_delivered(stack: Stack, topic: str) -> None:
    reader = stack.connected(stack.device(Grant(subscribe=(topic,), receive=(topic + "ok/",))))
    assert reader.subscribe(topic + "#") == [1]
    sender = stack.connected(stack.device(everything(topic)))
    assert sender.publish(topic + "secret/1") in ACCEPTED
    assert sender.publish(topic + "ok/1") in ACCEPTED
    assert reader.wait_message(topic + "ok/1")  # in order after secret/1 on one connection
    assert reader.received(topic + "secret/1") == []
    receives = [r for r in stack.fake.accesses_for(reader.client_id) if r.action is Action.RECEIVE]
    assert {r.topic for r in receives} == {topic + "secret/1", topic + "ok/1"}


def test_retained_publish_without_retain_right_is_refused_and_not_stored(
    stack: Stack, topic: str
) -> None:
    sender = stack.connected(stack.device(everything(topic, retain=False)))
    assert sender.publish(topic + "r", b"kept?", retain=True) == NOT_AUTHORIZED
    assert sender.publish(topic + "r", b"live", retain=False) in ACCEPTED
    late = stack.connected(stack.device(everything(topic)))
    assert late.subscribe(topic + "#") == [1]
    assert sender.publish(topic + "marker") in ACCEPTED
    assert late.wait_message(topic + "marker")
    assert late.received(topic + "r") == []
    writes = [r for r in stack.fake.accesses_for(sender.client_id) if r.topic == topic + "r"]
    assert [(r.action, r.retain) for r in writes] == [
        (Action.PUBLISH, True),
        (Action.PUBLISH, False),
    ]


def test_retained_publish_with_retain_right_reaches_a_later_subscriber(
    stack: Stack, topic: str
) -> None:
    sender = stack.connected(stack.device(everything(topic)))
    assert sender.publish(topic + "r", b"kept", retain=True) in ACCEPTED
    late = stack.connected(stack.device(everything(topic)))
    assert late.subscribe(topic + "#") == [1]
    assert late.wait_message(topic + "r")


def test_will_messages_are_checked_as_publish_when_the_device_drops(
    stack: Stack, topic: str
) -> None:
    watcher = stack.connected(stack.device(everything(topic)))
    assert watcher.subscribe(topic + "#") == [1]
    device = stack.device(Grant(publish=(topic + "ok/",)))
    denied = stack.connected(device, will=(topic + "no/will", b"bye", 1, False))
    allowed = stack.connected(
        stack.device(Grant(publish=(topic + "ok/",))), will=(topic + "ok/will", b"bye", 1, False)
    )
    denied.abort()
    allowed.abort()
    assert watcher.wait_message(topic + "ok/will")
    assert wait_until(
        lambda: any(r.topic == topic + "no/will" for r in stack.fake.accesses_for(denied.client_id))
    )
    assert watcher.received(topic + "no/will") == []
    will_check = [r for r in stack.fake.accesses_for(denied.client_id) if r.topic.endswith("will")]
    assert [(r.action, r.qos) for r in will_check] == [(Action.PUBLISH, 1)]


def test_unsubscribe_is_always_allowed(stack: Stack, topic: str) -> None:
    client = stack.connected(stack.device(everything(topic)))
    assert client.subscribe(topic + "#") == [1]
    before = len(stack.fake.accesses_for(client.client_id))
    assert client.unsubscribe(topic + "#") == [0]
    assert len(stack.fake.accesses_for(client.client_id)) == before  # never asked


def test_repeated_decisions_come_from_the_plugin_cache(stack: Stack, topic: str) -> None:
    client = stack.connected(stack.device(everything(topic)))
    assert wait_until(stack.fake.caught_up)  # the grant above flushes caches once
    for _ in range(5):
        assert client.publish(topic + "same") in ACCEPTED
    asked = [r for r in stack.fake.accesses_for(client.client_id) if r.topic == topic + "same"]
    assert len(asked) == 1


def test_a_grant_change_reaches_live_sessions_without_reconnect(stack: Stack, topic: str) -> None:
    device = stack.device(Grant(publish=(topic + "a/",)))
    client = stack.connected(device)
    assert client.publish(topic + "b/1") == NOT_AUTHORIZED  # cached as denied
    stack.fake.grant(device.fingerprint, Grant(publish=(topic + "a/", topic + "b/")))
    deadline = time.monotonic() + 2
    while client.publish(topic + "b/1") not in ACCEPTED:
        assert time.monotonic() < deadline, "the cached deny survived the generation change"
        time.sleep(0.02)
