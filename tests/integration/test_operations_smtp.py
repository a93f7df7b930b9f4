"""Run reports through a real SMTP server (aiosmtpd started by the test): plain, STARTTLS + AUTH."""

from __future__ import annotations

import email
import ssl
import uuid
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from adapters.smtp import SmtpConfig, SmtpMailer
from application.bootstrap import Certwarden, bootstrap
from application.ports import MailError, OutgoingEmail
from tests import factories as f
from tests.conftest import make_settings
from tests.integration.broker.support import free_port
from tests.operations_support import ADMIN, FakePublisher, new_org, operation, seed


class Inbox:
    """aiosmtpd handler keeping every accepted message."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def report_container(tmp_path: Path, port: int) -> Certwarden:
    settings = make_settings("memory", tmp_path).model_copy(
        update={"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none"}
    )
    cw = bootstrap(settings)
    cw.start(background=False)
    publisher = FakePublisher()
    cw.executor.new_publisher = lambda: publisher
    return cw


def test_a_run_emails_an_html_summary_and_a_csv_of_processed_certificates(
    smtp_server: tuple[Inbox, int], tmp_path: Path
) -> None:
    inbox, port = smtp_server
    cw = report_container(tmp_path, port)
    try:
        org = new_org(cw)
        expiring = seed(cw, org, 3, days_left=7, pinned=False)
        seed(cw, org, 2, days_left=300, pinned=False)
        op_id = operation(
            cw, org, "REPORT_EXPIRING", recipients=["ops@example.com", "sec@example.com"]
        )
        run_id = cw.registry.execute_operation(org, op_id, ADMIN)
        assert cw.executor.execute(org, op_id, run_id) == "completed"
    finally:
        cw.close()
    ((rcpts, message),) = inbox.messages
    assert sorted(rcpts) == ["ops@example.com", "sec@example.com"]
    assert run_id[:8] in message["Subject"]
    parts = {part.get_content_type(): part for part in message.walk()}
    assert "reported 3" in parts["text/plain"].get_payload(decode=True).decode()
    assert "<td>reported</td><td>3</td>" in parts["text/html"].get_payload(decode=True).decode()
    csv_part = parts["text/csv"]
    assert csv_part.get_filename() == f"run-{run_id}.csv"
    lines = csv_part.get_payload(decode=True).decode().strip().splitlines()
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted(expiring)


def test_an_unreachable_smtp_server_fails_the_report_run_with_a_notification(
    tmp_path: Path,
) -> None:
    cw = report_container(tmp_path, free_port())  # nothing listens there
    try:
        org = new_org(cw)
        seed(cw, org, 1, days_left=2, pinned=False)
        op_id = operation(cw, org, "REPORT_EXPIRING", recipients=["ops@example.com"])
        run_id = cw.registry.execute_operation(org, op_id, ADMIN)
        assert cw.executor.execute(org, op_id, run_id) == "failed"
        cw.sync()
        run = cw.operations.run(org, run_id)
        notes, _ = cw.operations.notifications(org)
    finally:
        cw.close()
    assert run is not None and run["stage"] == "report"
    assert [n["kind"] for n in notes] == ["smtp-failure"]


@pytest.fixture
def tls_smtp_server(tmp_path: Path) -> Iterator[tuple[Inbox, int, Path]]:
    root = f.make_root(f.unique_cn("smtp-root"))
    leaf = f.make_leaf(root, "localhost", sans=["DNS:localhost", "IP:127.0.0.1"])
    (tmp_path / "smtp.pem").write_bytes(leaf.pem)
    (tmp_path / "smtp.key").write_bytes(leaf.key_pem)
    (tmp_path / "ca.pem").write_bytes(root.pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "smtp.pem", tmp_path / "smtp.key")

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"cw", b"s3cret")
        return AuthResult(success=ok, handled=False)

    inbox, port = Inbox(), free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticator,
    )
    controller.start()
    try:
        yield inbox, port, tmp_path / "ca.pem"
    finally:
        controller.stop()


def test_starttls_and_auth_deliver_a_message(tls_smtp_server: tuple[Inbox, int, Path]) -> None:
    inbox, port, ca = tls_smtp_server
    config = SmtpConfig(
        "127.0.0.1", port, "starttls", "cw", "s3cret", "cw@example.com", 10, str(ca)
    )
    subject = f"report {uuid.uuid4().hex[:6]}"
    SmtpMailer(config).send(OutgoingEmail(("ops@example.com",), subject, "body"))
    assert [m["Subject"] for _, m in inbox.messages] == [subject]


def test_a_wrong_smtp_password_is_a_mail_error(tls_smtp_server: tuple[Inbox, int, Path]) -> None:
    inbox, port, ca = tls_smtp_server
    config = SmtpConfig("127.0.0.1", port, "starttls", "cw", "wrong", "cw@example.com", 10, str(ca))
    with pytest.raises(MailError, match="SMTP 127.0.0.1"):
        SmtpMailer(config).send(OutgoingEmail(("ops@example.com",), "s", "body"))
    assert inbox.messages == []


def test_auth_over_an_unencrypted_connection_is_refused_before_connecting() -> None:
    config = SmtpConfig("127.0.0.1", 1, "none", "cw", "s3cret")
    with pytest.raises(MailError, match="unencrypted"):
        SmtpMailer(config).send(OutgoingEmail(("ops@example.com",), "s", "body"))
