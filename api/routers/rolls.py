"""Roll tracking per certificate and per run, and the fleet summary per folder."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import CW, Context, require
from domain.folder import normalise_folder
from domain.principal import Role

router = APIRouter(prefix="/api/v1/orgs/{org}", tags=["rolling"])


@router.get("/rolls")
def rolls(
    org: str,
    cw: CW,
    ctx: Context,
    run_id: Annotated[str | None, Query(max_length=64)] = None,
    certificate_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """Each roll: requested -> registered -> seen (new certificate connected) -> retired."""
    require(ctx, org, Role.VIEWER)
    return {"items": cw.rolls.rolls(org, run_id=run_id, certificate_id=certificate_id, limit=limit)}


@router.get("/fleet/summary")
def fleet_summary(
    org: str, cw: CW, ctx: Context, folder: Annotated[str, Query(max_length=2000)] = "/"
) -> dict[str, Any]:
    """Certificates expiring in 7/30/90 days under a folder; rolls pending and stuck."""
    require(ctx, org, Role.VIEWER)
    return cw.rolls.fleet_summary(
        org, normalise_folder(folder), timeout_seconds=cw.settings.roll_timeout_seconds
    )
