"""Running operations with fake ports: what is published, skipped, reported; redelivery, crashes."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from application.bootstrap import Certwarden
from application.operation_runs import RunLimits
from domain.meta import Actor
from domain.notification import NotificationKind
from tests.operations_support import (
    ADMIN,
    FakeMailer,
    FakeServerCa,
    Killed,
    new_org,
    operation,
    run_now,
    seed,
    use_fakes,
)


def notifications(cw: Certwarden, org: str) -> list[dict]:
    cw.sync()
    return cw.operations.notifications(org)[0]


def test_roll_all_commands_each_pinned_active_certificate_and_says_why_others_were_skipped(
    cw: Certwarden,
) -> None:
    publisher = use_fakes(cw)
    org = new_org(cw)
    pinned = seed(cw, org, 3)
    unpinned = seed(cw, org, 1, pinned=False)
    inactive = seed(cw, org, 1, status="INACTIVE")
    run_id, result = run_now(cw, org, operation(cw, org, "ROLL_ALL"))
    assert result == "completed"
    topics = sorted(t for t, _, _, _ in publisher.sent)
    components = sorted(str(cw.registry.certificate(org, c).pinned_component) for c in pinned)
    assert topics == [f"{org}/manage/cert/roll/cid/{c}" for c in components]
    payload = json.loads(publisher.sent[0][1])
    assert set(payload) == {"certificate_id", "dn", "not_after", "reason", "run_id"}
    assert {q for _, _, q, _ in publisher.sent} == {1}
    outcomes = {o.certificate_id: (o.outcome, o.reason) for o in cw.outcomes.outcomes(run_id)}
    assert outcomes[unpinned[0]] == ("skipped", "no-pinned-component")
    assert outcomes[inactive[0]] == ("skipped", "inactive")
    run = cw.operations.run(org, run_id)
    assert run is not None and run["status"] == "completed"
    assert run["counts"]["published"] == 3 and run["counts"]["skipped"] == 2


def test_roll_expiring_commands_only_certificates_expiring_within_the_window(
    cw: Certwarden,
) -> None:
    publisher = use_fakes(cw)
    org = new_org(cw)
    soon = seed(cw, org, 2, days_left=10)
    seed(cw, org, 2, days_left=60)
    run_id, _ = run_now(cw, org, operation(cw, org, "ROLL_EXPIRING", window_days=30))
    published = {o.certificate_id for o in cw.outcomes.outcomes(run_id, outcome="published")}
    assert published == set(soon)
    assert len(publisher.sent) == 2
    assert json.loads(publisher.sent[0][1])["reason"] == "expiring"


def test_a_folder_without_subfolders_leaves_the_subfolders_out(cw: Certwarden) -> None:
    publisher = use_fakes(cw)
    org = new_org(cw)
    seed(cw, org, 1)
    seed(cw, org, 1, folder="/plant/line-2")
    run_now(cw, org, operation(cw, org, "ROLL_ALL", recursive=False))
    assert len(publisher.sent) == 1
    run_now(cw, org, operation(cw, org, "ROLL_ALL"))
    assert len(publisher.sent) == 3


def test_report_expiring_publishes_nothing_and_emails_the_expiring_list(cw: Certwarden) -> None:
    mailer = FakeMailer()
    publisher = use_fakes(cw, mailer)
    org = new_org(cw)
    expiring = seed(cw, org, 2, days_left=5, pinned=False)
    seed(cw, org, 3, days_left=200)
    op_id = operation(cw, org, "REPORT_EXPIRING", recipients=["ops@example.com"])
    _, result = run_now(cw, org, op_id)
    assert result == "completed" and publisher.sent == [] and publisher.opened == 0
    (email,) = mailer.sent
    assert email.to == ("ops@example.com",) and email.html is not None
    csv_text = email.attachments[0].data.decode()
    rows = csv_text.strip().splitlines()
    assert rows[0].startswith("certificate_id,")
    assert sorted(r.split(",")[0] for r in rows[1:]) == sorted(expiring)


def test_update_truststore_sends_the_server_ca_pem_to_each_component(cw: Certwarden) -> None:
    publisher = use_fakes(cw)
    org = new_org(cw)
    seed(cw, org, 2)
    run_now(cw, org, operation(cw, org, "UPDATE_TRUSTSTORE"))
    assert len(publisher.sent) == 2
    for topic, payload, qos, _ in publisher.sent:
        assert "/manage/cert/update_truststore/cid/" in topic and topic.startswith(f"{org}/")
        assert payload.decode("utf-8") == FakeServerCa.PEM and qos == 1


def test_take_action_runs_the_package_per_certificate_with_its_variables(cw: Certwarden) -> None:
    mailer = FakeMailer()
    publisher = use_fakes(cw, mailer)
    org = new_org(cw)
    (cert_id,) = seed(cw, org, 1)
    component = cw.registry.certificate(org, cert_id).pinned_component
    actions = [
        {
            "kind": "mqtt_publish",
            "topic": "[org.uid]/cmd/cid/[component.id]",
            "payload": "[cert.id] [cert.dn] [operation.name]",
            "qos": 0,
            "retain": True,
        },
        {"kind": "email", "to": ["ops@example.com"], "subject": "done [cert.id]", "body": "x"},
    ]
    package = str(cw.registry.create_action_package(org, "p", actions, ADMIN).id)
    op_id = operation(cw, org, "TAKE_ACTION", action_package_id=package, name="nightly")
    run_id, _ = run_now(cw, org, op_id)
    dn = cw.registry.certificate(org, cert_id).facts["subject"]
    assert publisher.sent == [
        (f"{org}/cmd/cid/{component}", f"{cert_id} {dn} nightly".encode(), 0, True)
    ]
    assert [m.subject for m in mailer.sent] == [f"done {cert_id}"]
    (outcome,) = cw.outcomes.outcomes(run_id)
    assert outcome.outcome == "published" and outcome.topics == (f"{org}/cmd/cid/{component}",)


def test_a_topic_escaping_the_org_namespace_fails_that_certificate_with_a_notification(
    cw: Certwarden,
) -> None:
    publisher = use_fakes(cw)
    org = new_org(cw)
    seed(cw, org, 2)
    action = {"kind": "mqtt_publish", "topic": "[cert.name]/cmd", "payload": "x"}
    package = str(cw.registry.create_action_package(org, "p", [action], ADMIN).id)
    run_id, result = run_now(cw, org, operation(cw, org, "TAKE_ACTION", action_package_id=package))
    assert result == "completed" and publisher.sent == []
    failed = cw.outcomes.outcomes(run_id, outcome="failed")
    assert len(failed) == 2
    assert all("outside the organization namespace" in o.reason for o in failed)
    (note,) = notifications(cw, org)
    assert note["kind"] == "template-error" and run_id in note["message"]


def test_a_finished_run_is_never_run_again(cw: Certwarden) -> None:
    publisher = use_fakes(cw)
    org = new_org(cw)
    seed(cw, org, 2)
    op_id = operation(cw, org, "ROLL_ALL")
    run_id, _ = run_now(cw, org, op_id)
    assert cw.executor.execute(org, op_id, run_id) == "finished"
    assert len(publisher.sent) == 2


def test_a_second_delivery_while_a_live_worker_holds_the_run_does_nothing(
    cw: Certwarden,
) -> None:
    publisher = use_fakes(cw)
    org = new_org(cw)
    seed(cw, org, 2)
    op_id = operation(cw, org, "ROLL_ALL")
    run_id = cw.registry.execute_operation(org, op_id, ADMIN)
    assert (
        cw.outcomes.acquire(run_id, org, op_id, "other-worker", cw.executor.wall(), 60) is not None
    )
    assert cw.executor.execute(org, op_id, run_id) == "leased"
    assert publisher.sent == []


def test_a_worker_killed_mid_run_is_resumed_after_its_last_committed_page(
    cw: Certwarden,
) -> None:
    publisher = use_fakes(cw)
    cw.executor.limits = RunLimits(page_size=4, ack_timeout=1.0, lease_ttl=60.0)
    org = new_org(cw)
    ids = seed(cw, org, 10)
    op_id = operation(cw, org, "ROLL_ALL")
    run_id = cw.registry.execute_operation(org, op_id, ADMIN)

    def first_page_committed() -> bool:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            checkpoint = cw.outcomes.checkpoint(run_id)
            if checkpoint is not None and checkpoint.pages >= 1:
                return True
            time.sleep(0.005)
        return False

    release = cw.outcomes.release
    cw.outcomes.release = lambda run, worker: None  # type: ignore[method-assign]  # SIGKILL: no cleanup
    publisher.crash, publisher.crash_after = Killed(), 6  # dies in the second page...
    publisher.before_crash = first_page_committed  # ...once the first page is committed
    with pytest.raises(Killed):
        cw.executor.execute(org, op_id, run_id)
    assert cw.executor.execute(org, op_id, run_id) == "leased"  # its lease is still live
    cw.outcomes.release = release  # type: ignore[method-assign]
    clock = cw.executor.wall
    cw.executor.wall = lambda: clock() + 120  # the dead worker's lease expired
    assert cw.executor.execute(org, op_id, run_id) == "completed"
    per_topic = Counter(t for t, _, _, _ in publisher.sent)
    assert len(per_topic) == 10  # never skipped
    assert sorted(per_topic.values()) == [1] * 8 + [2] * 2  # page 2 once more, no more
    assert sorted(o.certificate_id for o in cw.outcomes.outcomes(run_id)) == sorted(ids)


def test_an_unreachable_broker_fails_the_run_with_a_notification(cw: Certwarden) -> None:
    publisher = use_fakes(cw)
    publisher.open_error = "broker 127.0.0.1:1 unreachable: refused"
    org = new_org(cw)
    seed(cw, org, 1)
    run_id, result = run_now(cw, org, operation(cw, org, "ROLL_ALL"))
    assert result == "failed"
    run = cw.operations.run(org, run_id)
    assert run is not None and (run["status"], run["stage"]) == ("failed", "connect")
    (note,) = notifications(cw, org)
    assert note["kind"] == "broker-unreachable" and "unreachable" in note["message"]


def test_an_smtp_failure_of_the_report_fails_the_run_with_a_notification(cw: Certwarden) -> None:
    use_fakes(cw, FakeMailer(error="SMTP 127.0.0.1:1: connection refused"))
    org = new_org(cw)
    seed(cw, org, 1, days_left=3)
    op_id = operation(cw, org, "REPORT_EXPIRING", recipients=["ops@example.com"])
    run_id, result = run_now(cw, org, op_id)
    assert result == "failed"
    run = cw.operations.run(org, run_id)
    assert run is not None and run["stage"] == "report" and run["counts"]["reported"] == 1
    assert [n["kind"] for n in notifications(cw, org)] == ["smtp-failure"]


def test_a_worker_crash_fails_the_run_with_a_notification(cw: Certwarden) -> None:
    publisher = use_fakes(cw)
    publisher.crash, publisher.crash_after = RuntimeError("boom"), 0
    org = new_org(cw)
    seed(cw, org, 1)
    run_id, result = run_now(cw, org, operation(cw, org, "ROLL_ALL"))
    assert result == "failed"
    (note,) = notifications(cw, org)
    assert note["kind"] == "worker-crash" and "boom" in note["message"]


def test_a_notification_is_acknowledged_once(cw: Certwarden) -> None:
    org = new_org(cw)
    kind = NotificationKind.RUN_FAILED
    note_id = cw.registry.raise_notification(org, kind, "x", Actor.system("test"))
    first = cw.registry.acknowledge_notification(org, note_id, ADMIN)
    again = cw.registry.acknowledge_notification(org, note_id, ADMIN)
    assert first.acknowledged and again.version == first.version
    assert notifications(cw, org)[0]["acknowledged"] is True


def test_the_sweep_hands_open_runs_nobody_holds_to_the_worker(cw: Certwarden) -> None:
    publisher = use_fakes(cw)
    org = new_org(cw)
    seed(cw, org, 2)
    op_id = operation(cw, org, "ROLL_ALL")
    cw.registry.run_queue = _Lost()  # the enqueue after RunRequested never arrived
    run_id = cw.registry.execute_operation(org, op_id, ADMIN)
    cw.sync()
    assert cw.workers.sweep(grace_seconds=0) == 1
    cw.workers.start()
    try:
        cw.workers.drain(20)
    finally:
        cw.workers.stop()
    cw.sync()
    run = cw.operations.run(org, run_id)
    assert run is not None and run["status"] == "completed" and len(publisher.sent) == 2
    assert cw.workers.sweep(grace_seconds=0) == 0


class _Lost:
    def enqueue(self, org_uid: str, operation_id: str, run_id: str) -> None:
        return None


def test_a_subfolder_match_is_an_exact_prefix_not_a_pattern(cw: Certwarden) -> None:
    publisher = use_fakes(cw)
    org = new_org(cw, folder="/line_1")
    inside = seed(cw, org, 1, folder="/line_1/cell")
    seed(cw, org, 1, folder="/lineX1/cell")  # '_' is not a wildcard
    seed(cw, org, 1, folder="/Line_1/cell")  # case matters
    run_id, _ = run_now(cw, org, operation(cw, org, "ROLL_ALL", folder="/line_1"))
    assert [o.certificate_id for o in cw.outcomes.outcomes(run_id)] == inside
    assert len(publisher.sent) == 1


def test_a_certificate_renamed_during_a_run_is_neither_skipped_nor_repeated(
    cw: Certwarden,
) -> None:
    publisher = use_fakes(cw)
    cw.executor.limits = RunLimits(page_size=2, ack_timeout=1.0, lease_ttl=60.0)
    org = new_org(cw)
    ids = seed(cw, org, 6)
    pages, calls = cw.executor.pages, []

    class RenameAfterFirstPage:
        def list_certificates(self, org_uid: str, **kwargs: object) -> object:
            page = pages.list_certificates(org_uid, **kwargs)  # type: ignore[arg-type]
            if not calls:
                seen = {row["certificate_id"] for row in page[0]}
                later = [c for c in ids if c not in seen]
                for cert_id in later:  # every later certificate now sorts first by name
                    cw.registry.update_certificate(org, cert_id, {"name": f"AAA {cert_id}"}, ADMIN)
                cw.sync()
            calls.append(1)
            return page

    cw.executor.pages = RenameAfterFirstPage()  # type: ignore[assignment]
    run_id, result = run_now(cw, org, operation(cw, org, "ROLL_ALL"))
    assert result == "completed"
    assert sorted(o.certificate_id for o in cw.outcomes.outcomes(run_id)) == sorted(ids)
    assert len(publisher.sent) == 6 == len({t for t, _, _, _ in publisher.sent})
