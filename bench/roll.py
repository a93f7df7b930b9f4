"""Fleet roll benchmark: N reference device agents (threads) rolled by one ROLL_ALL operation.

Prints the time from operation start to the last old certificate retired, per-device p50/p99,
and beside it the time the same agents need for a plain reconnect, in the same run.
Usage: .venv/bin/python bench/roll.py [--agents 200]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.broker_runtime import BrokerRuntime  # noqa: E402
from adapters.device_agent import DeviceAgent, DeviceConfig  # noqa: E402
from adapters.settings import Settings  # noqa: E402
from application.bootstrap import bootstrap  # noqa: E402
from bench.broker import free_port, pct  # noqa: E402
from domain.meta import Actor  # noqa: E402
from tests import factories as f  # noqa: E402

ACTOR = Actor.system("bench")
POLICY = [
    {
        "topics": ["${org.uid}/manage/cert/+/cid/${component.id}"],
        "actions": ["PUBLISH", "SUBSCRIBE"],
    },
    {"topics": ["${org.uid}/cid/${component.id}/reply"], "actions": ["SUBSCRIBE"]},
]


def raise_fd_limit() -> None:
    """Each agent holds up to two TLS sessions plus paho's wake-up socket pairs: 200 agents
    need more than the default 1024 descriptors (Mosquitto, a child, inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def main() -> None:
    raise_fd_limit()
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cw-roll-"))
    settings = Settings(
        store="sqlite",
        data_dir=tmp / "var",
        mqtt_port=free_port(),
        plugin_path=ROOT / "var" / "build" / "certwarden_plugin.so",
        projection_poll_seconds=0.05,
    )
    cw = bootstrap(settings)
    cw.start()
    runtime = BrokerRuntime(cw, settings)
    runtime.start()
    cw.start_operations()
    agents: list[DeviceAgent] = []
    try:
        assert runtime.pki is not None
        org = cw.registry.create_organization("roll-bench", ACTOR).uid
        cw.registry.create_policy(org, "devices", "Devices", POLICY, ACTOR)
        cw.registry.create_folder(org, "/fleet", ACTOR)
        tag = uuid.uuid4().hex[:6]
        print(f"enrolling {args.agents} agents ...", flush=True)
        for i in range(args.agents):
            component = f"dev-{tag}-{i}"
            ca = f.make_root(f"{component} device CA v1")
            leaf = f.make_leaf(ca, f"{component} v1")
            done = cw.registry.import_certificates(
                org, leaf.pem + ca.pem, ACTOR, policy_id="devices", folder="/fleet"
            )
            cw.registry.update_certificate(
                org, done[0].certificate_id, {"pinned_component": component}, ACTOR
            )
            state = tmp / "agents" / component
            state.mkdir(parents=True)
            (state / "device.pem").write_bytes(leaf.pem + ca.pem)
            (state / "device.key").write_bytes(leaf.key_pem)
            (state / "device.key").chmod(0o600)
            shutil.copy(runtime.pki.ca_cert_path, state / "truststore.pem")
            agents.append(
                DeviceAgent(
                    DeviceConfig(
                        "127.0.0.1", settings.mqtt_port, component, state, org, reply_timeout=60
                    )
                )
            )
        cw.sync()
        for agent in agents:
            agent.start()

        reconnects = []
        start_all = time.perf_counter()
        for agent in agents:
            assert agent.main is not None
            t0 = time.perf_counter()
            agent.main.close()
            agent.start()
            reconnects.append(time.perf_counter() - t0)
        reconnect_total = time.perf_counter() - start_all

        op = cw.registry.create_operation(
            org, {"name": "roll", "op_type": "ROLL_ALL", "folder": "/fleet"}, ACTOR
        )
        start = time.perf_counter()
        run_id = cw.registry.execute_operation(org, str(op.id), ACTOR)
        finished: dict[str, float] = {}
        deadline = start + 600
        while len(finished) < len(agents) and time.perf_counter() < deadline:
            for agent in agents:
                if agent.rolls and agent.cfg.component_id not in finished:
                    finished[agent.cfg.component_id] = time.perf_counter() - start
            time.sleep(0.02)
        while time.perf_counter() < deadline:
            rolls = cw.rolls.rolls(org, run_id=run_id, limit=100_000)
            if len(rolls) == len(agents) and all(r["state"] == "retired" for r in rolls):
                break
            time.sleep(0.05)
        total = time.perf_counter() - start
        stragglers = [a for a in agents if not a.rolls]
        for agent in stragglers[:5]:
            print(f"  not rolled: {agent.cfg.component_id}: {agent.events}")
        per_device = sorted(finished.values())
        retired = sum(
            1 for r in cw.rolls.rolls(org, run_id=run_id, limit=100_000) if r["state"] == "retired"
        )
        print(
            f"roll of {len(agents)} agents: {retired} old certificates retired, "
            f"{len(finished)} agents switched, last retired after {total:.2f} s"
        )
        if per_device:
            print(
                f"  per device (operation start -> agent switched): p50 {pct(per_device, 0.5):.2f} s, "
                f"p99 {pct(per_device, 0.99):.2f} s"
            )
        print(
            f"  baseline plain reconnect of the same agents: total {reconnect_total:.2f} s, "
            f"p50 {pct(reconnects, 0.5) * 1000:.0f} ms, p99 {pct(reconnects, 0.99) * 1000:.0f} ms per agent"
        )
    finally:
        for agent in agents:
            agent.stop()
        runtime.stop()
        cw.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
