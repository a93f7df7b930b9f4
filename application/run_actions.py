"""What a run does with one certificate: the command of each operation type, or the actions
of a TAKE_ACTION package. Runs once per certificate: kept lean."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from application.ports import (
    CertificateOutcome,
    CommandPublisher,
    Mailer,
    MailError,
    OutgoingEmail,
    PublishError,
)
from domain.action_package import ActionKind, checked_topic, render
from domain.errors import InvalidInput
from domain.notification import NotificationKind
from domain.operation import OperationType
from domain.run_plan import (
    CertificateRow,
    Outcome,
    roll_payload,
    roll_topic,
    skip_reason,
    template_values,
    truststore_topic,
)


class RunFailure(Exception):
    """The whole run stops: RunFailed at `stage`, and a notification of `kind`."""

    def __init__(self, stage: str, kind: NotificationKind, reason: str) -> None:
        super().__init__(reason)
        self.stage, self.kind, self.reason = stage, kind, reason


@dataclass
class RunState:
    """One execution attempt of a run (what the worker holds in memory)."""

    org_uid: str
    operation_id: str
    run_id: str
    snapshot: dict[str, Any]
    op_type: OperationType
    expires_before: datetime
    mailer: Mailer
    component_lookup: Callable[[str], str | None]  # component id -> name
    actions: list[dict[str, Any]] = field(default_factory=list)
    truststore: bytes = b""
    publisher: CommandPublisher | None = None
    mail_broken: str | None = None
    needs_component_name: bool = False
    component_names: dict[str, str] = field(default_factory=dict)


def outcome(
    cert: CertificateRow, seq: int, what: Outcome, reason: str = "", topics: tuple[str, ...] = ()
) -> CertificateOutcome:
    return CertificateOutcome(
        cert.certificate_id,
        cert.name,
        cert.subject,
        cert.not_after,
        cert.status,
        cert.pinned_component,
        what.value,
        reason,
        topics,
        seq,
    )


def act_page(run: RunState, rows: list[dict[str, Any]], seq: int) -> list[CertificateOutcome]:
    """Outcomes of one catalogue page, numbered from `seq`, each certificate planned and its
    command handed to the publisher in turn (the publisher only batches it for its child
    process, so nothing here waits on the network, and no per-certificate object but the
    outcome outlives its certificate: fewer survivors for the cyclic GC to promote).
    Raises RunFailure when the broker fails (the page is then not committed, so its
    outcomes do not claim a publish that did not happen)."""
    if run.op_type is OperationType.TAKE_ACTION:
        return [
            _act(run, CertificateRow.from_catalogue(row), seq + i) for i, row in enumerate(rows)
        ]
    outcomes = []
    for i, row in enumerate(rows):
        done, command = _plan(run, CertificateRow.from_catalogue(row), seq + i)
        outcomes.append(done)
        if command is not None:
            _publish(run, command[0], command[1], 1, False)
    return outcomes


def _plan(
    run: RunState, cert: CertificateRow, seq: int
) -> tuple[CertificateOutcome, tuple[str, bytes] | None]:
    """Skip with a reason, report, or the (topic, payload) command to publish."""
    skip = skip_reason(run.op_type, cert, run.expires_before)
    if skip is not None:
        return outcome(cert, seq, Outcome.SKIPPED, skip.value), None
    if run.op_type is OperationType.REPORT_EXPIRING:
        return outcome(cert, seq, Outcome.REPORTED), None
    component = str(cert.pinned_component)
    if run.op_type is OperationType.UPDATE_TRUSTSTORE:
        topic, payload = truststore_topic(run.org_uid, component), run.truststore
    else:
        reason = "expiring" if run.op_type is OperationType.ROLL_EXPIRING else "roll-all"
        topic = roll_topic(run.org_uid, component)
        payload = roll_payload(cert, reason, run.run_id)
    return outcome(cert, seq, Outcome.PUBLISHED, topics=(topic,)), (topic, payload)


def _act(run: RunState, cert: CertificateRow, seq: int) -> CertificateOutcome:
    skip = skip_reason(run.op_type, cert, run.expires_before)
    if skip is not None:
        return outcome(cert, seq, Outcome.SKIPPED, skip.value)
    return _take_action(run, cert, seq)


def _publish(run: RunState, topic: str, payload: bytes, qos: int, retain: bool) -> None:
    if run.publisher is None:
        raise RunFailure("publish", NotificationKind.WORKER_CRASH, "no publisher for this run")
    try:
        run.publisher.publish(topic, payload, qos=qos, retain=retain)
    except PublishError as exc:
        raise RunFailure("publish", NotificationKind.BROKER_UNREACHABLE, str(exc)) from None


def _take_action(run: RunState, cert: CertificateRow, seq: int) -> CertificateOutcome:
    """The package's actions in order. A topic that leaves '{orgUid}/' or carries a wildcard
    after substitution fails this certificate (with the reason) and the next actions."""
    values = template_values(run.org_uid, str(run.snapshot["name"]), cert)
    values["component.name"] = _component_name(run, str(cert.pinned_component))
    topics: list[str] = []
    for index, action in enumerate(run.actions):
        if action["kind"] == ActionKind.MQTT_PUBLISH:
            try:
                topic = checked_topic(render(action["topic"], values), run.org_uid)
            except InvalidInput as exc:
                reason = f"template: action {index}: {exc.detail}"
                return outcome(cert, seq, Outcome.FAILED, reason, tuple(topics))
            payload = render(action["payload"], values).encode("utf-8")
            _publish(run, topic, payload, int(action["qos"]), bool(action["retain"]))
            topics.append(topic)
        else:
            failure = _email(run, action, values)
            if failure:
                reason = f"smtp: action {index}: {failure}"
                return outcome(cert, seq, Outcome.FAILED, reason, tuple(topics))
    done = Outcome.PUBLISHED if topics else Outcome.EMAILED
    return outcome(cert, seq, done, topics=tuple(topics))


def _component_name(run: RunState, component_id: str) -> str:
    if not run.needs_component_name:
        return component_id
    if component_id not in run.component_names:
        run.component_names[component_id] = run.component_lookup(component_id) or component_id
    return run.component_names[component_id]


def _email(run: RunState, action: dict[str, Any], values: dict[str, str]) -> str | None:
    """Send one e-mail action; after the first SMTP failure the rest of the run fails fast."""
    if run.mail_broken:
        return run.mail_broken
    email = OutgoingEmail(
        tuple(action["to"]), render(action["subject"], values), render(action["body"], values)
    )
    try:
        run.mailer.send(email)
    except MailError as exc:
        run.mail_broken = str(exc) or "SMTP failure"
        return run.mail_broken
    return None
