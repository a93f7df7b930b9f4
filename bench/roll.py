"""Fleet roll benchmark: N reference device agents rolled by one ROLL_ALL operation.

The agents live in --hosts worker processes (threads inside each), apart from certwarden and
its authz server, as devices would be. Prints the time from operation start to the last old
certificate retired and the per-device p50/p99 (roll requested -> old certificate retired,
from the roll tracking read model), and beside it the time the same agents need for a plain
reconnect (one at a time, and all at once), in the same run.
Usage: .venv/bin/python bench/roll.py [--agents 200] [--hosts 4]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.device_agent import DeviceAgent, DeviceConfig  # noqa: E402
from bench.broker import pct  # noqa: E402
from domain.meta import Actor  # noqa: E402
from tests import factories as f  # noqa: E402
from tests.integration.broker.support import start_stack  # noqa: E402

ACTOR = Actor.system("bench")
POLICY = [
    {
        "topics": ["${org.uid}/manage/cert/+/cid/${component.id}"],
        "actions": ["PUBLISH", "SUBSCRIBE"],
    },
    {"topics": ["${org.uid}/cid/${component.id}/reply"], "actions": ["SUBSCRIBE"]},
]


def raise_fd_limit() -> None:
    """Mosquitto (a child, it inherits the limit) holds two sockets per rolling agent plus
    certwarden's; a default soft limit of 1024 is too low for 200 agents. The agent's own
    I/O loop uses epoll, so descriptors numbered above 1024 are fine on the client side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


# ---- worker process: hosts a group of agents, answers the parent's commands ----------------


def _reconnect(agent: DeviceAgent) -> float:
    assert agent.main is not None
    t0 = time.perf_counter()
    agent.main.close()
    agent.start()
    return time.perf_counter() - t0


def _all_at_once(agents: list[DeviceAgent]) -> list[float]:
    times: list[float] = []
    threads = [threading.Thread(target=lambda a=a: times.append(_reconnect(a))) for a in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def host(pipe: Connection, configs: list[DeviceConfig]) -> None:
    """Commands: start, reconnect-serial, reconnect-together, watch <deadline>, stop."""
    raise_fd_limit()
    agents = [DeviceAgent(cfg) for cfg in configs]
    try:
        while True:
            command, arg = pipe.recv()
            if command == "start":
                for agent in agents:
                    agent.start()
                pipe.send(len(agents))
            elif command == "reconnect-serial":
                pipe.send([_reconnect(a) for a in agents])
            elif command == "reconnect-together":
                pipe.send(_all_at_once(agents))
            elif command == "watch":  # until every agent switched or the deadline (monotonic)
                while time.monotonic() < arg and not all(a.rolls for a in agents):
                    time.sleep(0.05)
                pipe.send({a.cfg.component_id: a.events for a in agents if not a.rolls})
            elif command == "stop":
                break
    finally:
        for agent in agents:
            agent.stop()
        pipe.send("stopped")


def ask_all(pipes: list[Connection], command: str, arg: Any = None) -> list[Any]:
    for pipe in pipes:
        pipe.send((command, arg))
    return [pipe.recv() for pipe in pipes]


# ---- parent: certwarden, broker, enrolment, the operation ------------------------------------


def enrol(cw: Any, org: str, component: str, state: Path, ca_file: Path) -> None:
    ca = f.make_root(f"{component} device CA v1")
    leaf = f.make_leaf(ca, f"{component} v1")
    done = cw.registry.import_certificates(
        org, leaf.pem + ca.pem, ACTOR, policy_id="devices", folder="/fleet"
    )
    cw.registry.update_certificate(
        org, done[0].certificate_id, {"pinned_component": component}, ACTOR
    )
    state.mkdir(parents=True)
    (state / "device.pem").write_bytes(leaf.pem + ca.pem)
    (state / "device.key").write_bytes(leaf.key_pem)
    (state / "device.key").chmod(0o600)
    shutil.copy(ca_file, state / "truststore.pem")


def main() -> None:
    raise_fd_limit()
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--hosts", type=int, default=4, help="worker processes hosting agents")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed for the roll")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cw-roll-"))
    cw, runtime = start_stack(tmp)
    spawn = mp.get_context("spawn")  # never fork a process running certwarden's threads
    pipes: list[Connection] = []
    workers: list[Any] = []
    failed = False
    try:
        assert runtime.pki is not None
        org = cw.registry.create_organization("roll-bench", ACTOR).uid
        cw.registry.create_policy(org, "devices", "Devices", POLICY, ACTOR)
        cw.registry.create_folder(org, "/fleet", ACTOR)
        tag = uuid.uuid4().hex[:6]
        hosts = max(1, min(args.hosts, args.agents))
        print(f"enrolling {args.agents} agents in {hosts} host processes ...", flush=True)
        groups: list[list[DeviceConfig]] = [[] for _ in range(hosts)]
        for i in range(args.agents):
            component = f"dev-{tag}-{i}"
            state = tmp / "agents" / component
            enrol(cw, org, component, state, runtime.pki.ca_cert_path)
            groups[i % hosts].append(
                DeviceConfig(
                    "127.0.0.1", runtime.settings.mqtt_port, component, state, org, reply_timeout=60
                )
            )
        cw.sync()
        for group in groups:
            ours, theirs = spawn.Pipe()
            worker = spawn.Process(target=host, args=(theirs, group), daemon=True)
            worker.start()
            pipes.append(ours)
            workers.append(worker)
        ask_all(pipes, "start")

        t0 = time.perf_counter()
        serial = [t for pipe in pipes for t in ask_all([pipe], "reconnect-serial")[0]]
        serial_total = time.perf_counter() - t0
        t0 = time.perf_counter()
        together = [t for times in ask_all(pipes, "reconnect-together") for t in times]
        together_total = time.perf_counter() - t0

        op = cw.registry.create_operation(
            org, {"name": "roll", "op_type": "ROLL_ALL", "folder": "/fleet"}, ACTOR
        )
        start, start_wall = time.perf_counter(), time.time()
        run_id = cw.registry.execute_operation(org, str(op.id), ACTOR)
        deadline = time.monotonic() + args.timeout
        stragglers: dict[str, list[str]] = {}
        for missing in ask_all(pipes, "watch", deadline):
            stragglers.update(missing)
        rolls: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rolls = cw.rolls.rolls(org, run_id=run_id, limit=100_000)
            if len(rolls) == args.agents and all(r["state"] == "retired" for r in rolls):
                break
            time.sleep(0.05)
        total = time.perf_counter() - start
        for name, events in list(stragglers.items())[:5]:
            print(f"  not rolled: {name}: {events}")
        retired = [r for r in rolls if r["state"] == "retired"]
        per_device = sorted(
            datetime.fromisoformat(r["retired_at"]).timestamp() - r["requested_at"] for r in retired
        )
        last = max(
            (datetime.fromisoformat(r["retired_at"]).timestamp() for r in retired),
            default=start_wall,
        )
        print(
            f"roll of {args.agents} agents: {len(retired)} old certificates retired, "
            f"{args.agents - len(stragglers)} agents switched; last old certificate retired "
            f"{last - start_wall:.2f} s after operation start (observed after {total:.2f} s)"
        )
        if per_device:
            print(
                f"  per device (roll requested -> old certificate retired): "
                f"p50 {pct(per_device, 0.5):.2f} s, p99 {pct(per_device, 0.99):.2f} s"
            )
        print(
            f"  baseline plain reconnect of the same agents, one at a time: "
            f"total {serial_total:.2f} s, per agent p50 {pct(serial, 0.5) * 1000:.0f} ms, "
            f"p99 {pct(serial, 0.99) * 1000:.0f} ms"
        )
        print(
            f"  baseline plain reconnect of the same agents, all at once: "
            f"total {together_total:.2f} s, per agent p50 {pct(together, 0.5) * 1000:.0f} ms, "
            f"p99 {pct(together, 0.99) * 1000:.0f} ms"
        )
        if len(retired) < args.agents:
            failed = True
            print(f"  incomplete: kept {tmp} (broker log in var/mosquitto/mosquitto.log)")
    finally:
        for pipe in pipes:
            try:
                pipe.send(("stop", None))
                if pipe.poll(30):
                    pipe.recv()
            except (OSError, EOFError):
                pass
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
        runtime.stop()
        cw.close()
        if not failed:
            shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
