"""A fleet of reference device agents rolled end to end by a ROLL_ALL operation."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path

from adapters.device_agent import DeviceAgent, DeviceConfig
from tests import factories as f
from tests.e2e.conftest import ADMIN, Stack
from tests.integration.broker.support import FD_SETSIZE, descriptors_taken_below, wait_until

FLEET = 20
POLICY = [
    {
        "topics": ["${org.uid}/manage/cert/+/cid/${component.id}"],
        "actions": ["PUBLISH", "SUBSCRIBE"],
    },
    {"topics": ["${org.uid}/cid/${component.id}/reply"], "actions": ["SUBSCRIBE"]},
    {"topics": ["${org.uid}/feed/cid/${component.id}/#"], "actions": ["PUBLISH"]},
]


def enrol(stack: Stack, org: str, component: str) -> tuple[str, DeviceAgent]:
    """A device with its own per-device CA, registered and pinned to its component."""
    ca = f.make_root(f"{component} device CA v1")
    leaf = f.make_leaf(ca, f"{component} v1")
    done = stack.cw.registry.import_certificates(
        org, leaf.pem + ca.pem, ADMIN, policy_id="devices", folder="/fleet"
    )
    stack.cw.registry.update_certificate(
        org, done[0].certificate_id, {"pinned_component": component}, ADMIN
    )
    state = stack.tmp / "agents" / component
    state.mkdir(parents=True)
    (state / "device.pem").write_bytes(leaf.pem + ca.pem)
    (state / "device.key").write_bytes(leaf.key_pem)
    (state / "device.key").chmod(0o600)
    shutil.copy(stack.ca_file, state / "truststore.pem")
    return done[0].certificate_id, DeviceAgent(
        DeviceConfig("127.0.0.1", stack.port, component, state, org)
    )


def test_a_roll_all_operation_rolls_every_agent_and_retires_every_old_certificate(
    stack: Stack,
) -> None:
    org = stack.org(POLICY)
    stack.cw.registry.create_folder(org, "/fleet", ADMIN)
    tag = uuid.uuid4().hex[:6]
    enrolled = [enrol(stack, org, f"dev-{tag}-{i}") for i in range(FLEET)]
    stack.cw.sync()
    for _, agent in enrolled:
        agent.start()
    old_ids = [cid for cid, _ in enrolled]
    gaps: dict[str, float] = {}
    watching = threading.Event()

    def watch() -> None:  # longest time any agent had no connected main session
        down_since: dict[str, float] = {}
        while not watching.is_set():
            now = time.monotonic()
            for _, agent in enrolled:
                name = agent.cfg.component_id
                up = agent.main is not None and agent.main.connected.is_set()
                if up:
                    if name in down_since:
                        gaps[name] = max(gaps.get(name, 0.0), now - down_since.pop(name))
                else:
                    down_since.setdefault(name, now)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    op = stack.cw.registry.create_operation(
        org, {"name": "roll fleet", "op_type": "ROLL_ALL", "folder": "/fleet"}, ADMIN
    )
    run_id = stack.cw.registry.execute_operation(org, str(op.id), ADMIN)
    try:
        assert wait_until(lambda: all(a.rolls == 1 for _, a in enrolled), timeout=60), [
            a.events for _, a in enrolled if a.rolls != 1
        ]
        stack.cw.sync()
        assert wait_until(
            lambda: (
                all(r["state"] == "retired" for r in stack.cw.rolls.rolls(org, run_id=run_id))
                and len(stack.cw.rolls.rolls(org, run_id=run_id)) == FLEET
            ),
            timeout=20,
        )
    finally:
        watching.set()
        watcher.join()
    for old_id, agent in enrolled:
        assert agent.main is not None and agent.main.connected.is_set()
        current = f.x509.load_pem_x509_certificate((agent.cfg.cert_path).read_bytes())
        assert current.subject.rfc4514_string().startswith(f"CN={agent.cfg.component_id} v2")
        assert oct(Path(agent.cfg.key_path).stat().st_mode & 0o777) == "0o600"
        history, _ = stack.cw.audit.query(org, entity_id=old_id, newest_first=False)
        events = [h["event_type"] for h in history]
        assert events.index("Rolled") < events.index("Deleted"), events
    assert max(gaps.values(), default=0.0) < 3.0, gaps
    for _, agent in enrolled:
        agent.stop()
    assert old_ids


def socket_number(agent: DeviceAgent) -> int:
    assert agent.main is not None
    sock = agent.main.client.socket()
    assert sock is not None
    return sock.fileno()


def test_an_agent_whose_sockets_are_numbered_above_fd_setsize_connects_and_rolls(
    stack: Stack,
) -> None:
    """A process with many files open (e.g. one hosting 200 agents) gets socket numbers
    select() cannot watch; the agent must still see its CONNACKs and roll."""
    org = stack.org(POLICY)
    stack.cw.registry.create_folder(org, "/fleet", ADMIN)
    old_id, agent = enrol(stack, org, f"dev-{uuid.uuid4().hex[:6]}-high-fd")
    stack.cw.sync()
    with descriptors_taken_below(FD_SETSIZE):
        agent.start()
        try:
            assert socket_number(agent) >= FD_SETSIZE
            op = stack.cw.registry.create_operation(
                org, {"name": "roll one", "op_type": "ROLL_ALL", "folder": "/fleet"}, ADMIN
            )
            stack.cw.registry.execute_operation(org, str(op.id), ADMIN)
            assert wait_until(lambda: agent.rolls == 1, timeout=60), agent.events
            assert socket_number(agent) >= FD_SETSIZE
            assert agent.main is not None and agent.main.connected.is_set()
        finally:
            agent.stop()
    stack.cw.sync()
    history, _ = stack.cw.audit.query(org, entity_id=old_id, newest_first=False)
    assert "Rolled" in [h["event_type"] for h in history]


def test_an_agent_whose_session_is_dropped_reconnects_and_still_rolls(stack: Stack) -> None:
    org = stack.org(POLICY)
    stack.cw.registry.create_folder(org, "/fleet", ADMIN)
    cid, agent = enrol(stack, org, f"dev-{uuid.uuid4().hex[:6]}-dropped")
    stack.cw.sync()
    agent.start()
    try:
        first = agent.main
        assert first is not None
        stack.cw.registry.update_certificate(org, cid, {"status": "INACTIVE"}, ADMIN)
        assert wait_until(lambda: not first.connected.is_set(), timeout=10)
        stack.cw.registry.update_certificate(org, cid, {"status": "ACTIVE"}, ADMIN)
        # back with its subscriptions: the roll command below must reach it
        assert wait_until(
            lambda: agent.main is not None and agent.main.connected.is_set(), timeout=30
        ), agent.events
        op = stack.cw.registry.create_operation(
            org, {"name": "roll after drop", "op_type": "ROLL_ALL", "folder": "/fleet"}, ADMIN
        )
        stack.cw.registry.execute_operation(org, str(op.id), ADMIN)
        assert wait_until(lambda: agent.rolls == 1, timeout=60), agent.events
    finally:
        agent.stop()
