"""Frame codec of the certwarden authz socket protocol (see PROTOCOL.md); no I/O here."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from application.ports import AccessRequest, Action, Changes, ConnectRequest, Decision

PROTOCOL_VERSION = 1
MAX_FRAME = 65536  # type byte + body, the u32 length prefix excluded
MAX_DER = 16384
MAX_CLIENT_ID = 1024
MAX_PEER = 64
MAX_TOPIC = 32768
MAX_REASON = 1024
MAX_AGENT = 255
FP_LEN = 32
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
    HELLO_REPLY = 0x81
    DECISION = 0x82
    CHANGES_REPLY = 0x84


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


Request = Hello | ConnectQuery | AccessRequest | ChangesQuery


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
    else:
        raise ProtocolError(f"unknown message type {kind:#04x}")
    r.end()
    return request


def encode_hello_reply(epoch: int) -> bytes:
    return frame(MsgType.HELLO_REPLY, struct.pack(">BQ", PROTOCOL_VERSION, epoch))


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
