"""Backup (streamed gzip'd JSON Lines) and restore (request body streamed to a temporary file)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO, Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from adapters.backup_file import parse_until, services
from api.deps import CW, Context, require
from api.errors import problem
from application.bootstrap import Certwarden
from domain.errors import Forbidden, InvalidInput
from domain.principal import Role

router = APIRouter(tags=["backup"])

RESTORE_PATH = "/api/v1/restore"  # bodies here are streamed to disk, not held by the body limit
CHUNK = 1 << 20


def _file_chunks(spool: IO[bytes]) -> Iterator[bytes]:
    try:
        spool.seek(0)
        while chunk := spool.read(CHUNK):
            yield chunk
    finally:
        spool.close()


def _download(cw: Certwarden, org_uid: str | None) -> StreamingResponse:
    """Build the complete file first (the manifest counts what follows), then stream it."""
    spool = tempfile.TemporaryFile(prefix="certwarden-backup-")  # noqa: SIM115 - closed by the stream
    try:
        manifest, _ = services(cw)[0].backup(spool, org_uid)
    except BaseException:
        spool.close()
        raise
    name = f"certwarden-{org_uid or 'system'}-{manifest.last_position or 0}.jsonl.gz"
    return StreamingResponse(
        _file_chunks(spool),
        media_type="application/gzip",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Backup-Events": str(manifest.event_count),
        },
    )


@router.get("/api/v1/orgs/{org}/backup")
def backup_organization(org: str, cw: CW, ctx: Context) -> StreamingResponse:
    """The organization's whole history as a verifiable backup file (admin)."""
    require(ctx, org, Role.ADMIN)
    return _download(cw, org)


@router.get("/api/v1/backup")
def backup_system(cw: CW, ctx: Context) -> StreamingResponse:
    """Every event of every organization and of the system (super-admin)."""
    if ctx.principal.role is not Role.SUPER_ADMIN:
        raise Forbidden("only super-admin keys back up the whole system")
    return _download(cw, None)


@router.post(
    RESTORE_PATH,
    response_model=None,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def restore(
    request: Request,
    cw: CW,
    ctx: Context,
    until: Annotated[str | None, Query(max_length=40, description="ISO 8601")] = None,
    until_position: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, Any] | JSONResponse:
    """Restore a backup file (the raw request body) into this store, all or nothing (super-admin).

    422: the file fails verification (the detail names the line); 409: restoring it would
    break a rule here (every conflict listed); nothing is written in either case.
    """
    if ctx.principal.role is not Role.SUPER_ADMIN:
        raise Forbidden("only super-admin keys restore backups")
    if until is not None and until_position is not None:
        raise InvalidInput("give until or until_position, not both")
    moment = parse_until(until)
    limit = cw.settings.max_restore_bytes
    with tempfile.TemporaryFile(prefix="certwarden-restore-") as spool:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return problem(413, "too-large", "Payload too large", f"limit {limit} bytes")
            await run_in_threadpool(spool.write, chunk)
        spool.seek(0)
        restorer = services(cw)[1]
        plan, summary = await run_in_threadpool(
            restorer.restore, spool, moment, until_position, None
        )
    manifest = plan.manifest
    return {
        "scope": manifest.scope,
        "org_uid": manifest.org_uid,
        "events_in_file": plan.events_in_file,
        "events_restored": plan.restored,
        "events_written": summary.events,
        "cut_position": plan.cut_position,
        "cut_time": plan.cut_time,
        "seconds": round(summary.seconds, 3),
        "events_per_second": round(summary.rate),
    }
