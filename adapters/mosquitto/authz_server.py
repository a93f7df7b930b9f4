"""Unix-socket server that answers the Mosquitto plugin with the Authorizer port's decisions."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import stat
import struct
import threading
from pathlib import Path
from types import TracebackType

from application.ports import AccessRequest, Authorizer, Decision, Publish

from .wire import (
    MAX_FRAME,
    MESSAGES_VERSION,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    ChangesQuery,
    ConnectQuery,
    Hello,
    MessageQuery,
    ProtocolError,
    Request,
    decode_request,
    encode_changes,
    encode_decision,
    encode_hello_reply,
    encode_publishes,
)

log = logging.getLogger(__name__)

_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


class AuthzSocketServer:
    """Serve `authorizer` on `socket_path` (protocol in adapters/mosquitto/PROTOCOL.md).

    Invariants:
    - the socket file is created with `mode` (0600) before anyone can connect to it (bound
      under a temporary name, chmod-ed, then renamed into place) and is removed on stop();
    - one thread per connection, requests answered in order; the authorizer may be called
      from several connection threads at once (one per broker), so it must be thread-safe;
    - a malformed, oversize or out-of-order frame closes that connection (the plugin then
      denies and reconnects); certificate bytes are never logged;
    - an authorizer that raises on a decision yields a deny (reason "authz-error"); one that
      raises in changes_since closes the connection, which makes the plugin flush its caches;
    - CONNECT_CHECK (re-check of a live session) calls `authorizer.recheck_connect(request)`
      when the authorizer has it (meant to be side-effect free), else authorize_connect;
    - HELLO settles the version per connection (the plugin's, capped at ours); MESSAGE (a
      device request, version 2) calls `authorizer.on_message(...)` when the authorizer has
      it and answers PUBLISHES with the replies that are valid topic names and fit one frame;
      an authorizer that raises, or has no on_message, answers no replies.

    Errors: start() raises FileExistsError when another server answers on socket_path and
    ValueError when the path is too long for a unix socket.
    """

    def __init__(
        self,
        authorizer: Authorizer,
        socket_path: Path,
        *,
        cache_ttl_ms: int = 60_000,
        max_connections: int = 16,
        mode: int = 0o600,
    ) -> None:
        self.authorizer = authorizer
        self.socket_path = Path(socket_path)
        self.cache_ttl_ms = cache_ttl_ms
        self.max_connections = max_connections
        self.mode = mode
        self.epoch = 0
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # ---- lifecycle ----

    def start(self) -> None:
        """Bind, listen and serve in background threads; a new epoch per start."""
        path = self.socket_path
        if len(os.fsencode(path)) > _SUN_PATH_MAX - 24:  # room for the temporary name
            raise ValueError(f"socket path too long for AF_UNIX: {path}")
        self._remove_stale(path)
        self.epoch = secrets.randbits(63) | 1
        self._stopping.clear()
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(os.fspath(tmp))
            os.chmod(tmp, self.mode)
            listener.listen(self.max_connections)
            os.replace(tmp, path)
        except BaseException:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name="authz-accept", daemon=True
        )
        self._accept_thread.start()
        log.info("authz socket listening on %s", path)

    def stop(self) -> None:
        """Stop accepting, close every connection, remove the socket file. Idempotent."""
        self._stopping.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        with self._lock:
            conns = list(self._conns.items())
        for conn, _ in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _, thread in conns:
            thread.join(timeout=5)
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
            self._accept_thread = None

    def __enter__(self) -> AuthzSocketServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _remove_stale(path: Path) -> None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(os.fspath(path))
        except OSError:
            path.unlink()  # nobody listens: a leftover of a crashed server
            return
        finally:
            probe.close()
        raise FileExistsError(f"another server answers on {path}")

    # ---- serving ----

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                break
            with self._lock:
                if len(self._conns) >= self.max_connections or self._stopping.is_set():
                    conn.close()
                    continue
                thread = threading.Thread(
                    target=self._serve, args=(conn,), name="authz-conn", daemon=True
                )
                self._conns[conn] = thread
                thread.start()  # under the lock: stop() only ever joins started threads

    def _serve(self, conn: socket.socket) -> None:
        try:
            version = 0  # none before HELLO
            while True:
                payload = _read_frame(conn)
                if payload is None:
                    return
                request = decode_request(payload)
                if isinstance(request, Hello):
                    if version:
                        raise ProtocolError("HELLO sent twice")
                    if request.version < MIN_PROTOCOL_VERSION:
                        raise ProtocolError(f"unsupported protocol version {request.version}")
                    version = min(request.version, PROTOCOL_VERSION)  # a newer plugin falls back
                    conn.sendall(encode_hello_reply(self.epoch, version))
                    continue
                if not version:
                    raise ProtocolError("the first frame must be HELLO")
                if isinstance(request, MessageQuery) and version < MESSAGES_VERSION:
                    raise ProtocolError(f"MESSAGE on a version {version} connection")
                conn.sendall(self._answer(request))
        except ProtocolError as exc:
            log.warning("closing authz connection: %s", exc)
        except OSError as exc:
            if not self._stopping.is_set():
                log.info("authz connection lost: %s", exc)
        except Exception:
            log.exception("authz connection failed; closing it")
        finally:
            conn.close()
            with self._lock:
                self._conns.pop(conn, None)

    def _answer(self, request: Request) -> bytes:
        if isinstance(request, Hello):
            raise ProtocolError("HELLO is answered by _serve")
        if isinstance(request, MessageQuery):
            frame, dropped = encode_publishes(self._message(request))
            if dropped:
                log.warning(
                    "%d replies to %r dropped: invalid topic or over the frame limit",
                    dropped,
                    request.topic,
                )
            return frame
        if isinstance(request, ChangesQuery):
            return encode_changes(self.authorizer.changes_since(request.generation))
        if isinstance(request, ConnectQuery):
            return encode_decision(self._connect(request), ttl_ms=0)
        return encode_decision(self._access(request), ttl_ms=self.cache_ttl_ms)

    def _connect(self, query: ConnectQuery) -> Decision:
        # A re-check of a live session should not record a first connect or a denial twice:
        # an authorizer offering `recheck_connect` (side-effect free) gets those.
        recheck = getattr(self.authorizer, "recheck_connect", None)
        ask = recheck if query.check_only and callable(recheck) else None
        try:
            if ask is not None:
                decision = ask(query.request)
                if not isinstance(decision, Decision):
                    raise TypeError("recheck_connect must return a Decision")
                return decision
            return self.authorizer.authorize_connect(query.request)
        except Exception:
            log.exception("authorize_connect raised for client id %r", query.request.client_id)
            return Decision(allowed=False, reason="authz-error")

    def _message(self, query: MessageQuery) -> list[Publish]:
        on_message = getattr(self.authorizer, "on_message", None)
        if not callable(on_message):
            return []
        try:
            replies = on_message(
                query.fingerprint,
                query.client_id,
                query.peer_ip,
                query.topic,
                query.payload,
                query.response_topic,
                query.correlation_data,
            )
            if not isinstance(replies, list) or not all(isinstance(p, Publish) for p in replies):
                raise TypeError("on_message must return a list of Publish")
            return replies
        except Exception:
            log.exception("on_message raised for %r", query.topic)
            return []

    def _access(self, request: AccessRequest) -> Decision:
        try:
            return self.authorizer.authorize(request)
        except Exception:
            log.exception("authorize raised for %s %r", request.action, request.topic)
            return Decision(allowed=False, reason="authz-error")


def _read_exact(conn: socket.socket, n: int) -> bytes | None:
    chunks, remaining = [], n
    while remaining:
        chunk = conn.recv(min(remaining, 65536))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_frame(conn: socket.socket) -> bytes | None:
    """One frame's type byte + body; None on a clean EOF between frames."""
    header = _read_exact(conn, 4)
    if header is None:
        return None
    (length,) = struct.unpack(">I", header)
    if not 1 <= length <= MAX_FRAME:
        raise ProtocolError(f"frame length {length} outside 1..{MAX_FRAME}")
    payload = _read_exact(conn, length)
    if payload is None:
        raise ProtocolError("connection closed inside a frame")
    return payload
