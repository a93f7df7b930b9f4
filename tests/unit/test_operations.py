"""Operations and action packages: settings validation, templating, per-certificate rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from application.bootstrap import Certwarden
from domain.action_package import checked_topic, render
from domain.errors import Conflict, InvalidInput, NotFound
from domain.operation import OperationType
from domain.run_plan import CertificateRow, Skip, roll_payload, skip_reason
from tests.operations_support import ADMIN, new_org, operation

MQTT = {"kind": "mqtt_publish", "topic": "[org.uid]/cmd/cid/[component.id]", "payload": "hi"}


def test_an_operation_gets_the_documented_defaults(cw: Certwarden) -> None:
    org = new_org(cw)
    op = cw.registry.operation(org, operation(cw, org, "ROLL_EXPIRING"))
    assert op.config["window_days"] == 30
    assert op.config["recursive"] is True
    assert op.config["recipients"] == []
    assert not op.schedule_enabled


def test_an_unknown_folder_is_refused_when_saving(cw: Certwarden) -> None:
    org = new_org(cw)
    with pytest.raises(InvalidInput, match="folder '/nowhere' does not exist"):
        operation(cw, org, "ROLL_ALL", folder="/nowhere")


def test_take_action_without_an_action_package_is_refused(cw: Certwarden) -> None:
    org = new_org(cw)
    with pytest.raises(InvalidInput, match="needs an action package"):
        operation(cw, org, "TAKE_ACTION")


def test_take_action_with_an_unknown_action_package_is_refused(cw: Certwarden) -> None:
    org = new_org(cw)
    with pytest.raises(InvalidInput, match="action package .* does not exist"):
        operation(cw, org, "TAKE_ACTION", action_package_id="5c9d1b8e-0000-4000-8000-000000000000")


def test_another_organizations_action_package_cannot_be_used(cw: Certwarden) -> None:
    mine, theirs = new_org(cw), new_org(cw)
    package = cw.registry.create_action_package(theirs, "p", [MQTT], ADMIN)
    with pytest.raises(InvalidInput):
        operation(cw, mine, "TAKE_ACTION", action_package_id=str(package.id))


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("61 * * * *", "invalid cron"),
        ("* * * *", "five fields"),
        ("0 0 30 2 *", "never fires"),
        ("@reboot", "unknown cron alias"),
    ],
)
def test_an_invalid_cron_expression_is_refused(cw: Certwarden, cron: str, message: str) -> None:
    org = new_org(cw)
    op_id = operation(cw, org, "ROLL_ALL")
    with pytest.raises(InvalidInput, match=message):
        cw.registry.update_operation(org, op_id, {"schedule": {"cron": cron}}, ADMIN)


def test_an_unknown_time_zone_is_refused(cw: Certwarden) -> None:
    org = new_org(cw)
    op_id = operation(cw, org, "ROLL_ALL")
    schedule = {"cron": "0 3 * * *", "timezone": "Mars/Olympus_Mons"}
    with pytest.raises(InvalidInput, match="unknown time zone"):
        cw.registry.update_operation(org, op_id, {"schedule": schedule}, ADMIN)


def test_a_schedule_can_be_saved_disabled_and_removed(cw: Certwarden) -> None:
    org = new_org(cw)
    op_id = operation(cw, org, "ROLL_ALL")
    schedule = {"cron": "0 3 * * *", "timezone": "Europe/Paris", "enabled": False}
    op = cw.registry.update_operation(org, op_id, {"schedule": schedule}, ADMIN)
    assert (op.cron, op.timezone, op.schedule_enabled) == ("0 3 * * *", "Europe/Paris", False)
    op = cw.registry.update_operation(
        org, op_id, {"schedule": {**schedule, "enabled": True}}, ADMIN
    )
    assert op.schedule_enabled
    op = cw.registry.update_operation(org, op_id, {"schedule": None}, ADMIN)
    assert not op.schedule_enabled


@pytest.mark.parametrize("recipients", [["not-an-address"], "ops@example.com", ["a@b"]])
def test_malformed_email_recipients_are_refused(cw: Certwarden, recipients: object) -> None:
    org = new_org(cw)
    with pytest.raises(InvalidInput):
        operation(cw, org, "REPORT_EXPIRING", recipients=recipients)


def test_an_action_package_with_an_unknown_variable_is_refused(cw: Certwarden) -> None:
    org = new_org(cw)
    action = {**MQTT, "payload": "[cert.serial]"}
    with pytest.raises(InvalidInput, match=r"unknown variable \[cert.serial\]"):
        cw.registry.create_action_package(org, "p", [action], ADMIN)


@pytest.mark.parametrize("topic", ["[org.uid]/cmd/+", "[org.uid]/#", "a/+/[component.id]"])
def test_a_topic_template_with_a_wildcard_is_refused(cw: Certwarden, topic: str) -> None:
    org = new_org(cw)
    with pytest.raises(InvalidInput, match="wildcards"):
        cw.registry.create_action_package(org, "p", [{**MQTT, "topic": topic}], ADMIN)


def test_an_email_action_needs_valid_addresses_and_a_subject(cw: Certwarden) -> None:
    org = new_org(cw)
    with pytest.raises(InvalidInput):
        cw.registry.create_action_package(
            org, "p", [{"kind": "email", "to": ["x"], "subject": "s"}], ADMIN
        )
    with pytest.raises(InvalidInput):
        cw.registry.create_action_package(
            org, "p", [{"kind": "email", "to": ["ops@example.com"], "subject": ""}], ADMIN
        )


def test_rendering_substitutes_every_known_variable_and_leaves_other_brackets() -> None:
    values = {"component.id": "c1", "cert.name": "n", "org.uid": "o"}
    assert render("[org.uid]/x/[component.id] [cert.name] [1, 2]", values) == "o/x/c1 n [1, 2]"


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("other-org/manage/x", "outside the organization namespace"),
        ("org-1", "outside the organization namespace"),
        ("org-1/", "outside the organization namespace"),
        ("org-1/a/+", "wildcard"),
        ("org-1/a/#", "wildcard"),
    ],
)
def test_a_substituted_topic_must_stay_in_the_org_namespace(topic: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        checked_topic(topic, "org-1")
    assert checked_topic("org-1/manage/x", "org-1") == "org-1/manage/x"


def test_deleting_an_action_package_used_by_an_operation_is_refused(cw: Certwarden) -> None:
    org = new_org(cw)
    package = str(cw.registry.create_action_package(org, "p", [MQTT], ADMIN).id)
    op_id = operation(cw, org, "TAKE_ACTION", action_package_id=package)
    cw.sync()
    with pytest.raises(Conflict, match="used by 1 operation"):
        cw.registry.delete_action_package(org, package, ADMIN)
    cw.registry.update_operation(org, op_id, {"op_type": "ROLL_ALL"}, ADMIN)
    cw.sync()
    cw.registry.delete_action_package(org, package, ADMIN)
    with pytest.raises(NotFound):
        cw.registry.action_package(org, package)


def test_an_operation_of_another_organization_is_not_found(cw: Certwarden) -> None:
    mine, theirs = new_org(cw), new_org(cw)
    op_id = operation(cw, theirs, "ROLL_ALL")
    with pytest.raises(NotFound):
        cw.registry.operation(mine, op_id)
    with pytest.raises(NotFound):
        cw.registry.execute_operation(mine, op_id, ADMIN)


def test_deleting_an_operation_fails_its_open_runs(cw: Certwarden) -> None:
    org = new_org(cw)
    op_id = operation(cw, org, "ROLL_ALL")
    run_id = cw.registry.execute_operation(org, op_id, ADMIN)
    cw.registry.delete_operation(org, op_id, ADMIN)
    cw.sync()
    run = cw.operations.run(org, run_id)
    assert run is not None
    assert (run["status"], run["stage"]) == ("failed", "cancelled")
    assert cw.registry.open_run(org, op_id, run_id) is None


def test_a_run_snapshot_keeps_the_settings_it_was_requested_with(cw: Certwarden) -> None:
    org = new_org(cw)
    op_id = operation(cw, org, "ROLL_EXPIRING", window_days=10)
    run_id = cw.registry.execute_operation(org, op_id, ADMIN)
    cw.registry.update_operation(org, op_id, {"window_days": 90, "op_type": "ROLL_ALL"}, ADMIN)
    snapshot = cw.registry.open_run(org, op_id, run_id)
    assert snapshot is not None
    assert (snapshot["op_type"], snapshot["window_days"]) == ("ROLL_EXPIRING", 10)


NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _cert(days_left: int, status: str = "ACTIVE", component: str | None = "c") -> CertificateRow:
    not_after = (NOW + timedelta(days=days_left)).isoformat()
    return CertificateRow("id", "name", "CN=x", not_after, status, False, component)


@pytest.mark.parametrize(
    ("op_type", "cert", "expected"),
    [
        (OperationType.ROLL_EXPIRING, _cert(100), Skip.NOT_EXPIRING),
        (OperationType.ROLL_EXPIRING, _cert(5), None),
        (OperationType.ROLL_EXPIRING, _cert(-3), None),  # already expired counts
        (OperationType.ROLL_EXPIRING, _cert(5, component=None), Skip.NO_COMPONENT),
        (OperationType.ROLL_ALL, _cert(100, status="INACTIVE"), Skip.INACTIVE),
        (OperationType.ROLL_ALL, _cert(100), None),
        (OperationType.UPDATE_TRUSTSTORE, _cert(100, component=None), Skip.NO_COMPONENT),
        (OperationType.REPORT_EXPIRING, _cert(5, status="INACTIVE", component=None), None),
        (OperationType.REPORT_EXPIRING, _cert(31), Skip.NOT_EXPIRING),
        (OperationType.TAKE_ACTION, _cert(100, component=None), Skip.NO_COMPONENT),
    ],
)
def test_which_certificates_a_run_acts_on(
    op_type: OperationType, cert: CertificateRow, expected: Skip | None
) -> None:
    assert skip_reason(op_type, cert, NOW + timedelta(days=30)) == expected


def test_a_roll_payload_is_json_even_when_the_dn_needs_escaping() -> None:
    cert = CertificateRow(
        "id-1", "n", 'CN=a"b\\c,O=x', "2030-01-01T00:00:00+00:00", "ACTIVE", False, "c"
    )
    payload = json.loads(roll_payload(cert, "expiring", "run-1"))
    assert payload == {
        "certificate_id": "id-1",
        "dn": 'CN=a"b\\c,O=x',
        "not_after": "2030-01-01T00:00:00+00:00",
        "reason": "expiring",
        "run_id": "run-1",
    }
