"""The whole enforcement stack as `certwarden serve` runs it: store, projections, authz socket,
Mosquitto with the certwarden plugin on a free port."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.broker_runtime import BrokerRuntime
from application.bootstrap import Certwarden
from domain.meta import Actor, ActorKind
from tests import factories as f
from tests.integration.broker.support import Device, start_stack

ROOT = Path(__file__).resolve().parents[2]
ADMIN = Actor(ActorKind.API_KEY, "e2e-key", "e2e-user", "e2e", "127.0.0.1")


@dataclass
class Stack:
    cw: Certwarden
    runtime: BrokerRuntime
    port: int
    ca_file: Path
    tmp: Path

    def org(self, policy: list[dict[str, list[str]]] | None = None) -> str:
        org = self.cw.registry.create_organization(f"e2e-{uuid.uuid4().hex[:6]}", ADMIN).uid
        sets = policy or [{"topics": ["${org.uid}/feed/#"], "actions": ["PUBLISH", "SUBSCRIBE"]}]
        self.cw.registry.create_policy(org, "devices", "Devices", sets, ADMIN)
        return org

    def device(self, org: str, **kw: object) -> tuple[str, Device, list[str]]:
        """A registered root -> intermediate -> leaf chain; returns (leaf id, device, chain ids)."""
        root, inter, leaf = f.make_chain()
        done = self.cw.registry.import_certificates(
            org, leaf.pem + inter.pem + root.pem, ADMIN, policy_id="devices", **kw
        )
        self.cw.sync()
        device = Device.store(self.tmp / "devices", leaf)
        return done[0].certificate_id, device, [d.certificate_id for d in done]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    tmp = Path(tempfile.mkdtemp(prefix="cw-e2e-"))  # short: unix socket paths are limited
    cw, runtime = start_stack(tmp)  # with the in-process worker publishing through it
    try:
        assert runtime.pki is not None
        yield Stack(cw, runtime, runtime.settings.mqtt_port, runtime.pki.ca_cert_path, tmp)
    finally:
        runtime.stop()
        cw.close()
        shutil.rmtree(tmp, ignore_errors=True)
