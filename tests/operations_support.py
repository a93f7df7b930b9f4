"""Helpers for the certificate-operations tests: seeding pinned certificates, fakes of ports."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from application.bootstrap import Certwarden
from application.ports import MailError, OutgoingEmail, PublishError
from domain.meta import Actor, ActorKind
from tests import factories as f

ADMIN = Actor(ActorKind.API_KEY, "key-ops", "user-ops", "req-ops", "127.0.0.1")
_ROOT: f.Issued | None = None


def root() -> f.Issued:
    global _ROOT
    if _ROOT is None:
        _ROOT = f.make_root(f.unique_cn("ops-root"))
    return _ROOT


def new_org(cw: Certwarden, folder: str = "/plant") -> str:
    org = cw.registry.create_organization(f"ops-{uuid.uuid4().hex[:6]}", ADMIN).uid
    cw.registry.create_folder(org, folder, ADMIN)
    return org


def seed(
    cw: Certwarden,
    org: str,
    n: int,
    *,
    folder: str = "/plant",
    pinned: bool = True,
    days_left: int = 365,
    status: str | None = None,
    prefix: str = "comp",
) -> list[str]:
    """n device certificates (one bundle per 100) in `folder`, optionally pinned to
    components `<prefix>-<i>`; returns their ids in creation order."""
    not_after = datetime.now(UTC) + timedelta(days=days_left)
    ids: list[str] = []
    for start in range(0, n, 100):
        count = min(100, n - start)
        pems = b"".join(
            f.make_leaf(root(), f.unique_cn("dev"), not_after=not_after).pem for _ in range(count)
        )
        done = cw.registry.import_certificates(org, pems, ADMIN, folder=folder, status=status)
        ids.extend(d.certificate_id for d in done)
    if pinned:
        for i, cert_id in enumerate(ids):
            component = f"{prefix}-{uuid.uuid4().hex[:6]}-{i}"
            cw.registry.update_certificate(org, cert_id, {"pinned_component": component}, ADMIN)
    cw.sync()
    return ids


def operation(cw: Certwarden, org: str, op_type: str, **config: object) -> str:
    settings = {"name": f"{op_type.lower()} op", "op_type": op_type, "folder": "/plant", **config}
    return str(cw.registry.create_operation(org, settings, ADMIN).id)


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing in the worker handles it."""


class FakePublisher:
    """CommandPublisher fake: records what would have been published."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int, bool]] = []
        self.open_error: str | None = None
        self.crash: BaseException | None = None
        self.crash_after: int | None = None
        self.before_crash: Callable[[], object] = lambda: None
        self.opened = 0

    def open(self) -> None:
        if self.open_error:
            raise PublishError(self.open_error)
        self.opened += 1

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if self.crash is not None and self.crash_after is not None:
            if len(self.sent) >= self.crash_after:
                crash, self.crash = self.crash, None
                self.before_crash()
                raise crash
        self.sent.append((topic, payload, qos, retain))

    def mark(self) -> int:
        return len(self.sent)

    def wait_acked(self, mark: int, timeout: float) -> None:
        return None

    def close(self) -> None:
        return None


class FakeMailer:
    def __init__(self, error: str | None = None) -> None:
        self.sent: list[OutgoingEmail] = []
        self.error = error

    def send(self, email: OutgoingEmail) -> None:
        if self.error:
            raise MailError(self.error)
        self.sent.append(email)


class FakeServerCa:
    PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"

    def pem(self) -> str:
        return self.PEM


def use_fakes(cw: Certwarden, mailer: FakeMailer | None = None) -> FakePublisher:
    publisher = FakePublisher()
    cw.executor.new_publisher = lambda: publisher
    cw.executor.mailer = mailer or FakeMailer()
    cw.executor.server_ca = FakeServerCa()
    return publisher


def run_now(cw: Certwarden, org: str, operation_id: str) -> tuple[str, str]:
    """Execute now and run the worker step in-process; returns (run id, executor result)."""
    run_id = cw.registry.execute_operation(org, operation_id, ADMIN)
    result = cw.executor.execute(org, operation_id, run_id)
    cw.sync()
    return run_id, result
