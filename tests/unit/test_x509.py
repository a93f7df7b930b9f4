"""Unit tests of domain.x509: what certificate input is accepted, refused and learnt."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from domain.errors import BadCertificateInput
from domain.x509 import (
    CertificateFacts,
    facts_from_der,
    fingerprint_of_der,
    is_issued_by,
    normalise_dn,
    parse_bundle,
)
from tests.factories import (
    Issued,
    make_chain,
    make_intermediate,
    make_leaf,
    make_root,
    make_self_signed_leaf,
    unique_cn,
)

KEY_MESSAGE = "the input contains private key material; send only public certificates"


# --- helpers -------------------------------------------------------------------------------


def refusal(data: bytes, **kwargs: int) -> BadCertificateInput:
    with pytest.raises(BadCertificateInput) as caught:
        parse_bundle(data, **kwargs)
    return caught.value


def only(data: bytes) -> CertificateFacts:
    [facts] = parse_bundle(data)
    return facts


def pem_block(der: bytes, label: str = "CERTIFICATE") -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"\n".join(
        [f"-----BEGIN {label}-----".encode(), *lines, f"-----END {label}-----".encode()]
    )


def name(*pairs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


def build(
    subject: x509.Name,
    key: CertificateIssuerPrivateKeyTypes,
    *,
    issuer: x509.Name | None = None,
    signer: CertificateIssuerPrivateKeyTypes | None = None,
    extensions: list[x509.ExtensionType] | None = None,
    hash_algorithm: hashes.SHA256 | hashes.SHA384 | None = None,
    rsa_padding: padding.PSS | padding.PKCS1v15 | None = None,
) -> x509.Certificate:
    """A certificate with exactly the given extensions (the factories always add theirs)."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
    )
    for extension in extensions or []:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signer or key, hash_algorithm, rsa_padding=rsa_padding)


def der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def cert_sign_usage() -> x509.KeyUsage:
    return x509.KeyUsage(False, False, False, False, False, True, True, False, False)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --- accepted input and the facts learnt -----------------------------------------------------


def test_a_single_pem_certificate_is_parsed_into_facts() -> None:
    root = make_root(unique_cn("root"))
    facts = only(root.pem)
    assert facts.pem == root.pem.decode()
    assert facts.serial == format(root.cert.serial_number, "x")
    assert facts.subject == root.cert.subject.rfc4514_string()
    assert facts.issuer == facts.subject


def test_the_fingerprint_is_the_sha256_of_the_der() -> None:
    leaf = make_chain()[2]
    facts = only(leaf.pem)
    assert facts.fingerprint == hashlib.sha256(leaf.der).hexdigest()
    assert facts.fingerprint == fingerprint_of_der(leaf.der)


def test_the_subject_dn_reads_cn_then_organisations_and_gives_the_common_name() -> None:
    cn = unique_cn()
    root = make_root()
    facts = only(make_leaf(root, cn, org="Acme Devices").pem)
    assert facts.subject == f"CN={cn},O=Acme Devices,O=Certwarden Test"
    assert facts.common_name == cn
    assert facts.issuer == "CN=Test Root,O=Certwarden Test"


def test_a_certificate_without_a_common_name_has_none() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(
        name((NameOID.ORGANIZATION_NAME, "No CN Inc")), key, hash_algorithm=hashes.SHA256()
    )
    assert facts_from_der(der_of(cert)).common_name is None


def test_ski_and_aki_link_a_leaf_to_its_issuer_in_lowercase_hex() -> None:
    _, intermediate, leaf = make_chain()
    issuer_facts, leaf_facts = only(intermediate.pem), only(leaf.pem)
    ski = intermediate.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert issuer_facts.ski == ski.value.digest.hex()
    assert leaf_facts.aki == issuer_facts.ski
    assert leaf_facts.aki is not None and leaf_facts.aki == leaf_facts.aki.lower()


def test_a_certificate_without_key_identifiers_has_none() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(name((NameOID.COMMON_NAME, "bare")), key, hash_algorithm=hashes.SHA256())
    facts = facts_from_der(der_of(cert))
    assert (facts.ski, facts.aki) == (None, None)


def test_validity_is_given_as_aware_utc_datetimes() -> None:
    not_before = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    not_after = datetime(2031, 6, 7, 8, 9, 10, tzinfo=UTC)
    facts = only(make_root(not_before=not_before, not_after=not_after).pem)
    assert facts.not_before == not_before
    assert facts.not_after == not_after
    assert facts.not_before.utcoffset() == timedelta(0)
    assert facts.not_after.utcoffset() == timedelta(0)


def test_an_ec_p256_key_is_described_with_its_curve() -> None:
    facts = only(make_self_signed_leaf().pem)
    assert (facts.key_type, facts.key_size, facts.key_curve) == ("EC", 256, "secp256r1")
    assert facts.signature_algorithm == "ecdsa-with-SHA256"


def test_an_rsa_key_is_described_by_its_size(rsa_key: rsa.RSAPrivateKey) -> None:
    cert = build(name((NameOID.COMMON_NAME, "rsa")), rsa_key, hash_algorithm=hashes.SHA256())
    facts = facts_from_der(der_of(cert))
    assert (facts.key_type, facts.key_size, facts.key_curve) == ("RSA", 2048, None)
    assert facts.signature_algorithm == "sha256WithRSAEncryption"
    assert facts.self_signed


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (ed25519.Ed25519PrivateKey.generate(), ("Ed25519", 256, None)),
        (ed448.Ed448PrivateKey.generate(), ("Ed448", 456, None)),
        (ec.generate_private_key(ec.SECP384R1()), ("EC", 384, "secp384r1")),
    ],
    ids=["ed25519", "ed448", "p384"],
)
def test_other_key_types_are_described(
    key: CertificateIssuerPrivateKeyTypes, expected: tuple[str, int, str | None]
) -> None:
    digest = (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA384()
    )
    facts = facts_from_der(
        der_of(build(name((NameOID.COMMON_NAME, "k")), key, hash_algorithm=digest))
    )
    assert (facts.key_type, facts.key_size, facts.key_curve) == expected
    assert facts.self_signed


def test_sans_are_listed_with_type_prefixes_in_order() -> None:
    sans = [
        "DNS:device.example",
        "IP:192.0.2.7",
        "IP:2001:db8::1",
        "URI:urn:dev:1",
        "email:a@b.example",
    ]
    facts = only(make_leaf(make_root(), sans=sans).pem)
    assert facts.sans == (
        "DNS:device.example",
        "IP:192.0.2.7",
        "IP:2001:db8::1",
        "URI:urn:dev:1",
        "email:a@b.example",
    )


def test_a_certificate_without_sans_has_an_empty_tuple() -> None:
    assert only(make_root().pem).sans == ()


def test_a_pem_bundle_keeps_the_order_of_its_certificates() -> None:
    root, intermediate, leaf = make_chain()
    facts = parse_bundle(leaf.pem + intermediate.pem + root.pem)
    assert [f.fingerprint for f in facts] == [
        fingerprint_of_der(i.der) for i in (leaf, intermediate, root)
    ]


def test_whitespace_around_and_between_pem_blocks_is_accepted() -> None:
    root, intermediate, _ = make_chain()
    data = b"\n \t\n" + root.pem + b"\n\n   \n" + intermediate.pem.rstrip() + b"  \n\n"
    assert len(parse_bundle(data)) == 2


def test_a_crlf_pem_bundle_is_parsed_and_its_pem_made_canonical() -> None:
    root, intermediate, _ = make_chain()
    data = (root.pem + intermediate.pem).replace(b"\n", b"\r\n")
    facts = parse_bundle(data)
    assert [f.pem for f in facts] == [root.pem.decode(), intermediate.pem.decode()]


def test_a_pem_block_with_long_base64_lines_is_accepted() -> None:
    root = make_root()
    one_line = (
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.b64encode(root.der)
        + b"\n-----END CERTIFICATE-----\n"
    )
    assert only(one_line).fingerprint == fingerprint_of_der(root.der)


def test_a_der_certificate_is_parsed() -> None:
    leaf = make_chain()[2]
    facts = only(leaf.der)
    assert facts.fingerprint == fingerprint_of_der(leaf.der)
    assert facts.pem == leaf.pem.decode()


def test_a_utf8_byte_order_mark_before_the_pem_is_ignored() -> None:
    root = make_root()
    assert only(b"\xef\xbb\xbf" + root.pem).fingerprint == fingerprint_of_der(root.der)


def test_duplicate_certificates_in_a_bundle_are_kept_once_in_order() -> None:
    root, intermediate, leaf = make_chain()
    facts = parse_bundle(leaf.pem + root.pem + leaf.pem + intermediate.pem + root.pem)
    assert [f.fingerprint for f in facts] == [
        fingerprint_of_der(i.der) for i in (leaf, root, intermediate)
    ]


def test_a_bundle_of_exactly_the_certificate_limit_is_accepted() -> None:
    root, intermediate, leaf = make_chain()
    assert len(parse_bundle(root.pem + intermediate.pem + leaf.pem, max_certs=3)) == 3


# --- refused input ---------------------------------------------------------------------------


def test_an_empty_body_is_refused() -> None:
    error = refusal(b"")
    assert error.detail == "the body is empty"
    assert error.extra["reason"] == "empty"


def test_a_whitespace_only_body_is_refused() -> None:
    assert refusal(b" \r\n\t\n").extra["reason"] == "empty"


def test_a_body_over_one_mib_is_refused() -> None:
    error = refusal(make_root().pem + b"\n" * (1 << 20))
    assert error.detail == "body is over 1 MiB"
    assert error.extra == {"reason": "too_large", "limit": 1 << 20}


def test_a_body_over_a_smaller_byte_limit_names_that_limit() -> None:
    assert refusal(make_root().pem, max_bytes=100).detail == "body is over 100 bytes"


def test_a_bundle_of_more_than_100_certificates_is_refused() -> None:
    error = refusal(make_root().pem * 101)
    assert error.detail == "bundle holds more than 100 certificates"
    assert error.extra["reason"] == "too_many"


def test_a_bundle_over_a_smaller_certificate_limit_names_that_limit() -> None:
    root, intermediate, leaf = make_chain()
    error = refusal(root.pem + intermediate.pem + leaf.pem, max_certs=2)
    assert error.detail == "bundle holds more than 2 certificates"


@pytest.mark.parametrize(
    "data",
    [b"hello, this is not a certificate", b"0 starts like DER but is text", b"\x01\x02\xff\xfe"],
    ids=["text", "text-starting-with-0", "binary"],
)
def test_a_body_that_is_neither_pem_nor_der_is_refused(data: bytes) -> None:
    error = refusal(data)
    assert error.detail.startswith("the body is neither PEM nor DER")
    assert error.extra == {"reason": "not_pem_or_der"}


def test_garbled_base64_in_a_pem_block_is_refused_naming_the_certificate() -> None:
    root, intermediate, _ = make_chain()
    lines = intermediate.pem.split(b"\n")
    lines[3] = lines[3][:10] + b"!*?" + lines[3][13:]
    error = refusal(root.pem + b"\n".join(lines))
    assert error.detail == "certificate 2 of the bundle: base64 is garbled"
    assert error.extra == {"reason": "bad_base64", "index": 2}


def test_misplaced_base64_padding_is_refused_as_garbled() -> None:
    root = make_root()
    lines = root.pem.split(b"\n")
    lines[2] = b"====" + lines[2][4:]
    assert refusal(b"\n".join(lines)).extra["reason"] == "bad_base64"


def test_truncated_base64_in_a_pem_block_is_refused_naming_the_certificate() -> None:
    root, intermediate, leaf = make_chain()
    lines = leaf.pem.split(b"\n")
    lines[-3] = lines[-3][:-3]
    error = refusal(root.pem + intermediate.pem + b"\n".join(lines))
    assert error.detail == "certificate 3 of the bundle: base64 is truncated"
    assert error.extra == {"reason": "truncated_base64", "index": 3}


def test_a_pem_block_cut_at_a_line_boundary_is_refused_as_truncated_der() -> None:
    root = make_root()
    lines = root.pem.split(b"\n")
    cut = b"\n".join([*lines[:3], lines[-2]])
    error = refusal(cut)
    assert error.detail.startswith("certificate 1 of the bundle: the DER encoding is truncated")
    assert error.extra["reason"] == "truncated_der"
    assert error.extra["index"] == 1


def test_an_empty_pem_block_is_refused() -> None:
    error = refusal(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    assert error.detail == "certificate 1 of the bundle: the PEM block is empty"


def test_a_begin_line_without_an_end_line_is_refused() -> None:
    root, intermediate, _ = make_chain()
    error = refusal(root.pem + intermediate.pem.replace(b"-----END CERTIFICATE-----", b""))
    assert error.detail == (
        "certificate 2 of the bundle: BEGIN CERTIFICATE has no matching END CERTIFICATE line"
    )
    assert error.extra == {"reason": "missing_end", "index": 2}


def test_two_begin_lines_in_a_row_are_refused() -> None:
    root, intermediate, _ = make_chain()
    first = root.pem.replace(b"-----END CERTIFICATE-----\n", b"")
    assert refusal(first + intermediate.pem).extra == {"reason": "missing_end", "index": 1}


def test_an_end_line_without_a_begin_line_is_refused() -> None:
    root = make_root()
    error = refusal(root.pem + b"-----END CERTIFICATE-----\n")
    assert error.detail == "an END CERTIFICATE line has no BEGIN line"


def test_text_before_the_first_certificate_is_refused() -> None:
    error = refusal(b"my device cert:\n" + make_root().pem)
    assert error.detail == "unexpected text before certificate 1"
    assert error.extra == {"reason": "garbage", "index": 0}


def test_text_between_certificates_is_refused_as_trailing_garbage() -> None:
    root, intermediate, leaf = make_chain()
    error = refusal(leaf.pem + intermediate.pem + b"subject=CN=root\n" + root.pem)
    assert error.detail == "trailing garbage after certificate 2"
    assert error.extra == {"reason": "garbage", "index": 2}


def test_text_after_the_last_certificate_is_refused_as_trailing_garbage() -> None:
    root, intermediate, _ = make_chain()
    error = refusal(root.pem + intermediate.pem + b"-----\n")
    assert error.detail == "trailing garbage after certificate 2"


def test_bag_attributes_lines_outside_the_blocks_are_refused() -> None:
    bag = b"Bag Attributes\n    localKeyID: 01 02 03\nsubject=CN = device\nissuer=CN = root\n"
    error = refusal(bag + make_root().pem)
    assert error.extra["reason"] == "garbage"


def test_a_der_certificate_with_trailing_bytes_is_refused() -> None:
    error = refusal(make_root().der + b"\x00\x00junk")
    assert error.detail == "certificate 1 of the bundle: 6 bytes follow the end of the certificate"
    assert error.extra == {"reason": "trailing_bytes", "index": 1}


def test_a_truncated_der_certificate_is_refused() -> None:
    der = make_root().der
    error = refusal(der[:-20])
    assert error.detail == (
        f"certificate 1 of the bundle: the DER encoding is truncated: "
        f"it declares {len(der)} bytes, {len(der) - 20} are present"
    )


def test_a_trusted_certificate_block_is_refused_with_a_clear_message() -> None:
    error = refusal(pem_block(make_root().der, "TRUSTED CERTIFICATE"))
    assert "TRUSTED CERTIFICATE" in error.detail
    assert "only plain CERTIFICATE blocks are accepted" in error.detail
    assert error.extra == {
        "reason": "unsupported_label",
        "index": 1,
        "label": "TRUSTED CERTIFICATE",
    }


@pytest.mark.parametrize("label", ["PUBLIC KEY", "CERTIFICATE REQUEST", "X509 CRL", "PKCS7"])
def test_other_pem_labels_are_refused_naming_the_label(label: str) -> None:
    root = make_root()
    error = refusal(root.pem + pem_block(b"\x30\x03\x02\x01\x00", label))
    assert error.detail == f"block 2 is a {label} PEM block; only CERTIFICATE blocks are accepted"
    assert error.extra == {"reason": "unsupported_label", "index": 2, "label": label}


def test_a_certificate_cryptography_cannot_parse_is_refused_naming_its_index() -> None:
    root = make_root()
    error = refusal(root.pem + pem_block(b"\x30\x03\x02\x01\x00"))
    assert (
        error.detail == "certificate 2 of the bundle: it cannot be parsed as an X.509 certificate"
    )
    assert error.extra == {"reason": "unparseable", "index": 2}


def test_a_certificate_with_a_duplicated_extension_is_refused_naming_its_index() -> None:
    root, intermediate, _ = make_chain()
    # Rewrite the keyUsage OID (2.5.29.15) into a second subjectKeyIdentifier (2.5.29.14).
    broken = intermediate.der.replace(b"\x06\x03\x55\x1d\x0f", b"\x06\x03\x55\x1d\x0e", 1)
    assert broken != intermediate.der
    error = refusal(root.pem + pem_block(broken))
    assert (
        error.detail
        == "certificate 2 of the bundle: its extensions cannot be read (DuplicateExtension)"
    )
    assert error.extra == {"reason": "unreadable", "field": "extensions", "index": 2}


def test_a_certificate_with_an_empty_subject_dn_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(
        x509.Name([]), key, issuer=name((NameOID.COMMON_NAME, "CA")), hash_algorithm=hashes.SHA256()
    )
    error = refusal(der_of(cert))
    assert error.detail == "certificate 1 of the bundle: subject DN is empty"
    assert error.extra == {"reason": "empty_dn", "index": 1}


def test_a_certificate_with_an_empty_issuer_dn_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(
        name((NameOID.COMMON_NAME, "dev")),
        key,
        issuer=x509.Name([]),
        hash_algorithm=hashes.SHA256(),
    )
    assert refusal(der_of(cert)).detail == "certificate 1 of the bundle: issuer DN is empty"


def test_refusals_never_echo_the_input() -> None:
    secret = b"hunter2-do-not-log"
    root = make_root()
    for data in (secret, secret + b"\n" + root.pem, root.pem + secret, root.der + secret):
        error = refusal(data)
        assert "hunter2" not in error.detail
        assert "hunter2" not in repr(error.extra)


# --- private key material --------------------------------------------------------------------


def key_pems(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> dict[str, bytes]:
    pem, fmt = serialization.Encoding.PEM, serialization.PrivateFormat
    clear = serialization.NoEncryption()
    return {
        "PRIVATE KEY": ec_key.private_bytes(pem, fmt.PKCS8, clear),
        "RSA PRIVATE KEY": rsa_key.private_bytes(pem, fmt.TraditionalOpenSSL, clear),
        "EC PRIVATE KEY": ec_key.private_bytes(pem, fmt.TraditionalOpenSSL, clear),
        "ENCRYPTED PRIVATE KEY": ec_key.private_bytes(
            pem, fmt.PKCS8, serialization.BestAvailableEncryption(b"pw")
        ),
        "OPENSSH PRIVATE KEY": ec_key.private_bytes(pem, fmt.OpenSSH, clear),
    }


def assert_refused_as_key_material(data: bytes, key_bytes: bytes) -> None:
    error = refusal(data)
    assert error.detail == KEY_MESSAGE
    assert error.extra == {"reason": "private_key_material"}
    assert error.__cause__ is None and error.__suppress_context__
    shown = error.detail + repr(error.extra)
    for start in range(0, max(len(key_bytes) - 8, 1), 8):
        assert key_bytes[start : start + 8].decode("latin-1") not in shown


@pytest.mark.parametrize(
    "label",
    [
        "PRIVATE KEY",
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
    ],
)
def test_a_bundle_with_a_private_key_is_refused_whole(
    label: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    key_pem = key_pems(rsa_key, ec_key)[label]
    assert f"-----BEGIN {label}-----".encode() in key_pem
    assert_refused_as_key_material(make_root().pem + key_pem, key_pem)


def test_a_private_key_between_certificates_is_refused_whole() -> None:
    root, intermediate, leaf = make_chain()
    assert_refused_as_key_material(
        leaf.pem + leaf.key_pem + intermediate.pem + root.pem, leaf.key_pem
    )


def test_a_private_key_before_text_that_would_be_garbage_is_still_refused_as_key_material() -> None:
    leaf = make_chain()[2]
    assert_refused_as_key_material(b"Bag Attributes\n" + leaf.key_pem + leaf.pem, leaf.key_pem)


@pytest.mark.parametrize("form", ["pkcs8", "traditional", "encrypted-pkcs8"])
def test_a_der_private_key_is_refused_as_key_material(
    form: str, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    der, fmt = serialization.Encoding.DER, serialization.PrivateFormat
    key_der = {
        "pkcs8": ec_key.private_bytes(der, fmt.PKCS8, serialization.NoEncryption()),
        "traditional": ec_key.private_bytes(
            der, fmt.TraditionalOpenSSL, serialization.NoEncryption()
        ),
        "encrypted-pkcs8": ec_key.private_bytes(
            der, fmt.PKCS8, serialization.BestAvailableEncryption(b"pw")
        ),
    }[form]
    assert_refused_as_key_material(key_der, key_der)


def test_a_der_rsa_private_key_is_refused_as_key_material(rsa_key: rsa.RSAPrivateKey) -> None:
    key_der = rsa_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert_refused_as_key_material(key_der, key_der)


def test_a_private_key_inside_a_certificate_block_is_refused_as_key_material() -> None:
    root, _, leaf = make_chain()
    key_der = leaf.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert_refused_as_key_material(root.pem + pem_block(key_der), key_der)


def test_a_der_certificate_followed_by_a_der_key_is_refused_as_key_material() -> None:
    leaf = make_chain()[2]
    key_der = leaf.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert_refused_as_key_material(leaf.der + key_der, key_der)


@pytest.mark.parametrize("password", [None, b"pw"], ids=["clear", "encrypted"])
def test_a_pkcs12_archive_is_refused_as_key_material(password: bytes | None) -> None:
    leaf = make_chain()[2]
    encryption = (
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password)
    )
    p12 = pkcs12.serialize_key_and_certificates(b"dev", leaf.key, leaf.cert, None, encryption)
    assert_refused_as_key_material(p12, p12)


def test_facts_from_der_refuses_a_private_key_with_the_key_message() -> None:
    leaf = make_chain()[2]
    key_der = leaf.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(BadCertificateInput, match="private key material"):
        facts_from_der(key_der)


# --- CA detection and self-signature ---------------------------------------------------------


def test_a_root_is_detected_as_a_self_signed_ca() -> None:
    facts = only(make_root().pem)
    assert facts.ca_detected and facts.self_signed


def test_an_intermediate_is_detected_as_a_ca_that_is_not_self_signed() -> None:
    facts = only(make_chain()[1].pem)
    assert facts.ca_detected and not facts.self_signed


def test_a_leaf_is_not_a_ca() -> None:
    assert not only(make_chain()[2].pem).ca_detected


def test_a_leaf_made_with_the_ca_flag_is_a_ca() -> None:
    assert only(make_leaf(make_root(), ca=True).pem).ca_detected


def test_a_self_signed_leaf_without_key_cert_sign_is_not_a_ca() -> None:
    facts = only(make_self_signed_leaf().pem)
    assert facts.self_signed and not facts.ca_detected


def test_a_self_signed_certificate_with_key_cert_sign_but_no_basic_constraints_is_a_ca() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(
        name((NameOID.COMMON_NAME, "legacy root")),
        key,
        extensions=[cert_sign_usage()],
        hash_algorithm=hashes.SHA256(),
    )
    facts = facts_from_der(der_of(cert))
    assert facts.self_signed and facts.ca_detected


def test_key_cert_sign_without_basic_constraints_is_no_ca_unless_self_signed() -> None:
    root = make_root()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(
        name((NameOID.COMMON_NAME, "odd")),
        key,
        issuer=root.cert.subject,
        signer=root.key,
        extensions=[cert_sign_usage()],
        hash_algorithm=hashes.SHA256(),
    )
    assert not facts_from_der(der_of(cert)).ca_detected


def test_an_explicit_ca_false_wins_over_key_cert_sign() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    extensions: list[x509.ExtensionType] = [
        x509.BasicConstraints(ca=False, path_length=None),
        cert_sign_usage(),
    ]
    cert = build(
        name((NameOID.COMMON_NAME, "x")), key, extensions=extensions, hash_algorithm=hashes.SHA256()
    )
    facts = facts_from_der(der_of(cert))
    assert facts.self_signed and not facts.ca_detected


def test_a_certificate_naming_itself_as_issuer_but_signed_by_another_key_is_not_self_signed() -> (
    None
):
    subject = name((NameOID.COMMON_NAME, unique_cn()))
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    cert = build(
        subject, key, signer=other, extensions=[cert_sign_usage()], hash_algorithm=hashes.SHA256()
    )
    facts = facts_from_der(der_of(cert))
    assert facts.subject == facts.issuer
    assert not facts.self_signed and not facts.ca_detected


# --- is_issued_by ----------------------------------------------------------------------------


def test_is_issued_by_links_leaf_to_intermediate_to_root() -> None:
    root, intermediate, leaf = (only(i.pem) for i in make_chain())
    assert is_issued_by(leaf, intermediate)
    assert is_issued_by(intermediate, root)
    assert is_issued_by(root, root)
    assert not is_issued_by(leaf, root)
    assert not is_issued_by(root, intermediate)


def test_is_issued_by_is_false_for_a_same_dn_impostor_with_a_different_key() -> None:
    root, intermediate, _ = make_chain()
    impostor = make_root(
        str(root.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    )
    impostor_facts, root_facts = only(impostor.pem), only(root.pem)
    assert impostor_facts.subject_key == root_facts.subject_key
    assert not is_issued_by(only(intermediate.pem), impostor_facts)


def test_is_issued_by_checks_the_signature_when_key_identifiers_are_absent() -> None:
    ca_name = name((NameOID.COMMON_NAME, unique_cn("ca")))
    ca_key, impostor_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = facts_from_der(der_of(build(ca_name, ca_key, hash_algorithm=hashes.SHA256())))
    impostor = facts_from_der(der_of(build(ca_name, impostor_key, hash_algorithm=hashes.SHA256())))
    child_key = ec.generate_private_key(ec.SECP256R1())
    child = facts_from_der(
        der_of(
            build(
                name((NameOID.COMMON_NAME, "child")),
                child_key,
                issuer=ca_name,
                signer=ca_key,
                hash_algorithm=hashes.SHA256(),
            )
        )
    )
    assert (child.aki, impostor.ski) == (None, None)
    assert is_issued_by(child, ca)
    assert not is_issued_by(child, impostor)


def test_is_issued_by_is_false_when_the_aki_names_another_ski_even_if_the_signature_verifies() -> (
    None
):
    ca_name = name((NameOID.COMMON_NAME, unique_cn("ca")))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier(b"\x01" * 20)
    ca = facts_from_der(
        der_of(build(ca_name, ca_key, extensions=[ski], hash_algorithm=hashes.SHA256()))
    )
    aki = x509.AuthorityKeyIdentifier(b"\x02" * 20, None, None)
    child_key = ec.generate_private_key(ec.SECP256R1())
    child_cert = build(
        name((NameOID.COMMON_NAME, "child")),
        child_key,
        issuer=ca_name,
        signer=ca_key,
        extensions=[aki],
        hash_algorithm=hashes.SHA256(),
    )
    child = facts_from_der(der_of(child_cert))
    assert (child.aki, ca.ski) == ("02" * 20, "01" * 20)
    assert not is_issued_by(child, ca)


def test_is_issued_by_accepts_an_issuer_dn_differing_only_in_case_and_spacing() -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = name(
        (NameOID.ORGANIZATION_NAME, "Certwarden  Test"), (NameOID.COMMON_NAME, "Fleet ROOT")
    )
    ca = facts_from_der(der_of(build(ca_subject, ca_key, hash_algorithm=hashes.SHA256())))
    child_issuer = name(
        (NameOID.ORGANIZATION_NAME, " certwarden test "), (NameOID.COMMON_NAME, "fleet root")
    )
    child = facts_from_der(
        der_of(
            build(
                name((NameOID.COMMON_NAME, "dev")),
                ec.generate_private_key(ec.SECP256R1()),
                issuer=child_issuer,
                signer=ca_key,
                hash_algorithm=hashes.SHA256(),
            )
        )
    )
    assert child.issuer != ca.subject
    assert is_issued_by(child, ca)


@pytest.mark.parametrize("scheme", ["rsa-pkcs1v15", "rsa-pss", "ecdsa-p384", "ed25519", "ed448"])
def test_is_issued_by_verifies_each_signature_scheme(
    scheme: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    ca_key: CertificateIssuerPrivateKeyTypes
    digest: hashes.SHA256 | hashes.SHA384 | None = hashes.SHA256()
    rsa_padding: padding.PSS | padding.PKCS1v15 | None = None
    if scheme.startswith("rsa"):
        ca_key = rsa_key
        if scheme == "rsa-pss":
            rsa_padding = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    elif scheme == "ecdsa-p384":
        ca_key, digest = ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()
    else:
        ca_key = (
            ed25519.Ed25519PrivateKey.generate()
            if scheme == "ed25519"
            else ed448.Ed448PrivateKey.generate()
        )
        digest = None
    ca_name = name((NameOID.COMMON_NAME, unique_cn(scheme)))
    ca = facts_from_der(
        der_of(build(ca_name, ca_key, hash_algorithm=digest, rsa_padding=rsa_padding))
    )
    child_cert = build(
        name((NameOID.COMMON_NAME, "child")),
        ec.generate_private_key(ec.SECP256R1()),
        issuer=ca_name,
        signer=ca_key,
        hash_algorithm=digest,
        rsa_padding=rsa_padding,
    )
    other = build(ca_name, ec.generate_private_key(ec.SECP256R1()), hash_algorithm=hashes.SHA256())
    child = facts_from_der(der_of(child_cert))
    assert ca.self_signed
    assert is_issued_by(child, ca)
    assert not is_issued_by(child, facts_from_der(der_of(other)))


def test_is_issued_by_returns_false_rather_than_raising_for_unloadable_facts() -> None:
    root, intermediate, _ = (only(i.pem) for i in make_chain())
    assert not is_issued_by(intermediate, dataclasses.replace(root, pem="not a certificate"))


# --- DN normalisation ------------------------------------------------------------------------


def test_dn_normalisation_ignores_case_and_whitespace_of_values() -> None:
    first = name((NameOID.ORGANIZATION_NAME, "Acme  Devices"), (NameOID.COMMON_NAME, "Sensor 7"))
    second = name((NameOID.ORGANIZATION_NAME, " acme devices "), (NameOID.COMMON_NAME, "SENSOR\t7"))
    assert normalise_dn(first) == normalise_dn(second) == "CN=sensor 7,O=acme devices"


def test_dn_normalisation_keeps_attribute_order() -> None:
    first = name((NameOID.ORGANIZATION_NAME, "A"), (NameOID.COMMON_NAME, "b"))
    second = name((NameOID.COMMON_NAME, "b"), (NameOID.ORGANIZATION_NAME, "A"))
    assert normalise_dn(first) != normalise_dn(second)


def test_dn_normalisation_distinguishes_different_values() -> None:
    assert normalise_dn(name((NameOID.COMMON_NAME, "dev-1"))) != normalise_dn(
        name((NameOID.COMMON_NAME, "dev-2"))
    )


def test_dn_normalisation_escapes_rfc4514_special_characters() -> None:
    dn = name((NameOID.COMMON_NAME, "#Acme, Inc.+Co"))
    assert normalise_dn(dn) == r"CN=\#acme\, inc.\+co"


def test_dn_normalisation_writes_multi_valued_rdns_with_a_plus() -> None:
    rdn = x509.RelativeDistinguishedName(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Dev"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, "A1"),
        ]
    )
    dn = x509.Name(
        [x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")]), rdn]
    )
    assert normalise_dn(dn) == "CN=dev+2.5.4.5=a1,C=de"


def test_certificates_whose_dns_differ_only_in_case_share_a_subject_key() -> None:
    cn = unique_cn()
    root = make_root()
    upper, lower = only(make_leaf(root, cn.upper()).pem), only(make_leaf(root, cn).pem)
    assert upper.subject != lower.subject
    assert upper.subject_key == lower.subject_key


# --- factories and the OpenSSL command line --------------------------------------------------


def test_make_chain_gives_unique_common_names_and_a_valid_chain() -> None:
    first, second = make_chain(), make_chain()
    names = {only(i.pem).common_name for i in (*first, *second)}
    assert len(names) == 6
    root, intermediate, leaf = (only(i.pem) for i in first)
    assert is_issued_by(leaf, intermediate) and is_issued_by(intermediate, root)


def test_factory_key_pem_is_an_unencrypted_pkcs8_key_matching_the_certificate() -> None:
    leaf: Issued = make_chain()[2]
    assert leaf.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(leaf.key_pem, password=None)
    assert key.public_key() == leaf.cert.public_key()


def test_an_intermediate_made_without_key_cert_sign_is_still_flagged_ca_by_basic_constraints() -> (
    None
):
    intermediate = make_intermediate(make_root(), key_cert_sign=False)
    assert only(intermediate.pem).ca_detected


def openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


OPENSSL_EXTENSIONS = """
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = DNS:device.example
"""


@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command line is not installed"
)
def test_a_chain_made_with_the_openssl_command_line_is_parsed(tmp_path: Path) -> None:
    (tmp_path / "ext.cnf").write_text(OPENSSL_EXTENSIONS)
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req",
        "-x509",
        *newkey,
        "-keyout",
        "root.key",
        "-out",
        "root.pem",
        "-days",
        "30",
        "-subj",
        "/O=Certwarden Test/CN=OpenSSL Root",
        "-extensions",
        "ca",
        "-config",
        "ext.cnf",
        cwd=tmp_path,
    )
    for name_, issuer, section, cn in [
        ("intermediate", "root", "ca", "OpenSSL Intermediate"),
        ("leaf", "intermediate", "leaf", "openssl-device"),
    ]:
        openssl(
            "req",
            "-new",
            *newkey,
            "-keyout",
            f"{name_}.key",
            "-out",
            f"{name_}.csr",
            "-subj",
            f"/O=Certwarden Test/CN={cn}",
            "-config",
            "ext.cnf",
            cwd=tmp_path,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name_}.csr",
            "-CA",
            f"{issuer}.pem",
            "-CAkey",
            f"{issuer}.key",
            "-set_serial",
            "0x1234abcd",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
            "-extensions",
            section,
            "-out",
            f"{name_}.pem",
            cwd=tmp_path,
        )
    data = b"".join((tmp_path / f"{n}.pem").read_bytes() for n in ("leaf", "intermediate", "root"))

    leaf, intermediate, root = parse_bundle(data)

    assert [f.common_name for f in (leaf, intermediate, root)] == [
        "openssl-device",
        "OpenSSL Intermediate",
        "OpenSSL Root",
    ]
    assert (leaf.ca_detected, intermediate.ca_detected, root.ca_detected) == (False, True, True)
    assert root.self_signed and not intermediate.self_signed and not leaf.self_signed
    assert is_issued_by(leaf, intermediate) and is_issued_by(intermediate, root)
    assert not is_issued_by(leaf, root)
    assert (leaf.key_type, leaf.key_size, leaf.key_curve) == ("EC", 256, "secp256r1")
    assert leaf.sans == ("DNS:device.example",)
    assert leaf.serial == "1234abcd"
