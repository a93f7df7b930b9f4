"""Helpers for the broker tests: an Authorizer port fake, device certificates, MQTT clients."""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.broker_runtime import BrokerRuntime
from adapters.settings import Settings
from application.bootstrap import Certwarden, bootstrap
from application.ports import AccessRequest, Action, Changes, ConnectRequest, Decision, Publish
from tests.factories import Issued, make_leaf, unique_cn


@dataclass
class Grant:
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    receive: tuple[str, ...] = ()
    retain: bool = True


@dataclass(frozen=True)
class Message:
    """One on_message call, as the fake received it."""

    fingerprint: str
    client_id: str
    peer_ip: str
    topic: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None


class FakeAuthorizer:
    """The Authorizer port, faked: fingerprint -> topic prefixes per action, and a change log.

    Every grant or revocation moves the generation; `revoke` lists the fingerprint in `kick`,
    `withdraw` only in `recheck` (the plugin must then re-ask the connect decision).
    Requests (on_message) are recorded in `messages` and answered by `replier`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._grants: dict[str, Grant] = {}
        self._log: list[tuple[int, frozenset[str], frozenset[str]]] = []
        self.generation = 0
        self.polled = -1  # the generation the plugin last said it had applied
        self.connects: list[tuple[ConnectRequest, Decision]] = []
        self.accesses: list[tuple[AccessRequest, Decision]] = []
        self.messages: list[Message] = []
        self.replier: Callable[[Message], list[Publish]] = lambda _m: []

    def grant(self, fingerprint: str, grant: Grant) -> None:
        with self._lock:
            self._grants[fingerprint] = grant
            self._bump(frozenset(), frozenset())

    def revoke(self, fingerprint: str) -> None:
        with self._lock:
            self._grants.pop(fingerprint, None)
            self._bump(frozenset({fingerprint}), frozenset())

    def withdraw(self, fingerprint: str) -> None:
        with self._lock:
            self._grants.pop(fingerprint, None)
            self._bump(frozenset(), frozenset({fingerprint}))

    def _bump(self, kick: frozenset[str], recheck: frozenset[str]) -> None:
        self.generation += 1
        self._log.append((self.generation, kick, recheck))

    def authorize_connect(self, request: ConnectRequest) -> Decision:
        fp = fingerprint_of(request.certificate_der)
        with self._lock:
            known = fp in self._grants
            decision = Decision(
                known, "allowed" if known else "unknown-certificate", fingerprint=fp
            )
            self.connects.append((request, decision))
        return decision

    def authorize(self, request: AccessRequest) -> Decision:
        with self._lock:
            grant = self._grants.get(request.fingerprint)
            prefixes: tuple[str, ...] = ()
            if grant is not None:
                prefixes = {
                    Action.PUBLISH: grant.publish,
                    Action.SUBSCRIBE: grant.subscribe,
                    Action.RECEIVE: grant.receive,
                }[request.action]
            allowed = any(request.topic.startswith(p) for p in prefixes)
            if allowed and request.action is Action.PUBLISH and request.retain:
                allowed = grant is not None and grant.retain
            decision = Decision(allowed, "allowed" if allowed else "topic-denied")
            self.accesses.append((request, decision))
        return decision

    def changes_since(self, generation: int) -> Changes:
        with self._lock:
            self.polled = generation
            kick: set[str] = set()
            recheck: set[str] = set()
            for gen, k, r in self._log:
                if gen > generation:
                    kick |= k
                    recheck |= r
            return Changes(self.generation, frozenset(kick), frozenset(recheck))

    def on_message(
        self,
        fingerprint: str,
        client_id: str,
        peer_ip: str,
        topic: str,
        payload: bytes,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> list[Publish]:
        message = Message(
            fingerprint, client_id, peer_ip, topic, payload, response_topic, correlation_data
        )
        with self._lock:
            self.messages.append(message)
            replier = self.replier
        return replier(message)

    def messages_on(self, topic: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def caught_up(self) -> bool:
        """The plugin applied every change so far (its caches will not be flushed for them)."""
        with self._lock:
            return self.polled == self.generation

    def accesses_for(self, client_id: str) -> list[AccessRequest]:
        with self._lock:
            return [r for r, _ in self.accesses if r.client_id == client_id]


def fingerprint_of(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def correlation_of(message: mqtt.MQTTMessage) -> bytes | None:
    """The MQTT 5 correlation data of a received message (None for 3.1.1 or when absent)."""
    properties = getattr(message, "properties", None)
    value = getattr(properties, "CorrelationData", None)
    return bytes(value) if value is not None else None


@dataclass
class Device:
    """A device certificate on disk, ready for paho and the Mosquitto CLI."""

    issued: Issued
    cert_path: Path
    key_path: Path

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.issued.der)

    @classmethod
    def create(cls, directory: Path, issuer: Issued) -> Device:
        return cls.store(directory, make_leaf(issuer, unique_cn("dev")))

    @classmethod
    def store(cls, directory: Path, issued: Issued) -> Device:
        directory.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex[:8]
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(issued.pem)
        key_path.write_bytes(issued.key_pem)
        key_path.chmod(0o600)
        return cls(issued, cert_path, key_path)

    @classmethod
    def from_pem(cls, directory: Path, cert_pem: str, key_pem: str) -> Device:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        der = cert.public_bytes(serialization.Encoding.DER)
        return cls.store(directory, Issued(cert, key, cert_pem.encode(), der, key_pem.encode()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ROOT = Path(__file__).resolve().parents[3]


def start_stack(tmp: Path, *, operations: bool = True) -> tuple[Certwarden, BrokerRuntime]:
    """The whole service on loopback, as `make run` starts it: a SQLite store under `tmp`,
    certwarden's Mosquitto (TLS, the plugin) on a free port and, unless told otherwise, the
    in-process operations worker publishing through it. Stop with `runtime.stop()` then
    `cw.close()`."""
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
    if operations:
        cw.start_operations()
    return cw, runtime


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `predicate` every 10 ms until it holds or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@dataclass
class Inbox:
    cond: threading.Condition = field(default_factory=threading.Condition)
    connack: int | None = None
    subacks: dict[int, list[int]] = field(default_factory=dict)
    unsubacks: dict[int, list[int]] = field(default_factory=dict)
    pubacks: dict[int, int] = field(default_factory=dict)
    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    disconnected_at: float | None = None
    disconnect_reason: int | None = None


class MqttClient:
    """A paho client over mutual TLS whose callbacks land in an Inbox the test can wait on."""

    def __init__(
        self,
        port: int,
        ca_file: Path,
        device: Device,
        *,
        client_id: str | None = None,
        protocol: int = 5,
        clean: bool = True,
        will: tuple[str, bytes, int, bool] | None = None,
    ) -> None:
        self.port = port
        self.protocol = protocol
        self.clean = clean
        self.client_id = client_id or f"c-{uuid.uuid4().hex[:12]}"
        self.inbox = Inbox()
        kwargs: dict[str, object] = {}
        if protocol != 5:
            kwargs["clean_session"] = clean
        self._c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311,
            **kwargs,  # type: ignore[arg-type]
        )
        self._c.tls_set(str(ca_file), str(device.cert_path), str(device.key_path))
        if will is not None:
            self._c.will_set(will[0], will[1], will[2], will[3])
        self._c.on_socket_open = self._on_socket_open
        self._c.on_connect = self._on_connect
        self._c.on_subscribe = self._on_subscribe
        self._c.on_unsubscribe = self._on_unsubscribe
        self._c.on_publish = self._on_publish
        self._c.on_message = self._on_message
        self._c.on_disconnect = self._on_disconnect

    # callbacks run on paho's thread
    def _on_socket_open(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        if isinstance(sock, socket.socket):  # the findings: loopback crawls without it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _update(self, fn: Callable[[Inbox], object]) -> None:
        with self.inbox.cond:
            fn(self.inbox)
            self.inbox.cond.notify_all()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self._update(lambda i: setattr(i, "connack", reason_code.value))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        self._update(lambda i: i.subacks.__setitem__(mid, [rc.value for rc in reason_codes]))

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        self._update(lambda i: i.unsubacks.__setitem__(mid, [rc.value for rc in reason_codes]))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self._update(lambda i: i.pubacks.__setitem__(mid, reason_code.value))

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        self._update(lambda i: i.messages.append(message))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        now = time.monotonic()

        def record(i: Inbox) -> None:
            if i.disconnected_at is None:
                i.disconnected_at, i.disconnect_reason = now, reason_code.value

        self._update(record)

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.inbox.cond:
            return self.inbox.cond.wait_for(predicate, timeout)

    # test-facing API
    def connect(self, timeout: float = 5.0) -> int:
        """CONNACK reason code (0 = accepted, 0x87 = not authorized)."""
        if self.protocol == 5:
            self._c.connect("127.0.0.1", self.port, keepalive=30, clean_start=self.clean)
        else:
            self._c.connect("127.0.0.1", self.port, keepalive=30)
        self._c.loop_start()
        if not self._wait(lambda: self.inbox.connack is not None, timeout):
            raise TimeoutError("no CONNACK")
        assert self.inbox.connack is not None
        if self.inbox.connack != 0:
            self.close()
        return self.inbox.connack

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list[int]:
        _, mid = self._c.subscribe(topic, qos)
        if mid is None:
            raise ConnectionError("SUBSCRIBE not sent")
        if not self._wait(lambda: mid in self.inbox.subacks, timeout):
            raise TimeoutError("no SUBACK")
        return self.inbox.subacks[mid]

    def unsubscribe(self, topic: str, timeout: float = 5.0) -> list[int]:
        _, mid = self._c.unsubscribe(topic)
        if mid is None:
            raise ConnectionError("UNSUBSCRIBE not sent")
        if not self._wait(lambda: mid in self.inbox.unsubacks, timeout):
            raise TimeoutError("no UNSUBACK")
        return self.inbox.unsubacks[mid]

    def publish(
        self,
        topic: str,
        payload: bytes = b"x",
        qos: int = 1,
        retain: bool = False,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> int | None:
        """PUBACK reason code for QoS 1 (0 = success, 0x87 = not authorized); None for QoS 0.
        Response topic and correlation data are MQTT 5 properties (section 3.3.2.3)."""
        properties = None
        if response_topic is not None or correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                properties.ResponseTopic = response_topic
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
        info = self._c.publish(topic, payload, qos, retain, properties)
        if qos == 0:
            info.wait_for_publish(5)
            return None
        if not self._wait(lambda: info.mid in self.inbox.pubacks, 5.0):
            raise TimeoutError("no PUBACK")
        return self.inbox.pubacks[info.mid]

    def received(self, topic: str | None = None) -> list[mqtt.MQTTMessage]:
        with self.inbox.cond:
            return [m for m in self.inbox.messages if topic is None or m.topic == topic]

    def wait_message(self, topic: str, timeout: float = 5.0) -> bool:
        return self._wait(lambda: any(m.topic == topic for m in self.inbox.messages), timeout)

    def next_message(self, topic: str, timeout: float = 5.0) -> mqtt.MQTTMessage:
        """The first message received on `topic`; TimeoutError when none comes in time."""
        if not self.wait_message(topic, timeout):
            raise TimeoutError(f"nothing received on {topic}")
        return self.received(topic)[0]

    def wait_disconnect(self, timeout: float = 5.0) -> bool:
        return self._wait(lambda: self.inbox.disconnected_at is not None, timeout)

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a device losing power would."""
        self._c.loop_stop()
        sock = self._c.socket()
        if isinstance(sock, socket.socket):
            sock.close()

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()


def tls_context(ca_file: Path, device: Device | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    if device is not None:
        ctx.load_cert_chain(str(device.cert_path), str(device.key_path))
    return ctx


def raw_connack_311(port: int, ctx: ssl.SSLContext, client_id: str) -> int:
    """Send a bare MQTT 3.1.1 CONNECT and return the CONNACK return code byte
    (MQTT 3.1.1 section 3.2.2.3: 5 = not authorized)."""
    cid = client_id.encode()
    rest = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", len(cid)) + cid
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(bytes([0x10, len(rest)]) + rest)
        ack = b""
        while len(ack) < 4:
            chunk = tls.recv(4 - len(ack))
            if not chunk:
                raise ConnectionError("closed before CONNACK")
            ack += chunk
    if ack[:2] != b"\x20\x02":
        raise ValueError(f"not a CONNACK: {ack!r}")
    return ack[3]


FD_SETSIZE = 1024  # select() cannot watch a descriptor numbered this or above


@contextmanager
def descriptors_taken_below(n: int) -> Iterator[None]:
    """Hold every descriptor below n, so the sockets opened meanwhile are numbered n or above."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n + 256:
        pytest.skip(f"descriptor hard limit {hard} is below {n + 256}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n + 256), hard))
    held = [os.open(os.devnull, os.O_RDONLY)]
    try:
        while held[-1] < n - 1:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
