"""Replies to device requests, published with certwarden's own MQTT identity (paho)."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from application.ports import Publish

log = logging.getLogger(__name__)


class PahoReplyPublisher:
    """One persistent MQTT 5 session over TLS with the service client certificate.

    Connects lazily, reconnects on its own (paho), and never raises into the caller: a reply
    that cannot be sent is logged; the device times out and retries its request."""

    def __init__(self, host: str, port: int, ca: Path, cert: Path, key: Path) -> None:
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"certwarden-replies-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        self._client.tls_set_context(context)
        self._client.on_socket_open = _nodelay
        self._client.on_connect = self._on_connect
        self._connected = threading.Event()
        self._host, self._port = host, port
        self._started = False
        self._lock = threading.Lock()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("reply publisher refused by the broker: %s", reason)
        else:
            self._connected.set()

    def _ensure(self, timeout: float = 5.0) -> bool:
        with self._lock:
            if not self._started:
                self._client.connect_async(self._host, self._port, keepalive=30)
                self._client.loop_start()
                self._started = True
        return self._connected.wait(timeout)

    def publish(self, message: Publish) -> None:
        if not self._ensure():
            log.error("reply to %s dropped: broker not reachable", message.topic)
            return
        props: Any = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if message.correlation_data:
            props.CorrelationData = message.correlation_data
        self._client.publish(message.topic, message.payload, qos=message.qos, properties=props)

    def close(self) -> None:
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()


def _nodelay(_c: Any, _u: Any, sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
