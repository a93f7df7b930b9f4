"""Fixtures: a real Mosquitto with the certwarden plugin, its authz socket server, a TLS PKI."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.mosquitto.authz_server import AuthzSocketServer
from adapters.mosquitto.broker import (
    MosquittoConfig,
    MosquittoProcess,
    ServerPki,
    ensure_server_pki,
    write_capath,
)
from application.ports import Authorizer
from tests.factories import Issued, make_root, unique_cn

from .support import Device, FakeAuthorizer, Grant, MqttClient, free_port

REPO = Path(__file__).resolve().parents[3]
PLUGIN = REPO / "var" / "build" / "certwarden_plugin.so"


@pytest.fixture(scope="session")
def plugin_path() -> Path:
    """Build the plugin through the Makefile rule CI uses (a no-op when up to date)."""
    subprocess.run(["make", "-s", "-C", str(REPO), "var/build/certwarden_plugin.so"], check=True)
    assert PLUGIN.stat().st_size > 0, "the plugin did not build"
    return PLUGIN


@pytest.fixture(scope="session")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPki:
    return ensure_server_pki(tmp_path_factory.mktemp("server-pki"))


@pytest.fixture(scope="session")
def device_ca() -> Issued:
    return make_root(unique_cn("root"))


@dataclass
class Stack:
    """Authz socket server + Mosquitto on a free port, sharing one short-path work dir."""

    work: Path
    pki: ServerPki
    device_ca: Issued
    authorizer: Authorizer
    server: AuthzSocketServer
    config: MosquittoConfig
    mosquitto: MosquittoProcess
    clients: list[MqttClient] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def fake(self) -> FakeAuthorizer:
        assert isinstance(self.authorizer, FakeAuthorizer)
        return self.authorizer

    def device(self, grant: Grant | None = None, issuer: Issued | None = None) -> Device:
        """A fresh device certificate; known to the fake when `grant` is given."""
        device = Device.create(self.work / "devices", issuer or self.device_ca)
        if grant is not None:
            self.fake.grant(device.fingerprint, grant)
        return device

    def client(self, device: Device, **kwargs: object) -> MqttClient:
        client = MqttClient(self.port, self.pki.ca_cert_path, device, **kwargs)  # type: ignore[arg-type]
        self.clients.append(client)
        return client

    def connected(self, device: Device, **kwargs: object) -> MqttClient:
        client = self.client(device, **kwargs)
        assert client.connect() == 0
        return client

    def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):  # teardown must reach the broker
                client.close()
        self.mosquitto.stop()
        self.server.stop()
        shutil.rmtree(self.work, ignore_errors=True)


StackFactory = Callable[..., Stack]


def start_stack(
    plugin: Path,
    pki: ServerPki,
    device_ca: Issued,
    authorizer: Authorizer | None = None,
    *,
    serve: bool = True,
    **options: object,
) -> Stack:
    # AF_UNIX paths are limited to 107 bytes: keep the work dir short, not under tmp_path.
    work = Path(tempfile.mkdtemp(prefix="cw-", dir="/tmp"))
    capath = work / "capath"
    write_capath(capath, [pki.ca_pem, device_ca.pem.decode()])
    authorizer = authorizer if authorizer is not None else FakeAuthorizer()
    server = AuthzSocketServer(authorizer, work / "authz.sock")
    config = MosquittoConfig(
        socket_path=server.socket_path,
        capath=capath,
        certfile=pki.cert_path,
        keyfile=pki.key_path,
        log_path=work / "mosquitto.log",
        plugin_path=plugin,
        port=free_port(),
        **options,  # type: ignore[arg-type]
    )
    mosquitto = MosquittoProcess.from_config(config, work / "mosquitto.conf")
    if serve:
        server.start()
    try:
        mosquitto.start()
    except Exception:
        server.stop()
        raise
    return Stack(work, pki, device_ca, authorizer, server, config, mosquitto)


@pytest.fixture(scope="module")
def stack(plugin_path: Path, server_pki: ServerPki, device_ca: Issued) -> Iterator[Stack]:
    """One broker for a whole module; tests stay apart through fresh certificates and topics."""
    s = start_stack(plugin_path, server_pki, device_ca)
    yield s
    s.close()


@pytest.fixture
def make_stack(
    plugin_path: Path, server_pki: ServerPki, device_ca: Issued
) -> Iterator[StackFactory]:
    """A dedicated broker for tests that stop, break or reload things."""
    stacks: list[Stack] = []

    def factory(
        authorizer: Authorizer | None = None, *, serve: bool = True, **options: object
    ) -> Stack:
        s = start_stack(plugin_path, server_pki, device_ca, authorizer, serve=serve, **options)
        stacks.append(s)
        return s

    yield factory
    for s in stacks:
        s.close()


@pytest.fixture
def topic() -> str:
    """A topic prefix no other test uses."""
    return f"t/{unique_cn('x')}/"
