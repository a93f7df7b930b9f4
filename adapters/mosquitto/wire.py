"""Frame codec of the certwarden authz socket protocol (see PROTOCOL.md); no I/O here."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from application.ports import AccessRequest, Action, Changes, ConnectRequest, Decision, Publish

PROTOCOL_VERSION = 2  # the highest version spoken; HELLO negotiates
MIN_PROTOCOL_VERSION = 1
MESSAGES_VERSION = 2  # MESSAGE / PUBLISHES exist from this version on
MAX_FRAME = 65536  # type byte + body, the u32 length prefix excluded
MAX_DER = 16384
MAX_CLIENT_ID = 1024
MAX_PEER = 64
MAX_TOPIC = 32768
MAX_REASON = 1024
MAX_AGENT = 255
FP_LEN = 32
MAX_PUBLISHES = 16
MAX_CORRELATION = 0xFFFF  # MQTT 5 binary data (section 1.5.6)
# generation u64 + flags u8 + two u16 counts must leave room for the lists
MAX_LISTED_FINGERPRINTS = (MAX_FRAME - 1 - 8 - 1 - 2 - 2) // FP_LEN
FLAG_RETAIN = 0x01
FLAG_RESYNC = 0x01


class MsgType(IntEnum):
    HELLO = 0x01
    CONNECT = 0x02
    ACCESS = 0x03
    CHANGES = 0x04
    CONNECT_CHECK = 0x05
    MESSAGE = 0x06
    HELLO_REPLY = 0x81
    DECISION = 0x82
    CHANGES_REPLY = 0x84
    PUBLISHES = 0x86


_ACTION_CODES = {Action.PUBLISH: 1, Action.SUBSCRIBE: 2, Action.RECEIVE: 3}
_ACTIONS = {code: action for action, code in _ACTION_CODES.items()}


class ProtocolError(ValueError):
    """A frame broke the protocol; the connection that sent it must be closed."""


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    agent: str


@dataclass(frozen=True, slots=True)
class ConnectQuery:
    """CONNECT (a client is connecting) or CONNECT_CHECK (re-check of a live session)."""

    request: ConnectRequest
    check_only: bool


@dataclass(frozen=True, slots=True)
class ChangesQuery:
    generation: int


@dataclass(frozen=True, slots=True)
class MessageQuery:
    """MESSAGE: a request a device published (already allowed by the broker's ACL check)."""

    fingerprint: str  # lowercase hex SHA-256 of the publisher's leaf certificate
    client_id: str
    peer_ip: str
    topic: str
    payload: bytes
    response_topic: str | None = None  # MQTT 5 response topic; None when absent
    correlation_data: bytes | None = None  # None when absent or empty


Request = Hello | ConnectQuery | AccessRequest | ChangesQuery | MessageQuery


class _Reader:
    """Bounds-checked cursor; every overrun raises ProtocolError."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._pos = 0

    def raw(self, n: int) -> bytes:
        if n > len(self._body) - self._pos:
            raise ProtocolError("frame shorter than its fields")
        out = self._body[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self.raw(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.raw(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.raw(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.raw(8))[0])

    def blob(self, length_size: int) -> bytes:
        """A u16- or u32-length-prefixed byte string."""
        return self.raw(self.u16() if length_size == 2 else self.u32())

    def text(self, limit: int) -> str:
        n = self.u16()
        if n > limit:
            raise ProtocolError(f"string of {n} bytes over its limit of {limit}")
        try:
            return self.raw(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("string is not UTF-8") from exc

    def end(self) -> None:
        if self._pos != len(self._body):
            raise ProtocolError("trailing bytes after the last field")


def _text(value: str, limit: int) -> bytes:
    data = value.encode("utf-8")
    if len(data) > limit:
        raise ProtocolError(f"string of {len(data)} bytes over its limit of {limit}")
    return struct.pack(">H", len(data)) + data


def frame(kind: MsgType, body: bytes) -> bytes:
    """Prefix `kind` + `body` with its u32 big-endian length; raises ProtocolError if oversize."""
    if 1 + len(body) > MAX_FRAME:
        raise ProtocolError("frame over MAX_FRAME")
    return struct.pack(">IB", 1 + len(body), kind) + body


def decode_request(payload: bytes) -> Request:
    """Decode one request frame (type byte + body). Raises ProtocolError on any defect."""
    if not payload:
        raise ProtocolError("empty frame")
    r = _Reader(payload[1:])
    kind = payload[0]
    request: Request
    if kind == MsgType.HELLO:
        request = Hello(version=r.u8(), agent=r.text(MAX_AGENT))
    elif kind in (MsgType.CONNECT, MsgType.CONNECT_CHECK):
        der_len = r.u32()
        if der_len == 0 or der_len > MAX_DER:
            raise ProtocolError(f"certificate of {der_len} bytes")
        der = r.raw(der_len)
        request = ConnectQuery(
            ConnectRequest(der, client_id=r.text(MAX_CLIENT_ID), peer_ip=r.text(MAX_PEER)),
            check_only=kind == MsgType.CONNECT_CHECK,
        )
    elif kind == MsgType.ACCESS:
        fingerprint = r.raw(FP_LEN).hex()
        client_id, peer_ip = r.text(MAX_CLIENT_ID), r.text(MAX_PEER)
        action, flags, qos = r.u8(), r.u8(), r.u8()
        if action not in _ACTIONS or flags & ~FLAG_RETAIN or qos > 2:
            raise ProtocolError("bad action, flags or qos")
        request = AccessRequest(
            fingerprint=fingerprint,
            client_id=client_id,
            peer_ip=peer_ip,
            action=_ACTIONS[action],
            topic=r.text(MAX_TOPIC),
            retain=bool(flags & FLAG_RETAIN),
            qos=qos,
        )
    elif kind == MsgType.CHANGES:
        request = ChangesQuery(generation=r.u64())
    elif kind == MsgType.MESSAGE:
        request = MessageQuery(
            fingerprint=r.raw(FP_LEN).hex(),
            client_id=r.text(MAX_CLIENT_ID),
            peer_ip=r.text(MAX_PEER),
            topic=r.text(MAX_TOPIC),
            payload=r.blob(4),
            response_topic=r.text(MAX_TOPIC) or None,
            correlation_data=r.blob(2) or None,
        )
    else:
        raise ProtocolError(f"unknown message type {kind:#04x}")
    r.end()
    return request


def encode_hello_reply(epoch: int, version: int = PROTOCOL_VERSION) -> bytes:
    return frame(MsgType.HELLO_REPLY, struct.pack(">BQ", version, epoch))


def _clip(text: str, limit: int) -> str:
    data = text.encode("utf-8")[:limit]
    return data.decode("utf-8", errors="ignore")  # never cut a character in half


def encode_decision(decision: Decision, ttl_ms: int) -> bytes:
    """DECISION: u8 allowed | u32 ttl_ms (0 = do not cache) | str reason (clipped)."""
    body = struct.pack(">BI", 1 if decision.allowed else 0, max(0, min(ttl_ms, 0xFFFFFFFF)))
    return frame(MsgType.DECISION, body + _text(_clip(decision.reason, MAX_REASON), MAX_REASON))


def encode_changes(changes: Changes) -> bytes:
    """CHANGES_REPLY. Lists that do not fit one frame become the RESYNC flag with empty lists:
    the plugin then re-checks every live session (kicked fingerprints must fail that check)."""
    kick, recheck = sorted(changes.kick), sorted(changes.recheck)
    flags = 0
    if len(kick) + len(recheck) > MAX_LISTED_FINGERPRINTS:
        kick, recheck, flags = [], [], FLAG_RESYNC
    body = struct.pack(">QBH", changes.generation, flags, len(kick))
    body += b"".join(_fingerprint(fp) for fp in kick)
    body += struct.pack(">H", len(recheck)) + b"".join(_fingerprint(fp) for fp in recheck)
    return frame(MsgType.CHANGES_REPLY, body)


def reply_topic_ok(topic: str) -> bool:
    """A topic certwarden may publish on: a non-empty topic name of at most MAX_TOPIC bytes,
    no wildcards, not a `$` (broker) topic, and only code points Mosquitto's UTF-8 check
    accepts (MQTT 5 sections 1.5.4 and 4.7: no U+0000, surrogates, controls, non-characters)."""
    if not topic or topic.startswith("$") or "+" in topic or "#" in topic:
        return False
    for ch in topic:
        cp = ord(ch)
        if (
            cp <= 0x1F
            or 0x7F <= cp <= 0x9F
            or 0xD800 <= cp <= 0xDFFF
            or 0xFDD0 <= cp <= 0xFDEF
            or cp & 0xFFFE == 0xFFFE
        ):
            return False
    return len(topic.encode("utf-8")) <= MAX_TOPIC


def _publish_entry(publish: Publish) -> bytes:
    correlation = publish.correlation_data or b""
    if not reply_topic_ok(publish.topic):
        raise ProtocolError("reply topic is not a valid topic name")
    if publish.qos not in (0, 1, 2) or len(correlation) > MAX_CORRELATION:
        raise ProtocolError("reply qos or correlation data out of range")
    return (
        _text(publish.topic, MAX_TOPIC)
        + struct.pack(">BI", publish.qos, len(publish.payload))
        + publish.payload
        + struct.pack(">H", len(correlation))
        + correlation
    )


def encode_publishes(publishes: Sequence[Publish]) -> tuple[bytes, int]:
    """PUBLISHES frame for the replies that are valid and fit (in order, at most MAX_PUBLISHES,
    the whole frame within MAX_FRAME), and how many were left out."""
    room = MAX_FRAME - 1 - 2
    entries: list[bytes] = []
    for publish in publishes:
        if len(entries) == MAX_PUBLISHES:
            break
        try:
            entry = _publish_entry(publish)
        except ProtocolError:
            continue
        if len(entry) <= room:
            entries.append(entry)
            room -= len(entry)
    body = struct.pack(">H", len(entries)) + b"".join(entries)
    return frame(MsgType.PUBLISHES, body), len(publishes) - len(entries)


def _fingerprint(fp: str) -> bytes:
    try:
        raw = bytes.fromhex(fp)
    except ValueError as exc:
        raise ProtocolError("fingerprint is not hex") from exc
    if len(raw) != FP_LEN:
        raise ProtocolError("fingerprint is not a SHA-256")
    return raw


# ---- the plugin's side, for tests and tools that speak to the server ----


def encode_hello(version: int = PROTOCOL_VERSION, agent: str = "python") -> bytes:
    return frame(MsgType.HELLO, bytes([version]) + _text(agent, MAX_AGENT))


def encode_connect(request: ConnectRequest, check_only: bool = False) -> bytes:
    kind = MsgType.CONNECT_CHECK if check_only else MsgType.CONNECT
    body = struct.pack(">I", len(request.certificate_der)) + request.certificate_der
    body += _text(request.client_id, MAX_CLIENT_ID) + _text(request.peer_ip, MAX_PEER)
    return frame(kind, body)


def encode_access(request: AccessRequest) -> bytes:
    body = (
        _fingerprint(request.fingerprint)
        + _text(request.client_id, MAX_CLIENT_ID)
        + _text(request.peer_ip, MAX_PEER)
    )
    flags = FLAG_RETAIN if request.retain else 0
    body += bytes([_ACTION_CODES[request.action], flags, request.qos])
    return frame(MsgType.ACCESS, body + _text(request.topic, MAX_TOPIC))


def encode_changes_query(generation: int) -> bytes:
    return frame(MsgType.CHANGES, struct.pack(">Q", generation))


def encode_message(query: MessageQuery) -> bytes:
    body = (
        _fingerprint(query.fingerprint)
        + _text(query.client_id, MAX_CLIENT_ID)
        + _text(query.peer_ip, MAX_PEER)
        + _text(query.topic, MAX_TOPIC)
        + struct.pack(">I", len(query.payload))
        + query.payload
        + _text(query.response_topic or "", MAX_TOPIC)
    )
    correlation = query.correlation_data or b""
    return frame(MsgType.MESSAGE, body + struct.pack(">H", len(correlation)) + correlation)


def decode_publishes(payload: bytes) -> list[Publish]:
    """The replies in a PUBLISHES frame (type byte + body), as the plugin reads them."""
    if not payload or payload[0] != MsgType.PUBLISHES:
        raise ProtocolError("not a PUBLISHES")
    r = _Reader(payload[1:])
    count = r.u16()
    if count > MAX_PUBLISHES:
        raise ProtocolError(f"{count} replies over the limit of {MAX_PUBLISHES}")
    out = []
    for _ in range(count):
        topic, qos, body = r.text(MAX_TOPIC), r.u8(), r.blob(4)
        if qos > 2 or not topic:
            raise ProtocolError("bad reply qos or empty topic")
        out.append(Publish(topic, body, qos, r.blob(2) or None))
    r.end()
    return out


def decode_decision(payload: bytes) -> tuple[bool, int, str]:
    """(allowed, ttl_ms, reason) from a DECISION frame (type byte + body)."""
    if not payload or payload[0] != MsgType.DECISION:
        raise ProtocolError("not a DECISION")
    r = _Reader(payload[1:])
    allowed, ttl_ms, reason = r.u8(), r.u32(), r.text(MAX_REASON)
    r.end()
    if allowed > 1:
        raise ProtocolError("allowed must be 0 or 1")
    return bool(allowed), ttl_ms, reason
