"""One MQTT 5 session over TLS with a client certificate, served by its own I/O thread.

Used by the reference device agent and by certwarden's reply publisher instead of paho's
`loop_start()`, whose select() loop fails on descriptors numbered 1024 and above.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)


class MqttSession:
    """One MQTT 5 session over TLS with a client certificate, served by its own I/O thread.

    paho's loop_start() waits in select(), which cannot watch a descriptor numbered
    FD_SETSIZE (1024) or above: paho takes the ValueError for a lost connection, closes the
    socket without a DISCONNECT (Mosquitto logs "Protocol error") and never sees the CONNACK
    (eclipse-paho/paho.mqtt.python#819). Any process with about a thousand files open, e.g.
    one hosting many agents, hits that. So the thread drives paho's external-loop API
    (loop_read / loop_write / loop_misc) over a `selectors` selector (epoll on Linux), which
    has no such limit; publishes from other threads wake it through a socket pair.
    """

    def __init__(
        self, host: str, port: int, cert: Path, key: Path, ca: Path, client_id: str
    ) -> None:
        self.host, self.port = host, port
        self.client_id = client_id
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        self.client.tls_set_context(context)
        self.client.on_socket_open = lambda _c, _u, sock: _nodelay(sock)
        # set, so paho queues packets for this thread instead of writing from the caller's
        self.client.on_socket_register_write = lambda *_a: self._wake()
        self.connected = threading.Event()
        self.settled = threading.Event()  # CONNACK, or the connection failed/dropped
        self.refused: int | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = lambda *_a: self.settled.set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._was_connected = False
        # called from the I/O thread when a session that had its CONNACK ends without close()
        self.on_lost: Callable[[MqttSession], None] | None = None

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused = reason.value
        else:
            self._was_connected = True
            self.connected.set()
        self.settled.set()

    def _on_disconnect(self, *_a: Any) -> None:
        # TLS 1.3 reports a refused client certificate after the handshake: a disconnect
        self.connected.clear()
        self.settled.set()

    def open(self, timeout: float = 10.0) -> bool:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            log.warning("connect failed: %s", exc)
            self._release()
            return False
        self._thread = threading.Thread(
            target=self._serve, name=f"mqtt-{self.client_id}", daemon=True
        )
        self._thread.start()
        self.settled.wait(timeout)
        if not self.connected.is_set():
            self.close()
            return False
        return True

    def close(self) -> None:
        """Send DISCONNECT (when still connected) and wait for the I/O thread to end."""
        self.client.disconnect()
        self._closing.set()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending; closed: thread ended
            self._wake_w.send(b"\0")

    def _serve(self) -> None:
        client = self.client
        sock = client.socket()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._wake_r, selectors.EVENT_READ)
                if sock is not None:
                    selector.register(sock, selectors.EVENT_READ)
                while sock is not None and client.socket() is sock:
                    if self._closing.is_set() and not client.want_write():
                        break  # close(): the DISCONNECT, if any, is written
                    writing = client.want_write()
                    selector.modify(
                        sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
                    )
                    # TLS may hold decrypted bytes the socket no longer signals
                    pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
                    readable = pending > 0
                    for key, mask in selector.select(0 if pending else 1.0):
                        if key.fileobj is self._wake_r:
                            with contextlib.suppress(OSError):
                                self._wake_r.recv(4096)
                        else:
                            readable = readable or bool(mask & selectors.EVENT_READ)
                    if readable:
                        client.loop_read()
                    if client.socket() is sock and client.want_write():
                        client.loop_write()
                    if client.socket() is sock:
                        client.loop_misc()  # keepalive
        except Exception:
            log.exception("MQTT I/O thread of %s failed", self.client_id)
        finally:
            leftover = client.socket()
            if leftover is not None:  # closed while the DISCONNECT could not be written
                with contextlib.suppress(OSError):
                    leftover.close()
                self.connected.clear()
                self.settled.set()
            self._release()
            if self._was_connected and not self._closing.is_set() and self.on_lost is not None:
                self.on_lost(self)

    def _release(self) -> None:
        for end in (self._wake_r, self._wake_w):
            end.close()


def _nodelay(sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
