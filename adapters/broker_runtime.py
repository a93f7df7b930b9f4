"""The enforcement point as `certwarden serve` runs it: server PKI, trust directory, authz
socket and a Mosquitto child process with the certwarden plugin."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from adapters.mosquitto.authz_server import AuthzSocketServer
from adapters.mosquitto.broker import MosquittoConfig, MosquittoProcess
from adapters.mosquitto.pki import (
    ServerPki,
    ensure_server_pki,
    issue_service_client_cert,
    subject_hash,
    write_capath,
)
from adapters.reply_publisher import PahoReplyPublisher
from adapters.settings import Settings
from application.bootstrap import Certwarden

log = logging.getLogger(__name__)


class CapathTrustAnchors:
    """TrustAnchors port: registered anchors plus the server CA, as OpenSSL hashed names.

    Incremental: only the hash buckets whose members changed are rewritten, and each
    certificate's subject hash is computed once (a registration costs one file write, not a
    rewrite of the whole directory)."""

    def __init__(self, capath: Path, server_ca_pem: str) -> None:
        self.capath = capath
        self.server_ca_pem = server_ca_pem
        self._hash_of: dict[str, str] = {}  # PEM -> subject hash
        self._buckets: dict[str, set[str]] | None = None  # hash -> PEMs written

    def replace(self, pems: list[str]) -> None:
        wanted = {self.server_ca_pem, *pems}
        if self._buckets is None:  # first call: make the directory exact
            write_capath(self.capath, sorted(wanted))
            self._buckets = {}
            for pem in wanted:
                self._buckets.setdefault(self._hash(pem), set()).add(pem)
            return
        current = {pem for members in self._buckets.values() for pem in members}
        touched = {self._hash(pem) for pem in current ^ wanted}
        for bucket in touched:
            members = {pem for pem in wanted if self._hash(pem) == bucket}
            self._write_bucket(bucket, members)
            self._buckets[bucket] = members

    def _hash(self, pem: str) -> str:
        found = self._hash_of.get(pem)
        if found is None:
            found = self._hash_of[pem] = subject_hash(x509.load_pem_x509_certificate(pem.encode()))
        return found

    def _write_bucket(self, bucket: str, members: set[str]) -> None:
        """Files <hash>.0..k-1 without gaps (OpenSSL stops at the first missing suffix)."""
        self.capath.mkdir(parents=True, exist_ok=True)
        ordered = sorted(members)
        for n, pem in enumerate(ordered):
            path = self.capath / f"{bucket}.{n}"
            if not path.exists() or path.read_text() != pem:
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(pem)
                os.replace(tmp, path)
        n = len(ordered)
        while (stale := self.capath / f"{bucket}.{n}").exists():
            stale.unlink()
            n += 1


@dataclass(frozen=True, slots=True)
class ServiceIdentity:
    """certwarden's own MQTT client certificate (issued by the server CA)."""

    cert_path: Path
    key_path: Path
    ca_path: Path
    fingerprint: str


def ensure_service_identity(pki: ServerPki) -> ServiceIdentity:
    cert_path = pki.directory / "service.pem"
    key_path = pki.directory / "service.key"
    if not cert_path.exists() or not key_path.exists():
        cert_pem, key_pem = issue_service_client_cert(pki)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key_pem)
        cert_path.write_text(cert_pem)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ServiceIdentity(cert_path, key_path, pki.ca_cert_path, fingerprint)


@dataclass
class BrokerRuntime:
    cw: Certwarden
    settings: Settings
    pki: ServerPki | None = None
    service: ServiceIdentity | None = None
    authz: AuthzSocketServer | None = None
    mosquitto: MosquittoProcess | None = None
    replies: PahoReplyPublisher | None = None
    started: list[str] = field(default_factory=list)

    def prepare(self) -> ServiceIdentity:
        """PKI, service identity and trust directory; enough for `certwarden authz` too."""
        settings = self.settings
        hosts = list(dict.fromkeys([*settings.mqtt_hostnames, "localhost"]))
        ips = list(dict.fromkeys([settings.mqtt_host, "127.0.0.1"]))
        self.pki = ensure_server_pki(settings.pki_dir, hosts, [ip for ip in ips if ip[0].isdigit()])
        self.service = ensure_service_identity(self.pki)
        index = self.cw.index
        index.service_fingerprints = index.service_fingerprints | {self.service.fingerprint}
        self.cw.trust_anchors.sink = CapathTrustAnchors(self.capath, self.pki.ca_pem)
        self.cw.trust_anchors.sync()
        return self.service

    @property
    def capath(self) -> Path:
        return self.settings.data_dir / "capath"

    def start_authz(self) -> None:
        self.authz = AuthzSocketServer(self.cw.enforcement, self.settings.authz_socket)
        self.authz.start()

    def start(self) -> None:
        service = self.prepare()
        self.start_authz()
        assert self.pki is not None
        plugin = self.settings.plugin_path.absolute()
        if not plugin.exists() or plugin.stat().st_size == 0:
            raise RuntimeError(f"the Mosquitto plugin is not built: {plugin} (run make plugin)")
        directory = self.settings.data_dir / "mosquitto"
        directory.mkdir(parents=True, exist_ok=True)
        config = MosquittoConfig(
            socket_path=self.settings.authz_socket.absolute(),
            capath=self.capath.absolute(),
            certfile=self.pki.cert_path.absolute(),
            keyfile=self.pki.key_path.absolute(),
            log_path=(directory / "mosquitto.log").absolute(),
            plugin_path=plugin,
            port=self.settings.mqtt_port,
            bind_address=self.settings.mqtt_host,
        )
        self.mosquitto = MosquittoProcess.from_config(config, directory / "mosquitto.conf")
        self.mosquitto.start()
        self.replies = self.reply_publisher()
        self.cw.enforcement.replies = self.replies
        log.info(
            "mosquitto on %s:%s, service principal %s",
            config.bind_address,
            config.port,
            service.fingerprint[:16],
        )

    def reply_publisher(self) -> PahoReplyPublisher:
        """A publisher of replies with certwarden's service identity (connects on first use)."""
        service = self.service or self.prepare()
        return PahoReplyPublisher(
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            service.ca_path,
            service.cert_path,
            service.key_path,
        )

    def stop(self) -> None:
        # register/unregister replies still being prepared go out before the publisher does
        self.cw.enforcement.effects.drain()
        self.cw.enforcement.replies = None
        if self.replies is not None:
            self.replies.close()
        if self.mosquitto is not None:
            self.mosquitto.stop()
        if self.authz is not None:
            self.authz.stop()
