"""The `certwarden` command line (typer): serve, projections, admin."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer
from rich.console import Console

from adapters import backup_file
from adapters.settings import Settings
from domain.errors import DomainError
from domain.meta import Actor

app = typer.Typer(help="certwarden: certificate-based access control for MQTT device fleets.")
projections_app = typer.Typer(help="Read models.")
admin_app = typer.Typer(help="Organizations, users and API keys.")
app.add_typer(projections_app, name="projections")
app.add_typer(admin_app, name="admin")
backup_file.register(app)  # certwarden backup / certwarden restore
console = Console(stderr=True)


def _container(start: bool = True):  # type: ignore[no-untyped-def]
    from application.bootstrap import bootstrap

    cw = bootstrap(Settings())
    if start:
        cw.start(background=False)
    return cw


def _fail(exc: DomainError) -> None:
    console.print(f"[red]error:[/red] {exc.detail}")
    raise typer.Exit(2)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="HTTP bind address")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port")] = None,
) -> None:
    """Start certwarden: event store, projections and the HTTP API."""
    import uvicorn

    from api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    if host:
        settings.http_host = host
    if port:
        settings.http_port = port
    from application.bootstrap import bootstrap

    cw = bootstrap(settings)
    cw.start()
    issued = cw.registry.ensure_bootstrap_key()
    runtime = None
    if settings.broker_enabled:
        from adapters.broker_runtime import BrokerRuntime

        runtime = BrokerRuntime(cw, settings)
        runtime.start()
    cw.start_operations()
    _watch_rolls(cw)
    base = f"http://{settings.http_host}:{settings.http_port}"
    console.rule("certwarden")
    console.print(f"store: {settings.store} ({settings.data_dir})")
    console.print(f"HTTP API: {base}/api/v1   OpenAPI: {base}/docs")
    if runtime is not None:
        console.print(
            f"MQTT (TLS, client certificates): {settings.mqtt_host}:{settings.mqtt_port}; "
            f"server CA: {base}/api/v1/truststore ({settings.pki_dir / 'server-ca.pem'})"
        )
    if issued:
        console.print("[bold]super-admin API key (shown once, store it now):[/bold]")
        print(issued.secret, flush=True)
    else:
        console.print("super-admin key: issued on first start (see that output)")
    print(
        "next: see README.md 'Quick start' (create an organization, a policy, import a chain,"
        " connect with mosquitto_pub)",
        flush=True,
    )
    try:
        uvicorn.run(
            create_app(cw), host=settings.http_host, port=settings.http_port, log_level="info"
        )
    finally:
        if runtime is not None:
            runtime.stop()
        cw.close()


def _watch_rolls(cw: Any, every: float = 60.0) -> None:
    """Raise a notification for rolls not completed within the configured time."""
    import threading
    import time

    def loop() -> None:
        while True:
            try:
                cw.notify_stuck_rolls(time.time(), cw.settings.roll_timeout_seconds)
            except Exception:  # keep watching; the failure is logged
                logging.getLogger(__name__).exception("roll watch failed")
            time.sleep(every)

    threading.Thread(target=loop, name="roll-watch", daemon=True).start()


@app.command()
def authz() -> None:
    """Standalone authz socket server for an external Mosquitto running the certwarden plugin."""
    import signal
    import threading

    from adapters.broker_runtime import BrokerRuntime
    from application.bootstrap import bootstrap

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    cw = bootstrap(settings)
    cw.start()
    runtime = BrokerRuntime(cw, settings)
    runtime.prepare()
    runtime.start_authz()
    console.print(f"authz socket: {settings.authz_socket}; trust directory: {runtime.capath}")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        runtime.stop()
        cw.close()


def _until_signal() -> None:
    import signal
    import threading

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass


@app.command()
def scheduler() -> None:
    """Operation schedules and the sweep of open runs, without the HTTP API. Several may run
    at once: the event store lets each fire time produce exactly one run."""
    from application.bootstrap import bootstrap

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cw = bootstrap(Settings())
    cw.start()
    try:
        cw.workers.sweep(grace_seconds=0)
        cw.scheduler.start()
        console.print(f"scheduler: every {cw.settings.scheduler_tick_seconds:g}s; Ctrl-C stops")
        _until_signal()
    finally:
        cw.close()


@app.command()
def worker(threads: Annotated[int | None, typer.Option(help="worker threads")] = None) -> None:
    """Execute operation runs from the queue (CERTWARDEN_OPS_BROKER=redis to share it)."""
    from application.bootstrap import bootstrap

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cw = bootstrap(Settings())
    cw.start()
    try:
        cw.workers.start(threads)
        console.print(f"worker: queue {cw.settings.ops_queue} on {cw.settings.ops_broker}")
        _until_signal()
    finally:
        cw.close()


@projections_app.command("rebuild")
def rebuild(
    name: Annotated[
        list[str] | None, typer.Option("--name", help="lookup, catalogue, audit")
    ] = None,
) -> None:
    """Drop read models and replay the whole event log into them."""
    cw = _container(start=False)
    try:
        count = cw.runner.rebuild(name)
        console.print(f"rebuilt {', '.join(name or ['all'])} from {count} events")
    finally:
        cw.close()


@projections_app.command("status")
def projection_status() -> None:
    cw = _container(start=False)
    try:
        console.print(f"event log position: {cw.registry.max_position()}")
        for projection in cw.runner.projections:
            console.print(f"{projection.name}: {cw.runner.position_of(projection.name)}")
    finally:
        cw.close()


@admin_app.command("create-org")
def create_org(name: str) -> None:
    """Create an organization; prints its uid."""
    cw = _container()
    try:
        org = cw.registry.create_organization(name, Actor.system("cli"))
        print(org.uid)
    except DomainError as exc:
        _fail(exc)
    finally:
        cw.close()


@admin_app.command("create-user")
def create_user(org: str, name: str, role: Annotated[str, typer.Option()] = "admin") -> None:
    """Create a user in an organization and issue an API key (printed once)."""
    cw = _container()
    try:
        user = cw.registry.create_user(org, name, role, Actor.system("cli"))
        issued = cw.registry.issue_api_key(org, str(user.id), f"{name} key", Actor.system("cli"))
        console.print(f"user {user.id} ({role}); API key (shown once):")
        print(issued.secret)
    except DomainError as exc:
        _fail(exc)
    finally:
        cw.close()


@admin_app.command("super-admin-key")
def super_admin_key() -> None:
    """Issue an additional super-admin API key (printed once)."""
    cw = _container()
    try:
        print(cw.registry.issue_api_key(None, None, "cli super-admin", Actor.system("cli")).secret)
    finally:
        cw.close()


def main() -> None:
    app()
