"""Runs against the real Mosquitto (127.0.0.1:1883) and Redis: devices receive their commands."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from application.bootstrap import Certwarden, bootstrap
from tests import factories as f
from tests.conftest import make_settings
from tests.operations_support import ADMIN, new_org, operation, seed


class Subscriber:
    """A device-side paho client collecting what arrives under a topic filter."""

    def __init__(self, topic_filter: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()
        self.client.subscribe(topic_filter, qos=1)
        assert subscribed.wait(5), "subscription not acknowledged"

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((message.topic, message.payload))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[tuple[str, bytes]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def container(tmp_path: Path, **ops: object) -> Certwarden:
    settings = make_settings("sqlite", tmp_path).model_copy(
        update={
            "broker_enabled": False,
            "ops_mqtt_host": "127.0.0.1",
            "ops_mqtt_port": 1883,
            "ops_mqtt_tls": False,
            "ops_worker_threads": 2,
            **ops,
        }
    )
    cw = bootstrap(settings)
    cw.start(background=False)
    return cw


@pytest.fixture
def redis_cw(tmp_path: Path) -> Iterator[Certwarden]:
    tag = uuid.uuid4().hex[:10]
    cw = container(
        tmp_path, ops_broker="redis", ops_namespace=f"cw-test-{tag}", ops_queue=f"runs-{tag}"
    )
    try:
        yield cw
    finally:
        cw.close()
        cw.workers.broker.flush_all()
        cw.workers.broker.close()


@pytest.fixture
def stub_cw(tmp_path: Path) -> Iterator[Certwarden]:
    cw = container(tmp_path)
    try:
        yield cw
    finally:
        cw.close()


def wait_finished(cw: Certwarden, org: str, run_id: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cw.sync()
        run = cw.operations.run(org, run_id)
        if run is not None and run["status"] != "requested":
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


def test_roll_all_reaches_every_pinned_device_through_redis_workers_and_mosquitto(
    redis_cw: Certwarden,
) -> None:
    cw = redis_cw
    org = new_org(cw)
    ids = seed(cw, org, 6)
    devices = Subscriber(f"{org}/manage/cert/#")
    try:
        cw.workers.start()
        run_id = cw.registry.execute_operation(org, operation(cw, org, "ROLL_ALL"), ADMIN)
        run = wait_finished(cw, org, run_id)
        received = devices.wait_for(6)
    finally:
        devices.close()
    assert run["status"] == "completed" and run["counts"]["published"] == 6
    by_topic = {topic: json.loads(payload) for topic, payload in received}
    expected = {
        f"{org}/manage/cert/roll/cid/{cw.registry.certificate(org, c).pinned_component}": c
        for c in ids
    }
    assert {t: p["certificate_id"] for t, p in by_topic.items()} == expected
    assert all(p["run_id"] == run_id and p["dn"].startswith("CN=") for p in by_topic.values())


def test_a_run_delivered_twice_at_once_commands_each_device_once(redis_cw: Certwarden) -> None:
    cw = redis_cw
    org = new_org(cw)
    seed(cw, org, 30)
    op_id = operation(cw, org, "ROLL_ALL")
    devices = Subscriber(f"{org}/manage/cert/#")
    try:
        run_id = cw.registry.execute_operation(org, op_id, ADMIN)
        cw.workers.enqueue(org, op_id, run_id)  # at-least-once: a duplicate message
        cw.workers.start()
        wait_finished(cw, org, run_id)
        received = devices.wait_for(31, timeout=2.0)  # wait a little for any duplicate
    finally:
        devices.close()
    assert len(received) == 30
    assert len({topic for topic, _ in received}) == 30


def test_update_truststore_publishes_the_server_ca_pem_to_each_device(stub_cw: Certwarden) -> None:
    cw = stub_cw
    ca_pem = f.make_root(f.unique_cn("server-ca")).pem.decode()
    cw.settings.pki_dir.mkdir(parents=True, exist_ok=True)
    (cw.settings.pki_dir / "server-ca.pem").write_text(ca_pem)
    org = new_org(cw)
    seed(cw, org, 3)
    devices = Subscriber(f"{org}/manage/cert/update_truststore/cid/+")
    try:
        cw.workers.start()
        run_id = cw.registry.execute_operation(org, operation(cw, org, "UPDATE_TRUSTSTORE"), ADMIN)
        wait_finished(cw, org, run_id)
        received = devices.wait_for(3)
    finally:
        devices.close()
    assert len(received) == 3
    assert {payload.decode("utf-8") for _, payload in received} == {ca_pem}


def test_an_unreachable_broker_fails_the_run_and_raises_a_notification(tmp_path: Path) -> None:
    cw = container(tmp_path, ops_mqtt_port=1)  # nothing listens on port 1
    try:
        org = new_org(cw)
        seed(cw, org, 1)
        cw.workers.start()
        run_id = cw.registry.execute_operation(org, operation(cw, org, "ROLL_ALL"), ADMIN)
        run = wait_finished(cw, org, run_id)
        notes, _ = cw.operations.notifications(org)
    finally:
        cw.close()
    assert (run["status"], run["stage"]) == ("failed", "connect")
    assert [n["kind"] for n in notes] == ["broker-unreachable"]
