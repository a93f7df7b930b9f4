"""The broker's side of certwarden: decisions plus their side effects.

Authorization decides (pure, in memory); this service adds what follows from a decision:
pinning the host on a first connect (inside Authorization), registering a component on its
first feed publish, tracking component activity, answering `manage/cert/myorg`, and logging
denials (rate limited per certificate by the DecisionLog adapter).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from application.authorization import MYORG_PREFIX, Authorization, myorg_reply_topic
from application.ports import (
    AccessRequest,
    Action,
    Changes,
    ConnectRequest,
    Decision,
    DecisionLog,
    DecisionRecord,
    Publish,
)
from application.rolling import RollResult
from application.side_effects import Background
from domain.component import COMPONENT_ID
from domain.errors import DomainError
from domain.x509 import fingerprint_of_der

log = logging.getLogger(__name__)

MAX_KNOWN = 500_000
MAX_REQUEST = 64 * 1024


class ReplyPublisher(Protocol):
    """Publishes certwarden's replies to devices (certwarden's own MQTT identity)."""

    def publish(self, message: Publish) -> None: ...


class RollingPort(Protocol):
    """The registry's MQTT-side rolling commands (application/rolling.py)."""

    def register_over_mqtt(
        self, certificate_id: str, payload: dict[str, Any], peer_ip: str = ""
    ) -> RollResult: ...

    def unregister_over_mqtt(
        self,
        certificate_id: str,
        payload: dict[str, Any],
        peer_ip: str = "",
        dependents: Callable[[str], int] = ...,
    ) -> RollResult: ...


def feed_component(org_uid: str, topic: str) -> str | None:
    """'{org}/feed/cid/{component}[/...]' -> component id, else None."""
    levels = topic.split("/", 5)
    if len(levels) >= 4 and levels[0] == org_uid and levels[1] == "feed" and levels[2] == "cid":
        component = levels[3]
        return component if COMPONENT_ID.match(component) else None
    return None


def reply_topic(org_uid: str, component_id: str) -> str:
    return f"{org_uid}/cid/{component_id}/reply"


def is_reply_topic(org_uid: str, topic: str) -> bool:
    levels = topic.split("/")
    return len(levels) == 4 and levels[0] == org_uid and levels[1] == "cid" and levels[3] == "reply"


class Enforcement:
    """Implements the Authorizer port for broker adapters."""

    def __init__(
        self,
        authorization: Authorization,
        register_on_feed: Callable[[str, str, str], str],
        decisions: DecisionLog,
        clock: Callable[[], float] = time.time,
        rolling: RollingPort | None = None,
        dependents: Callable[[str], int] | None = None,
        effects: Background | None = None,
    ) -> None:
        self.authorization = authorization
        self.effects = effects or Background()
        # set by the broker runtime: replies to slow requests go out through certwarden's
        # own MQTT identity instead of making the broker wait for the event store
        self.replies: ReplyPublisher | None = None
        self.read_models_caught_up: Callable[[], None] = lambda: None
        self.rolling = rolling
        self._register = register_on_feed
        self._decisions = decisions
        self._clock = clock
        self._known: set[tuple[str, str]] = set()  # (certificate id, component) already handled
        self._dependents: Callable[[str], int] = dependents or (lambda _cid: 0)

    def authorize_connect(self, request: ConnectRequest) -> Decision:
        decision = self.authorization.authorize_connect(request)
        if not decision.allowed:
            fingerprint = decision.fingerprint or fingerprint_of_der(request.certificate_der)
            self._deny(decision, fingerprint, request.client_id, request.peer_ip, "CONNECT", "")
        return decision

    def recheck_connect(self, request: ConnectRequest) -> Decision:
        """Re-authorize a live session after a change: no pinning, no logging."""
        fingerprint = fingerprint_of_der(request.certificate_der)
        return self.authorization.check_connect(fingerprint, request.peer_ip, pin=False)

    def authorize(self, request: AccessRequest) -> Decision:
        decision = self.authorization.authorize(request)
        if not decision.allowed:
            self._deny(
                decision,
                request.fingerprint,
                request.client_id,
                request.peer_ip,
                str(request.action),
                request.topic,
            )
            return decision
        if request.action is Action.PUBLISH and decision.org_uid and decision.certificate_id:
            component = feed_component(decision.org_uid, request.topic)
            if component is not None:
                self._feed(decision.org_uid, decision.certificate_id, component, request.peer_ip)
        return decision

    def changes_since(self, generation: int) -> Changes:
        return self.authorization.changes_since(generation)

    def on_message(
        self,
        fingerprint: str,
        client_id: str,
        peer_ip: str,
        topic: str,
        payload: bytes,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> list[Publish]:
        """Requests devices publish to certwarden; returns the replies to publish.

        The broker forwards only messages it already authorized; the decision is taken
        again here anyway (fail closed if anything changed in between).
        """
        found = self.authorization.certificate_usable(fingerprint, peer_ip)
        if isinstance(found, Decision):
            return []
        org = found.org_uid
        if topic.startswith(MYORG_PREFIX):
            component = topic[len(MYORG_PREFIX) :]
            if not COMPONENT_ID.match(component):
                return []
            if response_topic == myorg_reply_topic(client_id):  # before the device knows its org
                return [Publish(response_topic, org.encode(), 1, correlation_data)]
            allowed = self._may_receive(fingerprint, client_id, peer_ip, response_topic)
            return [self._reply(org, component, org.encode(), allowed, correlation_data)]
        levels = topic.split("/")
        if len(levels) != 6 or levels[0] != org or levels[1:3] != ["manage", "cert"]:
            return []
        verb, component = levels[3], levels[5]
        if verb not in ("register", "unregister") or levels[4] != "cid" or self.rolling is None:
            return []
        request = AccessRequest(fingerprint, client_id, peer_ip, Action.PUBLISH, topic)
        if not self.authorization.authorize(request).allowed or not COMPONENT_ID.match(component):
            return []
        if self.replies is not None:  # slow: the event store; never on the broker's thread
            target = self._may_receive(fingerprint, client_id, peer_ip, response_topic)
            if target is not None and not is_reply_topic(org, target):
                target = None  # certwarden's identity publishes only to reply topics
            self.effects.submit(
                self._answer_async,
                found.certificate_id,
                org,
                component,
                verb,
                payload,
                peer_ip,
                target,
                correlation_data,
            )
            return []
        return [
            self._answer(
                found.certificate_id,
                org,
                component,
                verb,
                payload,
                peer_ip,
                self._may_receive(fingerprint, client_id, peer_ip, response_topic),
                correlation_data,
            )
        ]

    def _answer_async(self, *args: Any) -> None:
        reply = self._answer(*args)
        # the device reconnects with its new chain as soon as it reads the reply: the
        # decision index and the broker's trust directory must already know it
        self.read_models_caught_up()
        replies = self.replies  # the broker runtime detaches it when it stops
        if replies is None:
            log.warning("reply on %s dropped: the broker is stopping", reply.topic)
            return
        replies.publish(reply)

    def _answer(
        self,
        certificate_id: str,
        org: str,
        component: str,
        verb: str,
        payload: bytes,
        peer_ip: str,
        response_topic: str | None,
        correlation_data: bytes | None,
    ) -> Publish:
        assert self.rolling is not None
        body = self._json(payload)
        if body is None:
            result: dict[str, object] = {"success": False, "reason": "payload is not a JSON object"}
        elif verb == "register":
            result = self.rolling.register_over_mqtt(certificate_id, body, peer_ip).as_json()
        else:
            result = self.rolling.unregister_over_mqtt(
                certificate_id, body, peer_ip, self._dependents
            ).as_json()
        reply = json.dumps(result).encode()
        return self._reply(org, component, reply, response_topic, correlation_data)

    @staticmethod
    def _json(payload: bytes) -> dict[str, object] | None:
        if len(payload) > MAX_REQUEST:
            return None
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    def _may_receive(
        self, fingerprint: str, client_id: str, peer_ip: str, response_topic: str | None
    ) -> str | None:
        """A response topic is used only if the requester may receive there itself: a device
        cannot make certwarden publish where it could not (e.g. into another device's feed)."""
        if not response_topic:
            return None
        request = AccessRequest(fingerprint, client_id, peer_ip, Action.RECEIVE, response_topic)
        return response_topic if self.authorization.authorize(request).allowed else None

    @staticmethod
    def _reply(
        org: str,
        component: str,
        payload: bytes,
        response_topic: str | None,
        correlation_data: bytes | None,
    ) -> Publish:
        target = reply_topic(org, component)
        if (
            response_topic
            and response_topic.startswith(org + "/")
            and "+" not in response_topic
            and "#" not in response_topic
        ):
            target = response_topic  # never reply outside the tenant or to a filter
        return Publish(target, payload, 1, correlation_data)

    def _feed(self, org_uid: str, certificate_id: str, component: str, peer_ip: str) -> None:
        now = self._clock()
        self._decisions.seen(org_uid, component, now)
        key = (certificate_id, component)
        if key in self._known:
            return
        if len(self._known) > MAX_KNOWN:
            self._known.clear()
        self._known.add(key)
        self.effects.submit(self._register_component, certificate_id, component, peer_ip)

    def _register_component(self, certificate_id: str, component: str, peer_ip: str) -> None:
        try:
            outcome = self._register(certificate_id, component, peer_ip)
        except DomainError as exc:
            self._known.discard((certificate_id, component))  # try again on the next publish
            log.warning("component registration for %s failed: %s", component, exc.detail)
            return
        log.debug("feed publish by %s to component %s: %s", certificate_id, component, outcome)

    def _deny(
        self,
        decision: Decision,
        fingerprint: str | None,
        client_id: str,
        peer_ip: str,
        action: str,
        topic: str,
    ) -> None:
        self._decisions.record(
            DecisionRecord(
                self._clock(),
                decision.org_uid,
                decision.certificate_id,
                fingerprint,
                client_id[:256],
                peer_ip,
                action,
                topic[:1024],
                decision.reason,
                decision.detail,
            )
        )
