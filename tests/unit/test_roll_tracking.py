"""Roll tracking: requested -> registered -> seen -> retired, stuck rolls, fleet summary."""

from __future__ import annotations

import hashlib
import json
import time

from application.bootstrap import Certwarden
from application.ports import ConnectRequest
from domain.notification import NotificationKind
from tests import factories as f
from tests.operations_support import ADMIN, new_org, operation, run_now, use_fakes


def device(cw: Certwarden, org: str) -> tuple[str, f.Issued, f.Issued]:
    ca = f.make_root(f.unique_cn("device-ca"))
    leaf = f.make_leaf(ca, f.unique_cn("dev v1"))
    policy = f"p-{leaf.cert.serial_number % 100000}"
    sets = [{"topics": ["${org.uid}/manage/cert/+/cid/+"], "actions": ["PUBLISH"]}]
    cw.registry.create_policy(org, policy, "P", sets, ADMIN)
    done = cw.registry.import_certificates(
        org, leaf.pem + ca.pem, ADMIN, folder="/plant", policy_id=policy
    )
    cw.registry.update_certificate(
        org, done[0].certificate_id, {"pinned_component": "dev-1"}, ADMIN
    )
    cw.sync()
    return done[0].certificate_id, leaf, ca


def test_a_roll_moves_through_requested_registered_seen_and_retired(cw: Certwarden) -> None:
    publisher = use_fakes(cw)
    org = new_org(cw)
    cid, leaf, ca = device(cw, org)
    run_id, result = run_now(cw, org, operation(cw, org, "ROLL_ALL"))
    assert result == "completed" and len(publisher.sent) == 1
    cw.sync()
    [roll] = cw.rolls.rolls(org, run_id=run_id)
    assert (roll["certificate_id"], roll["state"]) == (cid, "requested")

    ca2 = f.make_root(f.unique_cn("device-ca v2"))
    leaf2 = f.make_leaf(ca2, f.unique_cn("dev v2"))
    fp = hashlib.sha256(leaf.der).hexdigest()
    reply = cw.enforcement.on_message(
        fp,
        "dev-1",
        "127.0.0.1",
        f"{org}/manage/cert/register/cid/dev-1",
        json.dumps(
            {
                "curCerts": [leaf.pem.decode(), ca.pem.decode()],
                "newCerts": [leaf2.pem.decode(), ca2.pem.decode()],
            }
        ).encode(),
    )
    assert json.loads(reply[0].payload)["success"]
    cw.sync()
    assert cw.rolls.rolls(org, certificate_id=cid)[0]["state"] == "registered"
    assert cw.authorization.authorize_connect(
        ConnectRequest(leaf2.der, "dev-1", "127.0.0.1")
    ).allowed
    cw.sync()
    assert cw.rolls.rolls(org, certificate_id=cid)[0]["state"] == "seen"
    cw.enforcement.on_message(
        fp,
        "dev-1",
        "127.0.0.1",
        f"{org}/manage/cert/unregister/cid/dev-1",
        json.dumps({"certs": [leaf.pem.decode(), ca.pem.decode()]}).encode(),
    )
    cw.sync()
    done = cw.rolls.rolls(org, certificate_id=cid)[0]
    assert done["state"] == "retired"
    assert (
        done["requested_at"]
        and done["registered_at"]
        and done["successor_seen_at"]
        and done["retired_at"]
    )


def test_a_roll_not_retired_in_time_raises_one_notification(cw: Certwarden) -> None:
    use_fakes(cw)
    org = new_org(cw)
    cid, _, _ = device(cw, org)
    run_now(cw, org, operation(cw, org, "ROLL_ALL"))
    cw.sync()
    assert cw.notify_stuck_rolls(time.time(), 3600) == 0
    assert cw.notify_stuck_rolls(time.time() + 7200, 3600) == 1
    assert cw.notify_stuck_rolls(time.time() + 7300, 3600) == 0  # once
    cw.sync()
    kinds = [n["kind"] for n in cw.operations.notifications(org)[0]]
    assert kinds.count(NotificationKind.ROLL_STUCK.value) == 1
    summary = cw.rolls.fleet_summary(org, "/plant", timeout_seconds=3600, now=time.time() + 7200)
    assert (summary["rolls_pending"], summary["rolls_stuck"]) == (1, 1)
    assert summary["expiring"]["90d"] == 0 and cid


def test_the_fleet_summary_counts_expiring_certificates_per_folder(cw: Certwarden) -> None:
    from datetime import UTC, datetime, timedelta

    org = new_org(cw)
    root = f.make_root(f.unique_cn("r"))
    soon = datetime.now(UTC) + timedelta(days=5)
    month = datetime.now(UTC) + timedelta(days=20)
    cw.registry.import_certificates(
        org, f.make_leaf(root, f.unique_cn(), not_after=soon).pem, ADMIN, folder="/plant/a"
    )
    cw.registry.import_certificates(
        org, f.make_leaf(root, f.unique_cn(), not_after=month).pem, ADMIN, folder="/plant/b"
    )
    cw.registry.import_certificates(
        org, f.make_leaf(root, f.unique_cn(), not_after=soon).pem, ADMIN, folder="/other"
    )
    cw.sync()
    summary = cw.rolls.fleet_summary(org, "/plant")
    assert summary["expiring"] == {"7d": 1, "30d": 2, "90d": 2}
