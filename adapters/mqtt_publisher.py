"""PahoCommandPublisher: the CommandPublisher port over paho-mqtt (QoS 1 fan-out with a window)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from application.ports import PublishError


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """Where and as whom to publish. With TLS, cert/key are certwarden's service identity."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    protocol: str = "5"  # "5" or "3.1.1"
    client_id_prefix: str = "certwarden-ops"
    window: int = 100
    keepalive: int = 30
    connect_timeout: float = 10.0


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Small QoS 1 messages on loopback crawl under Nagle's algorithm (see findings)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class PahoCommandPublisher:
    """At most `window` QoS>0 messages in flight (paho scans its in-flight list on every
    acknowledgement: ~100 is the sweet spot measured on loopback). With MQTT 5 the window
    is capped at the broker's Receive Maximum, and a PUBACK reason code >= 0x80 (e.g. Not
    authorized) is reported as a failure instead of passing silently.

    The hot path takes no lock of its own: publish() appends paho's MessageInfo to a deque
    (thread-safe), the network thread only releases a window slot, and wait_acked() reads
    the MessageInfos paho marks as published."""

    def __init__(self, target: MqttTarget) -> None:
        self.target = target
        self._client: mqtt.Client | None = None
        self._window = threading.Semaphore(target.window)
        self._infos: deque[tuple[int, mqtt.MQTTMessageInfo]] = deque()  # (sequence, info)
        self._sequence = 0  # messages published so far
        self._connected = threading.Event()
        self._error: str | None = None
        self._closing = False

    # -- callbacks (paho network thread) ---------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            self._error = f"broker refused the connection: {rc}"
        else:
            receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
            if receive_max and receive_max < self.target.window:
                for _ in range(self.target.window - int(receive_max)):
                    self._window.acquire(blocking=False)
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if not self._closing:
            self._error = self._error or f"connection to the broker lost: {rc}"
        self._connected.set()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any
    ) -> None:
        if getattr(rc, "is_failure", False) and self._error is None:
            self._error = f"broker refused publish (message id {mid}): {rc}"
        self._window.release()

    # -- port -----------------------------------------------------------------
    def open(self) -> None:
        t = self.target
        protocol = mqtt.MQTTv5 if t.protocol == "5" else mqtt.MQTTv311
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{t.client_id_prefix}-{uuid.uuid4().hex[:12]}",
            protocol=protocol,
            clean_session=True if protocol == mqtt.MQTTv311 else None,
        )
        client.max_inflight_messages_set(t.window)
        client.max_queued_messages_set(0)
        if t.tls:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=t.ca_file)
            if t.cert_file:
                context.load_cert_chain(t.cert_file, t.key_file)
            client.tls_set_context(context)
        client.on_socket_open = _nodelay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        try:
            client.connect(t.host, t.port, t.keepalive)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise PublishError(f"broker {t.host}:{t.port} unreachable: {exc}") from None
        client.loop_start()
        self._client = client
        if not self._connected.wait(t.connect_timeout):
            self.close()
            raise PublishError(f"broker {t.host}:{t.port} did not answer CONNECT in time")
        if self._error:
            error = self._error
            self.close()
            raise PublishError(error)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        client = self._client
        if client is None:
            raise PublishError("publisher is not open")
        deadline = time.monotonic() + self.target.connect_timeout * 3
        while not self._window.acquire(timeout=0.2):
            if self._error:
                raise PublishError(self._error)
            if time.monotonic() > deadline:
                raise PublishError("no acknowledgement from the broker: in-flight window full")
        if self._error:
            self._window.release()
            raise PublishError(self._error)
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._window.release()
            raise PublishError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        self._sequence += 1
        self._infos.append((self._sequence, info))

    def mark(self) -> int:
        return self._sequence

    @property
    def error(self) -> str | None:
        """Why the connection or a publish failed, once it has."""
        return self._error

    def acknowledged(self) -> int:
        """The highest mark every message up to which is acknowledged, without waiting.
        Call from the publishing thread (it forgets the acknowledged messages)."""
        infos = self._infos
        while infos and infos[0][1].is_published():
            infos.popleft()
        return infos[0][0] - 1 if infos else self._sequence

    def wait_acked(self, mark: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._infos and self._infos[0][0] <= mark:
            info = self._infos[0][1]
            while not info.is_published():
                remaining = deadline - time.monotonic()
                if self._error is None and remaining <= 0:
                    missing = sum(1 for q, i in self._infos if q <= mark and not i.is_published())
                    self._error = f"{missing} message(s) unacknowledged after {timeout:g}s"
                if self._error:
                    raise PublishError(self._error)
                try:
                    info.wait_for_publish(min(remaining, 0.2))
                except (ValueError, RuntimeError) as exc:
                    raise PublishError(str(exc)) from None
            self._infos.popleft()
        if self._error:
            raise PublishError(self._error)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        self._closing = True
        try:
            client.disconnect()
        finally:
            client.loop_stop()


class FileServerCertificate:
    """ServerCertificate port: the server CA PEM the broker runtime writes under data_dir."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def pem(self) -> str:
        return self.path.read_text(encoding="utf-8")
