"""Stopping the broker runtime while a device request is still being answered."""

from __future__ import annotations

import hashlib
import threading
import uuid
from pathlib import Path

from adapters.broker_runtime import BrokerRuntime
from application.bootstrap import Certwarden
from application.ports import ConnectRequest, Publish
from domain.meta import Actor, ActorKind
from tests import factories as f
from tests.conftest import make_settings
from tests.integration.broker.support import wait_until

ADMIN = Actor(ActorKind.API_KEY, "key-1", "user-1", "req-1", "127.0.0.1")
POLICY = [{"topics": ["${org.uid}/manage/cert/+/cid/+"], "actions": ["PUBLISH"]}]


class RecordingReplies:
    def __init__(self) -> None:
        self.published: list[Publish] = []

    def publish(self, message: Publish) -> None:
        self.published.append(message)


def test_a_reply_still_being_prepared_is_published_before_the_runtime_detaches_it(
    cw: Certwarden, tmp_path: Path
) -> None:
    org = cw.registry.create_organization(f"o-{uuid.uuid4().hex[:6]}", ADMIN).uid
    cw.registry.create_policy(org, "dev", "Devices", POLICY, ADMIN)
    root = f.make_root(f.unique_cn("root"))
    leaf = f.make_leaf(root, f.unique_cn("dev-v1"))
    cw.registry.import_certificates(org, leaf.pem + root.pem, ADMIN, policy_id="dev")
    cw.sync()
    assert cw.authorization.authorize_connect(
        ConnectRequest(leaf.der, "dev-1", "127.0.0.1")
    ).allowed
    replies = RecordingReplies()
    cw.enforcement.replies = replies
    gate = threading.Event()

    def caught_up() -> None:  # the answer waits here, as it waits for slow read models
        gate.wait(10)

    cw.enforcement.read_models_caught_up = caught_up
    answered_inline = cw.enforcement.on_message(
        hashlib.sha256(leaf.der).hexdigest(),
        "dev-1",
        "127.0.0.1",
        f"{org}/manage/cert/unregister/cid/dev-1",
        b"not json",
    )
    assert answered_inline == []  # the answer is being prepared off the broker's thread
    runtime = BrokerRuntime(cw, make_settings("memory", tmp_path))
    stopper = threading.Thread(target=runtime.stop)
    stopper.start()
    # stop() waits for the answer instead of detaching the publisher under it
    assert not wait_until(lambda: cw.enforcement.replies is None, timeout=1.0)
    gate.set()
    stopper.join(10)
    assert cw.enforcement.replies is None
    assert [m.topic for m in replies.published] == [f"{org}/cid/dev-1/reply"]
    assert b'"success": false' in replies.published[0].payload
