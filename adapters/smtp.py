"""SmtpMailer: the Mailer port over smtplib (plain, STARTTLS or implicit TLS, optional AUTH)."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from application.ports import MailError, OutgoingEmail


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str = ""
    port: int = 25
    security: str = "starttls"  # "none" | "starttls" | "tls" (implicit, port 465)
    username: str = ""
    password: str = ""
    sender: str = "certwarden@localhost"
    timeout: float = 30.0
    ca_file: str | None = None  # trust anchors for the server certificate (default: system)


def to_message(email: OutgoingEmail, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(email.to)
    message["Subject"] = email.subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="certwarden.invalid")
    message.set_content(email.text)
    if email.html is not None:
        message.add_alternative(email.html, subtype="html")
    for item in email.attachments:
        maintype, _, subtype = item.content_type.partition("/")
        message.add_attachment(
            item.data, maintype=maintype, subtype=subtype or "octet-stream", filename=item.filename
        )
    return message


class SmtpMailer:
    """One connection per message (reports are rare). Never sends credentials in the clear:
    AUTH is refused unless the session is encrypted (STARTTLS or implicit TLS)."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    def send(self, email: OutgoingEmail) -> None:
        c = self.config
        if not c.host:
            raise MailError("no SMTP server configured (CERTWARDEN_SMTP_HOST)")
        if c.username and c.security == "none":
            raise MailError("refusing SMTP AUTH over an unencrypted connection")
        context = ssl.create_default_context(cafile=c.ca_file)
        try:
            if c.security == "tls":
                server: smtplib.SMTP = smtplib.SMTP_SSL(
                    c.host, c.port, timeout=c.timeout, context=context
                )
            else:
                server = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
            with server:
                server.ehlo()
                if c.security == "starttls":
                    server.starttls(context=context)
                    server.ehlo()
                if c.username:
                    server.login(c.username, c.password)
                refused = server.send_message(to_message(email, c.sender))
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError(f"SMTP {c.host}:{c.port}: {exc}") from None
        if refused:
            raise MailError(f"SMTP refused recipient(s): {', '.join(sorted(refused))}")
