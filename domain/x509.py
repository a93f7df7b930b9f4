"""X.509 certificate facts: parse uploaded certificates, normalise DNs, tell who issued whom."""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from domain.errors import BadCertificateInput
from domain.x509_input import (
    KEY_MATERIAL_REASON,
    check_der_framing,
    looks_like_private_key,
    refuse,
    refuse_key_material,
    split_bundle,
)

__all__ = [
    "CertificateFacts",
    "facts_from_der",
    "fingerprint_of_der",
    "is_issued_by",
    "signature_verifies",
    "normalise_dn",
    "parse_bundle",
]

_T = TypeVar("_T")
_E = TypeVar("_E", bound=x509.ExtensionType)
# What cryptography raises when a lazily decoded field of a parsed certificate is malformed.
_READ_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
_SAN_PREFIXES: dict[type[x509.GeneralName], str] = {
    x509.DNSName: "DNS",
    x509.IPAddress: "IP",
    x509.UniformResourceIdentifier: "URI",
    x509.RFC822Name: "email",
    x509.RegisteredID: "RID",
}


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What certwarden records about one certificate; JSON-safe but for the two datetimes."""

    pem: str
    fingerprint: str
    serial: str
    subject: str
    subject_key: str
    issuer: str
    issuer_key: str
    common_name: str | None
    ski: str | None
    aki: str | None
    not_before: datetime
    not_after: datetime
    key_type: str
    key_size: int
    key_curve: str | None
    sans: tuple[str, ...]
    ca_detected: bool
    self_signed: bool
    signature_algorithm: str


def parse_bundle(
    data: bytes, *, max_certs: int = 100, max_bytes: int = 1 << 20
) -> list[CertificateFacts]:
    """Facts of every certificate of an upload (PEM bundle or one DER), duplicates kept once.

    Raises `BadCertificateInput` (never quoting the input, `extra["reason"]` says why) for an
    empty or oversized body, too many certificates, text that is not PEM/DER, non-CERTIFICATE
    PEM blocks, broken base64 or DER, text around the blocks, unparseable certificates or empty
    DNs (`extra["index"]` is the 1-based certificate), and for any private key material anywhere
    in the input, which refuses the whole request.
    """
    facts: list[CertificateFacts] = []
    seen: set[str] = set()
    for index, der in split_bundle(data, max_certs=max_certs, max_bytes=max_bytes):
        try:
            one = facts_from_der(der)
        except BadCertificateInput as exc:
            if exc.extra.get("reason") == KEY_MATERIAL_REASON:
                raise
            raise BadCertificateInput(
                f"certificate {index} of the bundle: {exc.detail}", **{**exc.extra, "index": index}
            ) from exc
        if one.fingerprint not in seen:
            seen.add(one.fingerprint)
            facts.append(one)
    return facts


def facts_from_der(der: bytes) -> CertificateFacts:
    """Facts of one DER certificate.

    Raises `BadCertificateInput` when the bytes are not exactly one certificate, when
    cryptography refuses it or one of its fields, when a DN is empty or the key type is not
    supported, and (with the private-key message) when the bytes hold a private key.
    """
    check_der_framing(der)
    try:
        cert = x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion) as exc:
        if looks_like_private_key(der):
            refuse_key_material()
        raise BadCertificateInput(
            "it cannot be parsed as an X.509 certificate", reason="unparseable"
        ) from exc
    try:
        return _facts(cert, der)
    except _READ_ERRORS as exc:
        raise BadCertificateInput(
            f"one of its fields cannot be read ({type(exc).__name__})", reason="unreadable"
        ) from exc


def fingerprint_of_der(der: bytes) -> str:
    """Lowercase hex SHA-256 of the DER bytes; never raises."""
    return hashlib.sha256(der).hexdigest()


def is_issued_by(child: CertificateFacts, issuer: CertificateFacts) -> bool:
    """True when `issuer` names, identifies and signed `child`; False otherwise, never raises.

    Checks the issuer DN (normalised), AKI against SKI when both exist, then the signature.
    Whether `issuer` may act as a CA (`ca_detected`, validity) is the caller's rule.
    """
    # RFC 5280 §6.1.3 (a)(4): the child's issuer name matches the issuer's subject (§7.1 rules).
    if child.issuer_key != issuer.subject_key:
        return False
    # RFC 5280 §4.2.1.1: AKI keyIdentifier names the issuer's SKI; a mismatch means another key.
    if child.aki is not None and issuer.ski is not None and child.aki != issuer.ski:
        return False
    return signature_verifies(child.pem, issuer.pem)


def signature_verifies(child_pem: str, issuer_pem: str) -> bool:
    """True when the key of `issuer_pem` signed `child_pem`; False otherwise, never raises.

    Only the signature (RFC 5280 §6.1.3 (a)(1)): names and key identifiers are the caller's
    check, as `is_issued_by` does. Parsed issuer keys are cached, so a fleet under one CA
    costs one signature check per device certificate.
    """
    try:
        child_cert = x509.load_pem_x509_certificate(child_pem.encode("ascii"))
        issuer_public_key = _public_key(issuer_pem)
    except _READ_ERRORS:
        return False
    return _signed_by(child_cert, issuer_public_key)


def normalise_dn(name: x509.Name) -> str:
    """RFC 4514 string of `name` with values compared as caseIgnoreMatch; never raises.

    RFC 5280 §7.1 compares DNs after RFC 4518 string preparation: values are case folded, NFKC
    normalised and their insignificant spaces removed. Attribute order is kept.
    """
    rdns = [
        "+".join(f"{attr.rfc4514_attribute_name}={_normalise_value(attr.value)}" for attr in rdn)
        for rdn in reversed(name.rdns)  # RFC 4514 §2.1: the last RDN is written first
    ]
    return ",".join(rdns)


def _facts(cert: x509.Certificate, der: bytes) -> CertificateFacts:
    subject = _read("subject", lambda: cert.subject)
    issuer = _read("issuer", lambda: cert.issuer)
    # RFC 5280 §4.1.2.4: the issuer MUST be non-empty. §4.1.2.6 allows an empty subject only
    # beside a critical subjectAltName, but certwarden identifies devices by their DN.
    if len(subject) == 0:
        refuse("subject DN is empty", reason="empty_dn")
    if len(issuer) == 0:
        refuse("issuer DN is empty", reason="empty_dn")
    extensions = _read("extensions", lambda: cert.extensions)
    public_key = _read("public key", cert.public_key)
    key_type, key_size, key_curve = _describe_key(public_key, cert)
    subject_key, issuer_key = normalise_dn(subject), normalise_dn(issuer)
    self_signed = subject_key == issuer_key and _signed_by(cert, public_key)
    constraints = _extension(extensions, x509.BasicConstraints)
    usage = _extension(extensions, x509.KeyUsage)
    if constraints is not None:
        # RFC 5280 §4.2.1.9: cA decides; an explicit cA=FALSE is never a CA, whatever keyUsage.
        ca_detected = constraints.ca
    else:
        # No basicConstraints: a self-signed certificate allowed to sign certificates
        # (keyUsage keyCertSign, §4.2.1.3) is taken as a legacy (v1-style) trust anchor.
        ca_detected = self_signed and usage is not None and usage.key_cert_sign
    ski = _extension(extensions, x509.SubjectKeyIdentifier)
    aki = _extension(extensions, x509.AuthorityKeyIdentifier)
    san = _extension(extensions, x509.SubjectAlternativeName)
    common_names = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return CertificateFacts(
        pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        fingerprint=fingerprint_of_der(der),
        serial=format(cert.serial_number, "x"),
        subject=subject.rfc4514_string(),
        subject_key=subject_key,
        issuer=issuer.rfc4514_string(),
        issuer_key=issuer_key,
        common_name=str(common_names[0].value) if common_names else None,
        ski=ski.digest.hex() if ski is not None else None,
        aki=aki.key_identifier.hex() if aki is not None and aki.key_identifier else None,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=key_type,
        key_size=key_size,
        key_curve=key_curve,
        sans=tuple(_san_text(name) for name in san) if san is not None else (),
        ca_detected=ca_detected,
        self_signed=self_signed,
        signature_algorithm=_oid_name(cert.signature_algorithm_oid),
    )


def _read(what: str, getter: Callable[[], _T]) -> _T:
    try:
        return getter()
    except _READ_ERRORS as exc:
        raise BadCertificateInput(
            f"its {what} cannot be read ({type(exc).__name__})", reason="unreadable", field=what
        ) from exc


def _extension(extensions: x509.Extensions, kind: type[_E]) -> _E | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _describe_key(
    key: CertificatePublicKeyTypes, cert: x509.Certificate
) -> tuple[str, int, str | None]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.curve.key_size, key.curve.name
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size, None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256, None
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456, None
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size, None
    algorithm = _oid_name(cert.public_key_algorithm_oid)
    refuse(
        f"its public key type ({algorithm}) is not supported; use EC, RSA, Ed25519, Ed448 or DSA",
        reason="unsupported_key",
    )


def _signed_by(cert: x509.Certificate, key: CertificatePublicKeyTypes) -> bool:
    """RFC 5280 §6.1.3 (a)(1): the signature over tbsCertificate verifies with `key`."""
    signature, tbs = cert.signature, cert.tbs_certificate_bytes
    try:
        params = cert.signature_algorithm_parameters
        digest = cert.signature_hash_algorithm
        if isinstance(key, rsa.RSAPublicKey):
            if not isinstance(params, padding.PKCS1v15 | padding.PSS) or digest is None:
                return False
            key.verify(signature, tbs, params, digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(params, ec.ECDSA):
                return False
            key.verify(signature, tbs, params)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, tbs)
        elif isinstance(key, dsa.DSAPublicKey):
            if digest is None:
                return False
            key.verify(signature, tbs, digest)
        else:
            return False
    except (InvalidSignature, *_READ_ERRORS):
        return False
    return True


@functools.lru_cache(maxsize=512)
def _public_key(pem: str) -> CertificatePublicKeyTypes:
    return x509.load_pem_x509_certificate(pem.encode("ascii")).public_key()


def _normalise_value(value: str | bytes) -> str:
    if isinstance(value, bytes):  # e.g. x500UniqueIdentifier: RFC 4514 §2.4 hex form
        return "#" + value.hex()
    # RFC 4518 §2: map (case fold), normalise (NFKC), insignificant space handling.
    prepared = " ".join(unicodedata.normalize("NFKC", value.casefold()).split())
    return _escape_rfc4514(prepared)


def _escape_rfc4514(value: str) -> str:
    """RFC 4514 §2.4 escaping (values arrive without leading or trailing spaces)."""
    escaped = value.replace("\\", "\\\\").replace("\0", "\\00")
    for special in '"+,;<>':
        escaped = escaped.replace(special, "\\" + special)
    return "\\" + escaped if escaped.startswith("#") else escaped


def _san_text(name: x509.GeneralName) -> str:
    """OpenSSL-style "TYPE:value" text of a subjectAltName entry (RFC 5280 §4.2.1.6)."""
    if isinstance(name, x509.DirectoryName):
        return f"DirName:{name.value.rfc4514_string()}"
    if isinstance(name, x509.RegisteredID):
        return f"RID:{name.value.dotted_string}"
    if isinstance(name, x509.OtherName):
        return f"othername:{name.type_id.dotted_string}"
    return f"{_SAN_PREFIXES.get(type(name), 'unknown')}:{name.value}"


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    name: object = getattr(oid, "_name", None)  # cryptography's readable name, when it has one
    if isinstance(name, str) and name and name != "Unknown OID":
        return name
    return oid.dotted_string
