"""The run publisher's child process against the real Mosquitto (127.0.0.1:1883)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from adapters.mqtt_process import ProcessCommandPublisher
from adapters.mqtt_publisher import MqttTarget
from application.ports import PublishError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers signal 0: it has ended, its parent just did not reap it
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def topic_root() -> str:
    return f"pubtest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def received(topic_root: str) -> Iterator[list[str]]:
    """Topics a device-side subscriber receives under the test's root."""
    topics: list[str] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda c, u, m: topics.append(m.topic)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    client.subscribe(f"{topic_root}/#", qos=1)
    assert subscribed.wait(5), "subscription not acknowledged"
    yield topics
    client.disconnect()
    client.loop_stop()


def test_every_message_up_to_a_mark_is_delivered_once_wait_acked_returns(
    topic_root: str, received: list[str]
) -> None:
    publisher = ProcessCommandPublisher(MqttTarget(), batch=64)
    publisher.open()
    try:
        for i in range(1000):
            publisher.publish(f"{topic_root}/manage/cert/roll/cid/c{i}", b"{}")
        publisher.wait_acked(publisher.mark(), 30)
    finally:
        publisher.close()
    deadline = time.monotonic() + 10
    while len(received) < 1000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(received) == sorted(
        f"{topic_root}/manage/cert/roll/cid/c{i}" for i in range(1000)
    )


def test_an_unreachable_broker_is_a_publish_error_at_open() -> None:
    publisher = ProcessCommandPublisher(MqttTarget(port=1, connect_timeout=2))
    with pytest.raises(PublishError, match="unreachable"):
        publisher.open()


def test_a_publisher_process_that_dies_fails_the_wait_instead_of_hanging(topic_root: str) -> None:
    publisher = ProcessCommandPublisher(MqttTarget())
    publisher.open()
    try:
        publisher.publish(f"{topic_root}/manage/cert/roll/cid/c0", b"{}")
        mark = publisher.mark()
        assert publisher.pid is not None
        os.kill(publisher.pid, signal.SIGKILL)
        with pytest.raises(PublishError):
            publisher.wait_acked(mark + 1, 10)
        with pytest.raises(PublishError):
            for i in range(10_000):  # the pipe breaks, or the error is seen first
                publisher.publish(f"{topic_root}/manage/cert/roll/cid/c{i}", b"{}")
    finally:
        publisher.close()


def test_a_worker_killed_mid_run_leaves_no_publisher_process_behind(topic_root: str) -> None:
    worker = subprocess.Popen(  # a worker process publishing until it is killed
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from adapters.mqtt_process import ProcessCommandPublisher
                from adapters.mqtt_publisher import MqttTarget
                publisher = ProcessCommandPublisher(MqttTarget())
                publisher.open()
                print(publisher.pid, flush=True)
                i = 0
                while True:
                    publisher.publish("{topic_root}/manage/cert/roll/cid/c%d" % i, b"{{}}")
                    i += 1
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        child = int(worker.stdout.readline())
        time.sleep(0.5)
        assert _alive(child)
        worker.kill()
        worker.wait(10)
        assert _wait_gone(child), "the publisher process outlived its worker"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
