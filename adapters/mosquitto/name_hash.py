"""OpenSSL's X509_NAME_hash (the subject hash `openssl rehash` names capath files after),
computed in Python: x509_name_canon (crypto/x509/x_name.c) then SHA-1, first 4 bytes LE.
A registration costs no subprocess; names with unusual value types fall back to openssl."""

from __future__ import annotations

import hashlib

from cryptography import x509

_CANON_TAGS = {12, 30, 28, 19, 20, 22, 26}  # UTF8, BMP, Universal, Printable, T61, IA5, Visible
_SPACE = b" \t\n\v\f\r"


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _len(len(content)) + content


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _canon(value: bytes) -> bytes:
    value = value.strip(_SPACE)
    out = bytearray()
    i = 0
    while i < len(value):
        c = value[i]
        if c >= 0x80:
            out.append(c)
            i += 1
        elif c in _SPACE:
            out.append(0x20)
            while i < len(value) and value[i] in _SPACE:
                i += 1
        else:
            out.append(c + 32 if 65 <= c <= 90 else c)
            i += 1
    return bytes(out)


def name_hash(name: x509.Name) -> str:
    """Raises ValueError/AttributeError for value types this does not model."""
    encoded = bytearray()
    for rdn in name.rdns:
        entries = []
        for attr in rdn:
            tag = attr._type.value  # noqa: SLF001
            value = attr.value
            raw = value if isinstance(value, bytes) else value.encode("utf-8")
            if tag in _CANON_TAGS:
                body = _tlv(0x0C, _canon(raw))
            else:
                body = _tlv(tag, raw)
            entries.append(_tlv(0x30, _oid(attr.oid.dotted_string) + body))
        encoded += _tlv(0x31, b"".join(sorted(entries)))
    digest = hashlib.sha1(bytes(encoded)).digest()  # noqa: S324 - OpenSSL's choice
    return f"{int.from_bytes(digest[:4], 'little'):08x}"
