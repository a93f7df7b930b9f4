"""ROLL_ALL over N pinned certificates: end-to-end publishes/s against a raw paho client in the
same run (same broker, QoS 1, same window and protocol), and the worker's peak memory at two
sizes (traced Python memory of the run in this process, and the peak RSS of the publisher
child process the run's paho client lives in). Prints figures, never asserts.

    .venv/bin/python bench/operations.py [--n 100000] [--host 127.0.0.1 --port 1883]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import socket
import sys
import threading
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.settings import Settings  # noqa: E402
from application.bootstrap import Certwarden, bootstrap  # noqa: E402
from domain.meta import Actor  # noqa: E402

ACTOR = Actor.system("bench")


def mint(n: int, tag: str) -> list[bytes]:
    """n device certificates with unique DNs: one shared device key, one issuer key."""
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    device_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-ca-{tag}")])
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dev-{tag}-{i}")]))
            .issuer_name(issuer)
            .public_key(device_key)
            .serial_number(i + 1)
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256())
        )
        out.append(cert.public_bytes(Encoding.PEM))
    return out


def seed(cw: Certwarden, org: str, n: int, small: int) -> None:
    """Import in bundles of 100 (the first `small` under /all/small, the rest /all/rest),
    then pin each certificate to its own component, 100 aggregates per save."""
    t0 = time.perf_counter()
    pems = mint(n, uuid.uuid4().hex[:8])
    t1 = time.perf_counter()
    ids: list[str] = []
    for start in range(0, n, 100):
        folder = "/all/small" if start < small else "/all/rest"
        bundle = b"".join(pems[start : start + 100])
        done = cw.registry.import_certificates(org, bundle, ACTOR, folder=folder)
        ids.extend(d.certificate_id for d in done)
    t2 = time.perf_counter()
    meta = ACTOR.meta()
    for start in range(0, n, 100):
        batch = [cw.registry.certificate(org, c) for c in ids[start : start + 100]]
        for offset, cert in enumerate(batch):
            cert.pin_component(f"comp-{start + offset}", meta)
        cw.registry.commit(*batch)
    t3 = time.perf_counter()
    while cw.runner.position < cw.registry.max_position():  # sync() gives up after 5 s
        cw.sync()
    t4 = time.perf_counter()
    print(
        f"seed {n}: mint {t1 - t0:.1f}s, import {t2 - t1:.1f}s, pin {t3 - t2:.1f}s, "
        f"projections {t4 - t3:.1f}s"
    )


def raw_paho(n: int, host: str, port: int, org: str, window: int, protocol: int) -> float:
    """Baseline: one paho client, QoS 1, `window` in flight, TCP_NODELAY; messages/s."""
    slots = threading.Semaphore(window)
    connected = threading.Event()
    effective = [window]
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        protocol=protocol,
    )
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)

    def on_socket_open(c: mqtt.Client, u: object, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_connect(c: mqtt.Client, u: object, flags: object, rc: object, props: object) -> None:
        receive_max = min(window, int(getattr(props, "ReceiveMaximum", None) or window))
        for _ in range(window - receive_max):
            slots.acquire()
        effective[0] = receive_max
        connected.set()

    client.on_socket_open = on_socket_open
    client.on_connect = on_connect
    client.on_publish = lambda *_: slots.release()
    client.connect(host, port, 30)
    client.loop_start()
    connected.wait(10)
    payload = json.dumps(
        {
            "certificate_id": str(uuid.uuid4()),
            "dn": "CN=dev-bench-000000",
            "not_after": "x" * 25,
            "reason": "roll-all",
            "run_id": str(uuid.uuid4()),
        }
    ).encode()
    start = time.perf_counter()
    for i in range(n):
        slots.acquire()
        client.publish(f"{org}/manage/cert/roll/cid/comp-{i}", payload, qos=1)
    for _ in range(effective[0]):  # every slot back: the last acknowledgements arrived
        slots.acquire()
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return n / elapsed


class FullCollections:
    """Counts the cyclic GC's full (generation 2) collections and their time: with the
    in-memory store the whole log lives in this process, and one full collection of its
    millions of objects takes seconds, wherever it happens to fall."""

    def __init__(self) -> None:
        self.count, self.seconds, self._start = 0, 0.0, 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._start


def roll_all(cw: Certwarden, org: str, folder: str, n: int) -> float:
    """End to end: execute -> queue -> in-process dramatiq worker -> broker acks -> RunCompleted."""
    op = cw.registry.create_operation(
        org, {"name": f"roll {folder}", "op_type": "ROLL_ALL", "folder": folder}, ACTOR
    )
    start = time.perf_counter()
    run_id = cw.registry.execute_operation(org, str(op.id), ACTOR)
    while not any(r == run_id for r, _ in cw.workers.results):
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    outcome = dict(cw.workers.results)[run_id]
    counts = cw.outcomes.checkpoint(run_id)
    published = counts.counts.get("published", 0) if counts else 0
    if outcome != "completed" or published != n:
        print(f"  run {run_id}: {outcome}, published {published} of {n}")
    return n / elapsed


def worker_peak(cw: Certwarden, org: str, folder: str) -> tuple[int, int, int]:
    """Peak traced Python memory while one run executes in this thread (bytes), the peak RSS
    of its publisher child process (KiB; paho runs there), and the count published."""
    made: list[Any] = []
    new_publisher = cw.executor.new_publisher

    def recording() -> Any:
        made.append(new_publisher())
        return made[-1]

    cw.executor.new_publisher = recording
    op = cw.registry.create_operation(
        org, {"name": f"mem {folder}", "op_type": "ROLL_ALL", "folder": folder}, ACTOR
    )
    run_id = cw.registry.execute_operation(org, str(op.id), ACTOR)
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    cw.executor.execute(org, str(op.id), run_id)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    cw.executor.new_publisher = new_publisher
    child = max((getattr(p, "child_peak_rss_kib", 0) for p in made), default=0)
    checkpoint = cw.outcomes.checkpoint(run_id)
    return peak, child, checkpoint.counts.get("published", 0) if checkpoint else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--store", default="memory", choices=["memory", "sqlite"])
    args = parser.parse_args()
    n, small = args.n, max(100, args.n // 10 // 100 * 100)
    with TemporaryDirectory() as tmp:
        settings = Settings(
            store=args.store,
            data_dir=Path(tmp),
            broker_enabled=False,
            ops_mqtt_host=args.host,
            ops_mqtt_port=args.port,
            ops_mqtt_tls=False,
            ops_worker_threads=1,
            scheduler_in_process=False,
        )
        cw = bootstrap(settings)
        cw.start()
        try:
            org = cw.registry.create_organization("bench", ACTOR).uid
            cw.registry.create_folder(org, "/all", ACTOR)
            seed(cw, org, n, small)
            gc.collect()  # the seed's garbage is not billed to whichever run comes first
            full = FullCollections()
            cw.workers.start()
            window, protocol = settings.ops_mqtt_window, mqtt.MQTTv5
            raws, runs = [], []
            for _ in range(2):  # alternate, so a noisy neighbour hits both alike
                raws.append(raw_paho(n, args.host, args.port, org, window, protocol))
                runs.append(roll_all(cw, org, "/all", n))
            raws.append(raw_paho(n, args.host, args.port, org, window, protocol))
            raw311 = raw_paho(n, args.host, args.port, org, window, mqtt.MQTTv311)
            cw.workers.stop()
            raw, ops = sum(raws) / len(raws), sum(runs) / len(runs)
            print(
                f"raw paho MQTT 5 QoS 1 (window {window}, capped by the broker's Receive "
                f"Maximum), {n:,} messages: " + ", ".join(f"{r:,.0f}" for r in raws) + " msg/s"
            )
            print(f"raw paho MQTT 3.1.1 QoS 1 window {window} (reference): {raw311:,.0f} msg/s")
            print(
                f"ROLL_ALL end to end over {n:,} pinned certificates: "
                + ", ".join(f"{r:,.0f}" for r in runs)
                + " publishes/s"
            )
            print(f"ratio ROLL_ALL / raw paho (means): {ops / raw:.2f}x (target >= 0.8x)")
            print(f"full GC collections during the timed runs: {full.count} ({full.seconds:.1f}s)")
            small_peak, small_child, small_n = worker_peak(cw, org, "/all/small")
            big_peak, big_child, big_n = worker_peak(cw, org, "/all")
            print(
                f"worker peak traced memory: {small_n:,} certs {small_peak / 2**20:.1f} MiB, "
                f"{big_n:,} certs {big_peak / 2**20:.1f} MiB "
                f"(x{big_n / max(small_n, 1):.0f} certificates, x{big_peak / max(small_peak, 1):.2f} memory)"
            )
            print(
                f"publisher child process peak RSS: {small_n:,} certs {small_child / 1024:.1f} MiB, "
                f"{big_n:,} certs {big_child / 1024:.1f} MiB"
            )
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(f"process max RSS (store + read models + worker): {rss / 1024:.0f} MiB")
        finally:
            cw.close()


if __name__ == "__main__":
    main()
