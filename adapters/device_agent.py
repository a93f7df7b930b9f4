"""certwarden-device: the reference device agent (paho-mqtt).

It keeps a device connected with its certificate, answers certwarden's manage commands and
rolls safely: new key + new per-device CA + new leaf (version in the DN), register over
MQTT, prove the new chain on a second connection, switch, then retire the old chain over the
old connection. On any failure it keeps what works. Keys are written 0600.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.mqtt_session import MqttSession

log = logging.getLogger("certwarden.device")
VERSION = re.compile(r"^(?P<base>.*?) v(?P<n>\d+)$")


@dataclass
class DeviceConfig:
    host: str
    port: int
    component_id: str
    state_dir: Path  # device.pem (leaf + chain), device.key, truststore.pem
    org_uid: str | None = None
    reply_timeout: float = 10.0
    lifetime_days: int = 365

    @property
    def cert_path(self) -> Path:
        return self.state_dir / "device.pem"

    @property
    def key_path(self) -> Path:
        return self.state_dir / "device.key"

    @property
    def truststore_path(self) -> Path:
        return self.state_dir / "truststore.pem"


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomic write with permissions set before any byte lands (keys: 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def next_chain(leaf_pem: bytes, lifetime_days: int) -> tuple[bytes, bytes, bytes]:
    """(leaf+CA PEM, key PEM, CA PEM): a per-device CA signing a new leaf, version bumped in the CN."""
    current = x509.load_pem_x509_certificate(leaf_pem)
    attrs = current.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(attrs[0].value) if attrs else "device"
    match = VERSION.match(cn)
    base, version = (match["base"], int(match["n"]) + 1) if match else (cn, 2)
    others = [a for a in current.subject if a.oid != NameOID.COMMON_NAME]
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [*others, x509.NameAttribute(NameOID.COMMON_NAME, f"{base} device CA v{version}")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=lifetime_days + 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([*others, x509.NameAttribute(NameOID.COMMON_NAME, f"{base} v{version}")])
        )
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=lifetime_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ca_pem = ca.public_bytes(pem)
    return leaf.public_bytes(pem) + ca_pem, key_pem, ca_pem


def split_pems(data: bytes) -> list[str]:
    return [
        c.public_bytes(serialization.Encoding.PEM).decode()
        for c in x509.load_pem_x509_certificates(data)
    ]


class Connection(MqttSession):
    """The agent's session: host and port from its configuration."""

    def __init__(self, cfg: DeviceConfig, cert: Path, key: Path, ca: Path, client_id: str) -> None:
        super().__init__(cfg.host, cfg.port, cert, key, ca, client_id)
        self.cfg = cfg


class DeviceAgent:
    def __init__(self, cfg: DeviceConfig) -> None:
        self.cfg = cfg
        self.main: Connection | None = None
        self._replies: dict[bytes, dict[str, Any]] = {}
        self._reply_ready = threading.Condition()
        self._busy = threading.Lock()
        self._stopping = threading.Event()
        self.rolls = 0
        self.events: list[str] = []

    # -- topics ------------------------------------------------------------
    def topic(self, suffix: str) -> str:
        return f"{self.cfg.org_uid}/{suffix}".replace("{c}", self.cfg.component_id)

    def start(self) -> None:
        self._stopping.clear()
        self.main = self._open(self.cfg.cert_path, self.cfg.key_path, self.cfg.truststore_path)
        if self.main is None:
            raise RuntimeError("could not connect with the current certificate")

    def stop(self) -> None:
        self._stopping.set()
        if self.main is not None:
            self.main.close()

    def _open(self, cert: Path, key: Path, ca: Path) -> Connection | None:
        conn = Connection(
            self.cfg, cert, key, ca, f"{self.cfg.component_id}-{uuid.uuid4().hex[:6]}"
        )
        conn.client.on_message = self._on_message
        conn.on_lost = self._lost
        if not conn.open(self.cfg.reply_timeout):
            return None
        if self.cfg.org_uid is None:
            private = f"manage/cert/myorg/client/{conn.client_id}/reply"
            answer = self._request(
                conn, f"manage/cert/myorg/cid/{self.cfg.component_id}", b"", private
            )
            self.cfg.org_uid = str(answer.get("raw", "")) or None
            if self.cfg.org_uid is None:
                conn.close()
                return None
        for suffix in (
            "manage/cert/roll/cid/{c}",
            "manage/cert/update_truststore/cid/{c}",
            "cid/{c}/reply",
        ):
            conn.client.subscribe(self.topic(suffix), qos=1)
        return conn

    def _lost(self, conn: MqttSession) -> None:
        if conn is self.main and isinstance(conn, Connection) and not self._stopping.is_set():
            threading.Thread(target=self._reconnect, args=(conn,), daemon=True).start()

    def _reconnect(self, lost: Connection) -> None:
        """The broker dropped the main session: reopen it (subscriptions included) with the
        current certificate, backing off from 0.5 s to 30 s, until it works or stop()."""
        delay = 0.5
        while not self._stopping.wait(delay):
            with self._busy:
                if self.main is not lost:
                    return  # a roll or a restart replaced it meanwhile
                fresh = self._open(self.cfg.cert_path, self.cfg.key_path, self.cfg.truststore_path)
                if fresh is not None:
                    self.main = fresh
                    self.events.append("reconnected")
                    return
            delay = min(delay * 2, 30.0)

    # -- request / reply ------------------------------------------------------
    def _request(
        self, conn: Connection, topic: str, payload: bytes, response: str | None = None
    ) -> dict[str, Any]:
        """MQTT 5 request/response: correlation data identifies our reply."""
        correlation = uuid.uuid4().bytes
        props: Any = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = correlation
        props.ResponseTopic = response or self.topic("cid/{c}/reply")
        subscribed = threading.Event()
        conn.client.on_subscribe = lambda *_a: subscribed.set()
        conn.client.subscribe(props.ResponseTopic, qos=1)
        subscribed.wait(self.cfg.reply_timeout)
        conn.client.publish(topic, payload, qos=1, properties=props)
        with self._reply_ready:
            self._reply_ready.wait_for(lambda: correlation in self._replies, self.cfg.reply_timeout)
            return self._replies.pop(correlation, {"success": False, "reason": "no reply"})

    def _on_message(self, _client: Any, _u: Any, msg: Any) -> None:
        props = getattr(msg, "properties", None)
        correlation = getattr(props, "CorrelationData", None) if props else None
        if correlation is not None:
            try:
                body = json.loads(msg.payload)
                body = body if isinstance(body, dict) else {"raw": msg.payload.decode()}
            except ValueError:
                body = {"raw": msg.payload.decode(errors="replace")}
            with self._reply_ready:
                self._replies[bytes(correlation)] = body
                self._reply_ready.notify_all()
            return
        if msg.topic.endswith(f"/manage/cert/roll/cid/{self.cfg.component_id}"):
            threading.Thread(target=self.roll, daemon=True).start()
        elif msg.topic.endswith(f"/manage/cert/update_truststore/cid/{self.cfg.component_id}"):
            pem = bytes(msg.payload)
            threading.Thread(target=self.update_truststore, args=(pem,), daemon=True).start()

    # -- commands ---------------------------------------------------------------
    def roll(self) -> bool:
        """Register a new chain, prove it, switch, retire the old one. False keeps the old."""
        with self._busy:
            old = self.main
            if old is None:
                return False
            current = self.cfg.cert_path.read_bytes()
            chain_pem, key_pem, _ca = next_chain(current, self.cfg.lifetime_days)
            body = json.dumps({"curCerts": split_pems(current), "newCerts": split_pems(chain_pem)})
            reply = self._request(old, self.topic("manage/cert/register/cid/{c}"), body.encode())
            if not reply.get("success"):
                self.events.append(f"register failed: {reply.get('reason')}")
                return False
            staging = Path(tempfile.mkdtemp(dir=self.cfg.state_dir, prefix=".roll-"))
            write_private(staging / "device.pem", chain_pem, 0o644)
            write_private(staging / "device.key", key_pem)
            fresh = None
            for delay in (0.0, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0):  # the new chain may lag
                time.sleep(delay)
                fresh = self._open(
                    staging / "device.pem", staging / "device.key", self.cfg.truststore_path
                )
                if fresh is not None:
                    break
            if fresh is None:
                self.events.append("new certificate did not connect; keeping the old one")
                return False
            write_private(self.cfg.key_path, key_pem)  # switch: the new chain is proven
            write_private(self.cfg.cert_path, chain_pem, 0o644)
            self.main = fresh
            retire = json.dumps({"certs": split_pems(current)}).encode()
            answer = self._request(old, self.topic("manage/cert/unregister/cid/{c}"), retire)
            self.events.append(f"rolled; old chain retired: {bool(answer.get('success'))}")
            old.close()
            for path in staging.iterdir():
                path.unlink()
            staging.rmdir()
            self.rolls += 1
            return True

    def update_truststore(self, new_ca_pem: bytes) -> bool:
        """Add the new server CA beside the old, verify, and only then drop the old one."""
        with self._busy:
            try:
                x509.load_pem_x509_certificate(new_ca_pem)
            except ValueError:
                self.events.append("truststore update refused: not a PEM certificate")
                return False
            old = self.cfg.truststore_path.read_bytes()
            if new_ca_pem.strip() in old:
                return True
            both = self.cfg.state_dir / ".truststore.both.pem"
            write_private(both, old.rstrip() + b"\n" + new_ca_pem, 0o644)
            probe = self._open(self.cfg.cert_path, self.cfg.key_path, both)
            if probe is None:
                both.unlink()
                self.events.append("truststore update failed verification; kept the old one")
                return False
            probe.close()
            only_new = self.cfg.state_dir / ".truststore.new.pem"
            write_private(only_new, new_ca_pem, 0o644)
            works_alone = self._open(self.cfg.cert_path, self.cfg.key_path, only_new)
            final = only_new if works_alone is not None else both
            if works_alone is not None:
                works_alone.close()
            os.replace(final, self.cfg.truststore_path)
            for leftover in (both, only_new):
                leftover.unlink(missing_ok=True)
            self.events.append(
                "truststore updated" + ("" if works_alone else " (both anchors kept)")
            )
            return True


def main() -> None:
    """`certwarden-device --host H --port P --component ID --state-dir DIR [--org UID]`."""
    import signal

    import typer

    def run(
        component: Annotated[str, typer.Option(help="component id this device publishes as")],
        state_dir: Annotated[
            Path, typer.Option(help="holds device.pem, device.key, truststore.pem")
        ],
        host: str = "127.0.0.1",
        port: int = 8883,
        org: Annotated[str | None, typer.Option(help="organization uid (myorg if absent)")] = None,
    ) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        for needed in ("device.pem", "device.key", "truststore.pem"):
            if not (state_dir / needed).exists():
                raise typer.BadParameter(f"{state_dir / needed} is missing")
        agent = DeviceAgent(DeviceConfig(host, port, component, state_dir, org))
        agent.start()
        log.info("connected as %s in organization %s", component, agent.cfg.org_uid)
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
        agent.stop()

    typer.run(run)
