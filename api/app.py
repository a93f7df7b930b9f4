"""create_app: the admin HTTP API under /api/v1 (OpenAPI at /docs)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse

from adapters.settings import Settings
from api import errors
from api.errors import problem
from api.routers import (
    action_packages,
    audit,
    authorize,
    backup,
    certificates,
    components,
    folders,
    history,
    notifications,
    operations,
    organizations,
    policies,
    rolls,
)
from application.bootstrap import Certwarden, bootstrap


def create_app(cw: Certwarden | None = None, settings: Settings | None = None) -> FastAPI:
    """Build the API around a container (started here unless the caller already did)."""
    owned = cw is None
    container = cw or bootstrap(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            container.start()
        yield
        if owned:
            container.close()

    app = FastAPI(
        title="certwarden",
        version="0.1.0",
        description="Certificate-based access control for MQTT device fleets.",
        lifespan=lifespan,
    )
    app.state.cw = container
    errors.install(app)
    limit = container.settings.max_body_bytes

    @app.middleware("http")
    async def limit_body(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path == backup.RESTORE_PATH:
            return await call_next(request)  # streamed to disk, capped by max_restore_bytes
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return problem(
                413, "too-large", "Payload too large", f"bodies are limited to {limit} bytes"
            )
        if request.method in ("POST", "PUT", "PATCH") and length is None:
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return problem(
                        413,
                        "too-large",
                        "Payload too large",
                        f"bodies are limited to {limit} bytes",
                    )
            request._body = body  # already read: let handlers see it
        return await call_next(request)

    for module in (organizations, certificates, policies, folders, audit, authorize, components):
        app.include_router(module.router)
    for module in (operations, action_packages, notifications, rolls):
        app.include_router(module.router)
    for module in (history, backup):
        app.include_router(module.router)

    @app.get("/api/v1/truststore", response_class=PlainTextResponse, tags=["truststore"])
    def truststore() -> PlainTextResponse:
        """The server CA certificate (PEM) devices put in their truststore. No auth."""
        path = Path(container.settings.data_dir) / "pki" / "server-ca.pem"
        if not path.exists():
            return PlainTextResponse("server CA not generated yet\n", status_code=503)
        return PlainTextResponse(
            path.read_text(),
            media_type="application/x-pem-file",
            headers={"Content-Disposition": 'attachment; filename="certwarden-server-ca.pem"'},
        )

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, object]:
        return {
            "status": "ok" if container.runner.error is None else "degraded",
            "event_position": container.registry.max_position(),
            "projection_position": container.runner.position,
        }

    return app
