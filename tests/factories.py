"""Test factories: EC P-256 keys and certificates for roots, intermediates and device leaves."""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TEST_ORG = "Certwarden Test"
DEFAULT_LIFETIME = timedelta(days=365)
CLOCK_SKEW = timedelta(hours=1)


@dataclass
class Issued:
    """A certificate with its private key, in the forms tests and TLS clients need."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    pem: bytes
    der: bytes
    key_pem: bytes


def unique_cn(prefix: str = "dev") -> str:
    """A common name no other test uses: `<prefix>-<uuid4 hex>`."""
    return f"{prefix}-{uuid.uuid4().hex}"


def make_root(
    cn: str = "Test Root",
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key_cert_sign: bool = True,
) -> Issued:
    """A self-signed root CA: basicConstraints CA (critical), keyUsage keyCertSign + cRLSign."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn)
    usage = _key_usage(digital_signature=False, key_cert_sign=key_cert_sign, crl_sign=True)
    return _issue(name, key, name, key, ca=True, usage=usage, window=(not_before, not_after))


def make_impostor(of: Issued) -> Issued:
    """A self-signed CA with the same DN and the same subject key identifier as `of` but
    another key: only a signature check tells it apart."""
    key = ec.generate_private_key(ec.SECP256R1())
    ski = of.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_before, not_after = _validity(None, None)
    cert = (
        x509.CertificateBuilder()
        .subject_name(of.cert.subject)
        .issuer_name(of.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            _key_usage(digital_signature=False, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(
        cert=cert,
        key=key,
        pem=cert.public_bytes(serialization.Encoding.PEM),
        der=cert.public_bytes(serialization.Encoding.DER),
        key_pem=b"",
    )


def make_intermediate(
    issuer: Issued,
    cn: str = "Test Intermediate",
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key_cert_sign: bool = True,
) -> Issued:
    """An intermediate CA signed by `issuer`, with the same extensions as a root."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = _key_usage(digital_signature=False, key_cert_sign=key_cert_sign, crl_sign=True)
    return _issue(
        _name(cn),
        key,
        issuer.cert.subject,
        issuer.key,
        ca=True,
        usage=usage,
        window=(not_before, not_after),
    )


def make_leaf(
    issuer: Issued,
    cn: str = "device-1",
    *,
    org: str | None = None,
    sans: list[str] | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    ca: bool = False,
) -> Issued:
    """A device certificate signed by `issuer`; `sans` entries are "DNS:x", "IP:x", "URI:x",
    "email:x" (a bare name is a DNS name); `ca=True` makes it (wrongly, for a device) a CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = _key_usage(digital_signature=True, key_cert_sign=ca, crl_sign=ca)
    return _issue(
        _name(cn, org),
        key,
        issuer.cert.subject,
        issuer.key,
        ca=ca,
        usage=usage,
        window=(not_before, not_after),
        sans=sans,
    )


def make_self_signed_leaf(cn: str = "self-device") -> Issued:
    """A self-signed device certificate that is not a CA (CA=false, no keyCertSign)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn)
    usage = _key_usage(digital_signature=True, key_cert_sign=False, crl_sign=False)
    return _issue(name, key, name, key, ca=False, usage=usage, window=(None, None))


def make_chain(prefix: str | None = None) -> tuple[Issued, Issued, Issued]:
    """(root, intermediate, leaf); unique random CNs when `prefix` is None."""
    if prefix is None:
        names = unique_cn("root"), unique_cn("intermediate"), unique_cn("dev")
    else:
        names = f"{prefix} Root", f"{prefix} Intermediate", f"{prefix}-device"
    root = make_root(names[0])
    intermediate = make_intermediate(root, names[1])
    return root, intermediate, make_leaf(intermediate, names[2])


def _name(cn: str, org: str | None = None) -> x509.Name:
    # Listed outermost first, so rfc4514_string() reads "CN=<cn>,O=<org>,O=Certwarden Test".
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, TEST_ORG)]
    if org is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attributes)


def _key_usage(*, digital_signature: bool, key_cert_sign: bool, crl_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _validity(not_before: datetime | None, not_after: datetime | None) -> tuple[datetime, datetime]:
    """Defaults now-1h .. now+365d, moved so that a given bound alone still makes a valid span."""
    now = datetime.now(UTC)
    if not_before is None:
        not_before = now - CLOCK_SKEW
        if not_after is not None and not_after <= not_before:
            not_before = not_after - DEFAULT_LIFETIME
    if not_after is None:
        not_after = max(now, not_before) + DEFAULT_LIFETIME
    return not_before, not_after


def _general_name(text: str) -> x509.GeneralName:
    kind, sep, value = text.partition(":")
    if not sep:
        return x509.DNSName(text)
    match kind.lower():
        case "dns":
            return x509.DNSName(value)
        case "ip":
            return x509.IPAddress(ipaddress.ip_address(value))
        case "uri":
            return x509.UniformResourceIdentifier(value)
        case "email":
            return x509.RFC822Name(value)
    raise ValueError(f"unknown subjectAltName type in {text!r}")


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer_name: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    usage: x509.KeyUsage,
    window: tuple[datetime | None, datetime | None],
    sans: list[str] | None = None,
) -> Issued:
    not_before, not_after = _validity(*window)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if sans:
        names = [_general_name(text) for text in sans]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    return Issued(
        cert=cert,
        key=key,
        pem=cert.public_bytes(serialization.Encoding.PEM),
        der=cert.public_bytes(serialization.Encoding.DER),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
