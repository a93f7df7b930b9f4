"""Broker-side PKI: the server CA, the listener's certificate and the hashed trust directory."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from adapters.mosquitto.name_hash import name_hash

CA_DAYS = 3650
SERVER_DAYS = 825  # the CA/Browser Forum ceiling many TLS clients still enforce
RENEW_BEFORE = dt.timedelta(days=30)
_HASHED_NAME = re.compile(r"^[0-9a-f]{8}\.[0-9]+$")


@dataclass(frozen=True, slots=True)
class ServerPki:
    """Paths of the server CA and listener certificate; keys are mode 0600."""

    directory: Path

    @property
    def ca_cert_path(self) -> Path:
        return self.directory / "server-ca.pem"

    @property
    def ca_key_path(self) -> Path:
        return self.directory / "server-ca.key"

    @property
    def cert_path(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key_path(self) -> Path:
        return self.directory / "server.key"

    @property
    def ca_pem(self) -> str:
        return self.ca_cert_path.read_text()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (temporary file + rename) with `mode` from the first byte on."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)  # umask may have narrowed it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return key


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    days: int,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _server_cert_fits(pki: ServerPki, ca: x509.Certificate, sans: list[x509.GeneralName]) -> bool:
    if not (pki.cert_path.exists() and pki.key_path.exists()):
        return False
    cert = x509.load_pem_x509_certificate(pki.cert_path.read_bytes())
    try:
        cert.verify_directly_issued_by(ca)
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return set(sans) <= set(have) and cert.not_valid_after_utc - RENEW_BEFORE > _now()


def ensure_server_pki(
    directory: Path,
    hostnames: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1",),
) -> ServerPki:
    """Create (first call) or reuse the server CA and listener certificate under `directory`.

    The CA (EC P-256, 10 years) is never replaced once written. The server certificate
    (EC P-256, 825 days, SANs `hostnames` + `ips`) is reissued only when it is missing, does
    not chain to the CA, lacks a requested SAN or expires within 30 days.
    Raises ValueError for an unparsable IP or a key file that is not EC.
    """
    pki = ServerPki(Path(directory))
    pki.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if pki.ca_cert_path.exists() and pki.ca_key_path.exists():
        ca = x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes())
        ca_key = _load_key(pki.ca_key_path)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certwarden"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME, f"certwarden server CA {secrets.token_hex(4)}"
                ),
            ]
        )
        ca = (
            _builder(name, name, ca_key.public_key(), CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(pki.ca_key_path, _key_pem(ca_key), 0o600)
        _write(pki.ca_cert_path, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if not _server_cert_fits(pki, ca, sans):
        cn = hostnames[0] if hostnames else "certwarden-broker"
        cert, key = _leaf(ca, ca_key, cn, SERVER_DAYS, ExtendedKeyUsageOID.SERVER_AUTH, sans)
        _write(pki.key_path, _key_pem(key), 0o600)
        _write(pki.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return pki


def issue_service_client_cert(
    pki: ServerPki, cn: str = "certwarden-service", days: int = SERVER_DAYS
) -> tuple[str, str]:
    """A TLS client certificate signed by the server CA: (cert_pem, key_pem). Nothing is stored."""
    ca = x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes())
    cert, key = _leaf(ca, _load_key(pki.ca_key_path), cn, days, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key).decode()


def subject_hash(cert: x509.Certificate) -> str:
    """OpenSSL's X509_NAME_hash of the subject (what `openssl rehash` names files after)."""
    try:
        return name_hash(cert.subject)
    except (AttributeError, ValueError, UnicodeError):
        pass  # an unusual value type: ask openssl itself
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-subject_hash"],
        input=cert.public_bytes(serialization.Encoding.PEM),
        capture_output=True,
        check=True,
    )
    return out.stdout.decode().strip()


def write_capath(capath_dir: Path, pems: Iterable[str]) -> list[Path]:
    """Make `capath_dir` hold exactly the certificates in `pems`, as `<subject_hash>.<n>` files.

    Each PEM string may hold several certificates; duplicates collapse. Within one hash the
    files are numbered 0..k-1 without gaps (OpenSSL stops at the first missing suffix), each
    written atomically; hashed-name files no longer wanted are removed, other files are left
    alone. Mosquitto reads capath lazily, so additions take effect without a restart, but a
    removed anchor may stay cached in the broker: removal is enforced by certwarden's decision.
    Returns the paths of the files now present. Raises ValueError for a PEM that does not parse.
    """
    directory = Path(capath_dir)
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    wanted: dict[str, dict[bytes, bytes]] = {}
    for pem in pems:
        for cert in x509.load_pem_x509_certificates(pem.encode()):
            fp = cert.fingerprint(hashes.SHA256())
            wanted.setdefault(subject_hash(cert), {})[fp] = cert.public_bytes(
                serialization.Encoding.PEM
            )
    present: list[Path] = []
    for h, by_fp in wanted.items():
        for n, fp in enumerate(sorted(by_fp)):
            path = directory / f"{h}.{n}"
            if not path.exists() or path.read_bytes() != by_fp[fp]:
                _write(path, by_fp[fp], 0o644)
            present.append(path)
    keep = set(present)
    for path in directory.iterdir():
        if _HASHED_NAME.match(path.name) and path not in keep:
            path.unlink()
    return sorted(present)
