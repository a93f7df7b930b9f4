"""Framing of certificate uploads: size limits, PEM/DER splitting and the private-key tripwire."""

from __future__ import annotations

import base64
import binascii
import re
from typing import NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_der_private_key

from domain.errors import BadCertificateInput

KEY_MATERIAL = "the input contains private key material; send only public certificates"
KEY_MATERIAL_REASON = "private_key_material"

# Any PEM armour naming a private key (PKCS#8, encrypted PKCS#8, PKCS#1, SEC 1, DSA, OpenSSH...)
# and PuTTY's key file header. Matched on the raw bytes before any decoding, so that no part of
# a key ever reaches a parser's error message.
_KEY_MARKER = re.compile(
    rb"-----(?:BEGIN|END) [^\r\n-]{0,40}PRIVATE KEY-----|PuTTY-User-Key-File-", re.IGNORECASE
)
# RFC 7468 §3: encapsulation boundaries. The label is printable ASCII without '-', so echoing it
# back in an error message cannot leak anything but a label.
_ARMOUR = re.compile(rb"-----(BEGIN|END) ([\x21-\x2c\x2e-\x7e][\x20-\x2c\x2e-\x7e]{0,62})-----")
_PEM_WHITESPACE = b" \t\r\n\x0b\x0c"
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_UTF8_BOM = b"\xef\xbb\xbf"
# PKCS#12 (RFC 7292 §4): PFX ::= SEQUENCE { version INTEGER (3), authSafe ContentInfo (id-data) }.
_PKCS12_VERSION = b"\x02\x01\x03\x30"
_PKCS7_DATA_OID = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x01"


def refuse(detail: str, **extra: object) -> NoReturn:
    """Raise `BadCertificateInput`; `detail` must never quote the input bytes."""
    raise BadCertificateInput(detail, **extra)


def refuse_key_material() -> NoReturn:
    """Refuse the whole request, without chaining the parser error that found the key."""
    raise BadCertificateInput(KEY_MATERIAL, reason=KEY_MATERIAL_REASON) from None


def split_bundle(data: bytes, *, max_certs: int, max_bytes: int) -> list[tuple[int, bytes]]:
    """Cut an upload into (1-based index, DER) pairs; raises `BadCertificateInput` on bad framing.

    Accepts one DER certificate or whitespace-separated PEM CERTIFICATE blocks (LF or CRLF, an
    optional UTF-8 byte order mark). The DER of each block is not parsed here.
    """
    if not data:
        refuse("the body is empty", reason="empty")
    if len(data) > max_bytes:
        refuse(f"body is over {_size_text(max_bytes)}", reason="too_large", limit=max_bytes)
    if _KEY_MARKER.search(data):
        refuse_key_material()
    if data.startswith(_UTF8_BOM):  # Windows editors prepend it to saved PEM files
        data = data[len(_UTF8_BOM) :]
    if not data.strip():
        refuse("the body holds only whitespace", reason="empty")
    # A DER certificate is a SEQUENCE (tag 0x30) with binary length and signature bytes; a text
    # body that merely starts with the digit "0" is left to the PEM path.
    if data[0] == 0x30 and not data.isascii():
        return [(1, data)]
    if _ARMOUR.search(data) is None:
        refuse(
            "the body is neither PEM nor DER: send -----BEGIN CERTIFICATE----- blocks "
            "or one binary DER certificate",
            reason="not_pem_or_der",
        )
    return list(enumerate(_split_pem(data, max_certs), start=1))


def _split_pem(data: bytes, max_certs: int) -> list[bytes]:
    ders: list[bytes] = []
    pos = 0
    armours = _ARMOUR.finditer(data)
    for begin in armours:
        _check_gap(data[pos : begin.start()], len(ders))
        index = len(ders) + 1
        label = begin.group(2).decode("ascii")
        if begin.group(1) == b"END":
            refuse(f"an END {label} line has no BEGIN line", reason="no_begin", index=index)
        _check_label(label, index)
        if index > max_certs:
            refuse(f"bundle holds more than {max_certs} certificates", reason="too_many")
        end = next(armours, None)
        if end is None or end.group(1) != b"END" or end.group(2) != begin.group(2):
            refuse(
                f"certificate {index} of the bundle: BEGIN CERTIFICATE has no matching "
                "END CERTIFICATE line",
                reason="missing_end",
                index=index,
            )
        ders.append(_decode_body(data[begin.end() : end.start()], index))
        pos = end.end()
    _check_gap(data[pos:], len(ders))
    return ders


def _check_gap(gap: bytes, count: int) -> None:
    # Only whitespace may surround the blocks: RFC 7468 §2 allows explanatory text, but here it
    # hides mistakes (pasted "Bag Attributes", half-copied blocks), so it is refused.
    if gap.strip(_PEM_WHITESPACE):
        if count == 0:
            refuse("unexpected text before certificate 1", reason="garbage", index=0)
        refuse(f"trailing garbage after certificate {count}", reason="garbage", index=count)


def _check_label(label: str, index: int) -> None:
    if label == "CERTIFICATE":
        return
    if label == "TRUSTED CERTIFICATE":
        refuse(
            f"block {index} is an OpenSSL TRUSTED CERTIFICATE, which carries trust settings; "
            "only plain CERTIFICATE blocks are accepted (convert with `openssl x509`)",
            reason="unsupported_label",
            index=index,
            label=label,
        )
    refuse(
        f"block {index} is a {label} PEM block; only CERTIFICATE blocks are accepted",
        reason="unsupported_label",
        index=index,
        label=label,
    )


def _decode_body(body: bytes, index: int) -> bytes:
    where = f"certificate {index} of the bundle"
    text = body.translate(None, _PEM_WHITESPACE)
    if not text:
        refuse(f"{where}: the PEM block is empty", reason="empty_block", index=index)
    if _BASE64.fullmatch(text) is None:  # RFC 7468 §3: only base64 text, no headers
        refuse(f"{where}: base64 is garbled", reason="bad_base64", index=index)
    if len(text) % 4:
        refuse(f"{where}: base64 is truncated", reason="truncated_base64", index=index)
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        refuse(f"{where}: base64 is garbled", reason="bad_base64", index=index)


def check_der_framing(der: bytes) -> None:
    """Refuse bytes that are not exactly one DER SEQUENCE (RFC 5280 §4.1, X.690 §10.1)."""
    header = _sequence_header(der)
    if header is None:
        refuse("the bytes are not a DER certificate", reason="not_der")
    span = header[0] + header[1]
    if span > len(der):
        refuse(
            f"the DER encoding is truncated: it declares {span} bytes, {len(der)} are present",
            reason="truncated_der",
        )
    if span < len(der):
        if looks_like_private_key(der[span:]):
            refuse_key_material()
        refuse(
            f"{len(der) - span} bytes follow the end of the certificate",
            reason="trailing_bytes",
        )


def looks_like_private_key(der: bytes) -> bool:
    """True when DER bytes hold a private key (PKCS#8, encrypted PKCS#8, traditional, PKCS#12)."""
    try:
        load_der_private_key(der, password=None)
    except TypeError:  # encrypted PKCS#8: a key all the same
        return True
    except UnsupportedAlgorithm:  # a key structure of a type this OpenSSL does not support
        return True
    except ValueError:
        header = _sequence_header(der)
        if header is None:
            return False
        content = der[header[0] : header[0] + 24]
        return content.startswith(_PKCS12_VERSION) and _PKCS7_DATA_OID in content
    return True


def _sequence_header(der: bytes) -> tuple[int, int] | None:
    """(header length, content length) of a leading DER SEQUENCE, or None."""
    if len(der) < 2 or der[0] != 0x30:
        return None
    first = der[1]
    if first < 0x80:
        return 2, first
    count = first & 0x7F
    # 0x80 is BER's indefinite length, which DER forbids (X.690 §10.1).
    if count == 0 or count > 4 or len(der) < 2 + count:
        return None
    return 2 + count, int.from_bytes(der[2 : 2 + count], "big")


def _size_text(size: int) -> str:
    if size % (1 << 20) == 0:
        return f"{size >> 20} MiB"
    if size % (1 << 10) == 0:
        return f"{size >> 10} KiB"
    return f"{size} bytes"
