"""Wiring: the only place that names concrete adapters and read-model flavours."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TypeVar

from adapters.catch_up_helper import ProcessHelpers
from adapters.mqtt_process import ProcessCommandPublisher
from adapters.mqtt_publisher import FileServerCertificate, MqttTarget
from adapters.scheduler import CroniterCalendar, Scheduler
from adapters.settings import Settings
from adapters.smtp import SmtpConfig, SmtpMailer
from adapters.workers import DramatiqWorkers, make_broker
from application.authorization import Authorization, AuthzIndex
from application.enforcement import Enforcement
from application.operation_runs import RunExecutor, RunLimits
from application.operations import SystemClock
from application.registry import Registry
from application.side_effects import Background
from domain.meta import Actor
from domain.notification import NotificationKind, Severity
from projections.audit import SHARES as AUDIT_SHARES
from projections.audit import AuditProjection, AuditSplit, AuditView
from projections.base import ViewProjection
from projections.catalogue import CatalogueProjection
from projections.catalogue_view import CatalogueView
from projections.components import ComponentsProjection, ComponentsView
from projections.db import PostgresViewDb, SqliteViewDb, ViewDb
from projections.decision_log import SqlDecisionLog
from projections.lookup import LookupProjection
from projections.lookup_view import LookupTable
from projections.operation_outcomes import OutcomeStore
from projections.operations import OperationsProjection
from projections.operations_view import OperationsView, RunPages
from projections.principals import PrincipalsProjection, PrincipalsView
from projections.roll_tracking import RollRequestLog, RollTrackingProjection, RollTrackingView
from projections.runner import ProjectionRunner
from projections.trust_anchors import TrustAnchorProjection

log = logging.getLogger(__name__)
P = TypeVar("P", bound=ViewProjection)


@dataclass
class Certwarden:
    """Everything a process needs: the application, read models and the decision point."""

    settings: Settings
    registry: Registry
    db: ViewDb
    runner: ProjectionRunner
    catalogue: CatalogueView
    audit: AuditView
    lookup: LookupTable
    index: AuthzIndex
    authorization: Authorization
    components: ComponentsView
    decisions: SqlDecisionLog
    enforcement: Enforcement
    trust_anchors: TrustAnchorProjection
    operations: OperationsView
    outcomes: OutcomeStore
    executor: RunExecutor
    workers: DramatiqWorkers
    scheduler: Scheduler
    principals: PrincipalsView
    rolls: RollTrackingView
    background: bool = False

    def start(self, background: bool = True) -> None:
        """Catch read models up, load the index, then follow the log in a thread."""
        self.runner.catch_up()
        self.index.refresh()
        if background:
            self.runner.start()
            self.background = True

    def start_operations(self) -> None:
        """Workers (in-process when configured), a start-up sweep of open runs, scheduler."""
        if self.settings.ops_in_process_worker:
            self.workers.start()
        self.workers.sweep(grace_seconds=0)
        if self.settings.scheduler_in_process:
            self.scheduler.start()

    def notify_stuck_rolls(self, now: float, timeout_seconds: float) -> int:
        """Raise one system notification per roll not completed in time; returns how many."""
        stuck = self.rolls.stuck(now, timeout_seconds)
        for roll in stuck:
            self.registry.raise_notification(
                roll["org_uid"],
                NotificationKind.ROLL_STUCK,
                f"certificate {roll['certificate_id']} was asked to roll (run {roll['run_id']})"
                f" {int((now - roll['requested_at']) // 60)} min ago and is not retired yet",
                Actor.system("roll-watch"),
                severity=Severity.WARNING,
                context={"certificate_id": roll["certificate_id"], "run_id": roll["run_id"]},
            )
        self.rolls.mark_notified([r["certificate_id"] for r in stuck], now)
        return len(stuck)

    def sync(self) -> None:
        """Foreground catch-up (tests, CLI): read models and index reflect every saved event."""
        self.enforcement.effects.drain()
        self.runner.wait(self.registry.max_position(), timeout=60.0)
        self.index.refresh()

    def close(self) -> None:
        self.enforcement.effects.close()  # pending pins/registrations finish before the store closes
        self.scheduler.stop()
        self.workers.stop()
        self.runner.stop()
        self.decisions.close()
        self.registry.close()
        self.db.close()


def ensure_postgres(settings: Settings) -> None:
    """Create the database and schema when missing (first start)."""
    import psycopg

    admin = settings.postgres_conninfo().replace(
        f"dbname={settings.postgres_db}", "dbname=postgres"
    )
    with psycopg.connect(admin, autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (settings.postgres_db,)
        )
        if found.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{settings.postgres_db}"')
    with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{settings.postgres_schema}"')


def read_models(registry: Registry) -> list[ViewProjection]:
    """Every read model, fresh (the main process's runner, or a catch-up helper's)."""
    split = AuditSplit()  # one per process, shared by the audit trail's two shares
    return [
        LookupProjection(),
        CatalogueProjection(),
        *(AuditProjection(share, split, registry.state_at) for share in AUDIT_SHARES),
        ComponentsProjection(),
        TrustAnchorProjection(),
        PrincipalsProjection(),
        RollTrackingProjection(),
        OperationsProjection(),
    ]


def _one(projections: list[ViewProjection], cls: type[P]) -> P:
    return next(p for p in projections if isinstance(p, cls))


def bootstrap(settings: Settings | None = None, **overrides: Any) -> Certwarden:
    settings = settings or Settings(**overrides)
    if settings.store == "postgres":
        ensure_postgres(settings)
        db: ViewDb = PostgresViewDb(settings.postgres_conninfo(), settings.postgres_schema)
    elif settings.store == "sqlite":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = SqliteViewDb(str(settings.views_path))
    else:
        db = SqliteViewDb(":memory:")
    store_env = settings.eventsourcing_env()
    registry = Registry(env=store_env)
    projections = read_models(registry)
    lookup_projection = _one(projections, LookupProjection)
    trust_anchors = _one(projections, TrustAnchorProjection)
    helpers = None
    if settings.store == "postgres" and settings.projection_helper:
        helpers = ProcessHelpers(store_env, settings.postgres_conninfo(), settings.postgres_schema)
    runner = ProjectionRunner(
        registry,
        db,
        projections,
        poll_interval=settings.projection_poll_seconds,
        helpers=helpers,
    )
    lookup = LookupTable(db)
    index = AuthzIndex(lookup)
    catalogue = CatalogueView(db)
    registry.policy_usage = catalogue
    registry.projections = runner
    registry.on_saved(runner.poke)
    lookup_projection.listeners.append(index.refresh)
    effects = Background()
    authorization = Authorization(
        index,
        on_first_connect=lambda cert_id, ip: effects.submit(
            registry.pin_host_on_first_connect, cert_id, ip
        ),
    )
    decisions = SqlDecisionLog(db)
    enforcement = Enforcement(
        authorization,
        lambda cert_id, component, ip: registry.register_on_feed(cert_id, component, ip),
        decisions,
        rolling=registry,
        dependents=lookup.dependents,
        effects=effects,
    )
    enforcement.read_models_caught_up = lambda: runner.wait(registry.max_position(), 30.0)
    operations = OperationsView(db)
    outcomes = RollRequestLog(db)  # the outcome store, also noting roll commands sent
    executor, workers, scheduler = _operations(settings, registry, operations, outcomes)
    return Certwarden(
        settings=settings,
        registry=registry,
        db=db,
        runner=runner,
        catalogue=catalogue,
        audit=AuditView(db),
        lookup=lookup,
        index=index,
        authorization=authorization,
        components=ComponentsView(db),
        decisions=decisions,
        enforcement=enforcement,
        trust_anchors=trust_anchors,
        operations=operations,
        outcomes=outcomes,
        executor=executor,
        workers=workers,
        scheduler=scheduler,
        principals=PrincipalsView(db),
        rolls=RollTrackingView(db),
    )


def _operations(
    s: Settings,
    registry: Registry,
    view: OperationsView,
    outcomes: OutcomeStore,
) -> tuple[RunExecutor, DramatiqWorkers, Scheduler]:
    """Certificate operations: publisher, mailer, executor, dramatiq workers, scheduler."""
    pki = s.pki_dir
    target = MqttTarget(
        host=s.ops_mqtt_host or s.mqtt_host,
        port=s.ops_mqtt_port or s.mqtt_port,
        tls=s.ops_mqtt_tls,
        ca_file=str(s.ops_mqtt_ca_file or pki / "server-ca.pem"),
        cert_file=str(s.ops_mqtt_cert_file or pki / "service.pem"),
        key_file=str(s.ops_mqtt_key_file or pki / "service.key"),
        protocol=s.ops_mqtt_protocol,
        window=s.ops_mqtt_window,
    )
    mailer = SmtpMailer(
        SmtpConfig(
            s.smtp_host,
            s.smtp_port,
            s.smtp_security,
            s.smtp_username,
            s.smtp_password.get_secret_value(),
            s.smtp_sender,
            s.smtp_timeout_seconds,
            str(s.smtp_ca_file) if s.smtp_ca_file else None,
        )
    )
    limits = RunLimits(s.ops_page_size, s.ops_ack_timeout_seconds, s.ops_lease_seconds)
    executor = RunExecutor(
        registry,
        RunPages(view.db),
        outcomes,
        lambda: ProcessCommandPublisher(target),
        mailer,
        FileServerCertificate(pki / "server-ca.pem"),
        limits,
    )
    workers = DramatiqWorkers(
        make_broker(s.ops_broker, s.redis_url, s.ops_namespace),
        executor,
        view,
        outcomes,
        queue_name=s.ops_queue,
        threads=s.ops_worker_threads,
        time_limit_seconds=s.ops_time_limit_seconds,
    )
    calendar, clock = CroniterCalendar(), SystemClock()
    registry.calendar, registry.run_queue, registry.clock = calendar, workers, clock
    registry.package_usage = view
    scheduler = Scheduler(
        registry,
        view,
        calendar,
        clock,
        tick_seconds=s.scheduler_tick_seconds,
        sweep=workers.sweep,
        sweep_seconds=s.ops_sweep_seconds,
    )
    return executor, workers, scheduler
