"""Replies to device requests, published with certwarden's own MQTT identity (paho)."""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.mqtt_session import MqttSession
from application.ports import Publish

log = logging.getLogger(__name__)


class PahoReplyPublisher:
    """One MQTT 5 session over TLS with the service client certificate.

    Connects lazily and again on the next reply after the session dropped, and never raises
    into the caller: a reply that cannot be sent is logged; the device times out and retries
    its request. The session runs its own epoll I/O loop (`MqttSession`), not paho's
    select() loop, which fails once the server holds about a thousand descriptors."""

    def __init__(self, host: str, port: int, ca: Path, cert: Path, key: Path) -> None:
        self._host, self._port = host, port
        self._ca, self._cert, self._key = ca, cert, key
        self._session: MqttSession | None = None
        self._lock = threading.Lock()

    def _ensure(self, timeout: float = 5.0) -> MqttSession | None:
        with self._lock:
            session = self._session
            if session is not None and session.connected.is_set():
                return session
            if session is not None:
                session.close()
            session = MqttSession(
                self._host,
                self._port,
                self._cert,
                self._key,
                self._ca,
                f"certwarden-replies-{uuid.uuid4().hex[:8]}",
            )
            if not session.open(timeout):
                self._session = None
                return None
            self._session = session
            return session

    def publish(self, message: Publish) -> None:
        session = self._ensure()
        if session is None:
            log.error("reply to %s dropped: broker not reachable", message.topic)
            return
        props: Any = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if message.correlation_data:
            props.CorrelationData = message.correlation_data
        session.client.publish(message.topic, message.payload, qos=message.qos, properties=props)

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None
