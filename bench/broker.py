"""Broker benchmark: Mosquitto + certwarden plugin vs the same Mosquitto and TLS without it.

Prints figures and ratios measured in the same run (never asserted):
- QoS 1 publish throughput from 10 authorized TLS clients;
- TLS connects per second;
- revocation latency (deactivate -> client sees the disconnect), p50/p99 over N trials;
- registration latency (import CA + device -> first successful connect), p50/p99.
Usage: .venv/bin/python bench/broker.py [--messages 20000] [--trials 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.broker_runtime import BrokerRuntime  # noqa: E402
from adapters.mosquitto.broker import MosquittoProcess  # noqa: E402
from domain.meta import Actor  # noqa: E402
from tests import factories as f  # noqa: E402
from tests.integration.broker.support import free_port, start_stack  # noqa: E402

ACTOR = Actor.system("bench")


def write_device(directory: Path, issued: f.Issued) -> tuple[Path, Path]:
    name = uuid.uuid4().hex[:8]
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(issued.pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    return cert, key


def client(port: int, ca: Path, cert: Path, key: Path) -> mqtt.Client:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"b-{uuid.uuid4().hex[:10]}", protocol=mqtt.MQTTv5
    )
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    c.tls_set_context(ctx)
    c.on_socket_open = lambda _c, _u, sock: sock.setsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
    )
    c.max_inflight_messages_set(100)
    return c


def connect(c: mqtt.Client, port: int, timeout: float = 10) -> int:
    done = threading.Event()
    result: list[int] = []

    def on_connect(_c, _u, _f, reason, _p):  # type: ignore[no-untyped-def]
        result.append(reason.value)
        done.set()

    c.on_connect = on_connect
    # TLS 1.3 reports a refused client certificate after the handshake: see it as a disconnect
    c.on_disconnect = lambda *_a: done.set()
    c.on_connect_fail = lambda *_a: done.set()
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    done.wait(timeout)
    return result[0] if result else -1


def throughput(
    port: int, ca: Path, devices: list[tuple[Path, Path]], topic_of, per_client: int
) -> float:
    """10 clients publishing QoS 1 concurrently (window of 100 in flight each): messages/s."""
    clients = [client(port, ca, cert, key) for cert, key in devices]
    for c in clients:
        assert connect(c, port) == 0, "bench client refused"
    acked = threading.Semaphore(0)
    for c in clients:
        c.on_publish = lambda *_a: acked.release()
    start = time.perf_counter()

    def run(i: int, c: mqtt.Client) -> None:
        window = threading.Semaphore(100)
        c.on_publish = lambda *_a: (window.release(), acked.release())
        for n in range(per_client):
            window.acquire()
            c.publish(topic_of(i, n), b"21.5", qos=1)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(per_client * len(clients)):
        acked.acquire(timeout=30)
    elapsed = time.perf_counter() - start
    for c in clients:
        c.disconnect()
        c.loop_stop()
    return per_client * len(clients) / elapsed


def connects_per_second(port: int, ca: Path, device: tuple[Path, Path], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        c = client(port, ca, *device)
        assert connect(c, port) == 0
        c.disconnect()
        c.loop_stop()
    return n / (time.perf_counter() - start)


def plain_config(tmp: Path, port: int, runtime: BrokerRuntime) -> Path:
    assert runtime.pki is not None
    conf = tmp / "plain.conf"
    lines = [
        "per_listener_settings false",
        "allow_anonymous true",
        "persistence false",
        "max_queued_messages 100000",
        "set_tcp_nodelay true",
        f"log_dest file {tmp / 'plain.log'}",
        *(["user root"] if os.geteuid() == 0 else []),
        "",
        f"listener {port} 127.0.0.1",
        f"certfile {runtime.pki.cert_path.absolute()}",
        f"keyfile {runtime.pki.key_path.absolute()}",
        f"capath {runtime.capath.absolute()}",
        "require_certificate true",
        "tls_version tlsv1.2",
        "",
    ]
    conf.write_text("\n".join(lines))
    return conf


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--messages", type=int, default=20_000, help="total QoS 1 messages per broker"
    )
    parser.add_argument("--connects", type=int, default=200)
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cw-bench-"))
    cw, runtime = start_stack(tmp, operations=False)
    plain = None
    try:
        assert runtime.pki is not None
        ca = runtime.pki.ca_cert_path
        org = cw.registry.create_organization("bench", ACTOR).uid
        cw.registry.create_policy(
            org,
            "devices",
            "D",
            [{"topics": ["${org.uid}/feed/cid/+/#"], "actions": ["PUBLISH"]}],
            ACTOR,
        )
        root = f.make_root(f.unique_cn("bench-root"))
        cw.registry.import_certificates(org, root.pem, ACTOR)
        leaves = [f.make_leaf(root, f.unique_cn("bench-dev")) for _ in range(10)]
        cw.registry.import_certificates(
            org, b"".join(leaf.pem for leaf in leaves), ACTOR, policy_id="devices"
        )
        cw.sync()
        devices = [write_device(tmp, leaf) for leaf in leaves]
        plain_port = free_port()
        plain = MosquittoProcess(
            plain_config(tmp, plain_port, runtime), port=plain_port, log_path=tmp / "plain.log"
        )
        plain.start()

        def topic(i: int, n: int) -> str:
            return f"{org}/feed/cid/dev-{i}/sid/{n % 50}"

        per = args.messages // 10
        print(f"QoS 1 throughput, 10 TLS clients, {per * 10} messages each run:")
        base = throughput(plain_port, ca, devices, topic, per)
        with_plugin = throughput(runtime.settings.mqtt_port, ca, devices, topic, per)
        print(f"  plain Mosquitto (same TLS config, no plugin): {base:,.0f} msg/s")
        print(f"  Mosquitto + certwarden plugin:                {with_plugin:,.0f} msg/s")
        print(f"  ratio {with_plugin / base:.2f}x (target >= 0.8x)")

        base_c = connects_per_second(plain_port, ca, devices[0], args.connects)
        plug_c = connects_per_second(runtime.settings.mqtt_port, ca, devices[0], args.connects)
        print(
            f"TLS connects/s: plain {base_c:,.0f}, with plugin {plug_c:,.0f}, ratio {plug_c / base_c:.2f}x (target >= 0.7x)"
        )

        revocations = []
        for _ in range(args.trials):
            leaf = f.make_leaf(root, f.unique_cn("rev"))
            cid = cw.registry.import_certificates(org, leaf.pem, ACTOR, policy_id="devices")[
                0
            ].certificate_id
            cw.sync()
            c = client(runtime.settings.mqtt_port, ca, *write_device(tmp, leaf))
            gone = threading.Event()
            assert connect(c, runtime.settings.mqtt_port) == 0
            c.on_disconnect = lambda *_a, gone=gone: gone.set()
            start = time.perf_counter()
            cw.registry.update_certificate(org, cid, {"status": "INACTIVE"}, ACTOR)
            gone.wait(5)
            revocations.append(time.perf_counter() - start)
            c.loop_stop()
        print(
            f"revocation latency (deactivate -> disconnect seen), {args.trials} trials: "
            f"p50 {statistics.median(revocations) * 1000:.0f} ms, p99 {pct(revocations, 0.99) * 1000:.0f} ms "
            "(target p99 < 1 s)"
        )

        registrations = []
        for _ in range(min(args.trials, 50)):
            new_root = f.make_root(f.unique_cn("reg-root"))
            leaf = f.make_leaf(new_root, f.unique_cn("reg"))
            device = write_device(tmp, leaf)
            start = time.perf_counter()
            cw.registry.import_certificates(
                org, leaf.pem + new_root.pem, ACTOR, policy_id="devices"
            )
            while True:
                c = client(runtime.settings.mqtt_port, ca, *device)
                try:
                    code = connect(c, runtime.settings.mqtt_port, timeout=2)
                except OSError:
                    code = -1
                if code == 0 or time.perf_counter() - start > 10:
                    c.disconnect()
                    c.loop_stop()
                    break
                # paho's network thread sleeps up to 1 s: clean up off the measured path
                threading.Thread(target=c.loop_stop, daemon=True).start()
                time.sleep(0.01)
            registrations.append(time.perf_counter() - start)
        print(
            f"registration latency (import CA + device -> first successful connect): "
            f"p50 {statistics.median(registrations) * 1000:.0f} ms, p99 {pct(registrations, 0.99) * 1000:.0f} ms "
            "(GroveStreams devices wait 91 s)"
        )
    finally:
        if plain is not None:
            plain.stop()
        runtime.stop()
        cw.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
