"""Audit log queries (filter by entity, actor, event type, time range; cursor pagination)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from api.deps import CW, Context, require
from domain.principal import Role

router = APIRouter(prefix="/api/v1/orgs/{org}/audit", tags=["audit"])


@router.get("")
def audit_log(
    org: str,
    cw: CW,
    ctx: Context,
    entity_id: Annotated[str | None, Query(max_length=64)] = None,
    entity_type: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    event_type: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(max_length=40, description="ISO 8601, inclusive")] = None,
    until: Annotated[str | None, Query(max_length=40, description="ISO 8601, exclusive")] = None,
    order: Literal["newest", "oldest"] = "newest",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, Any]:
    require(ctx, org, Role.VIEWER)
    items, next_cursor = cw.audit.query(
        org,
        entity_id=entity_id,
        entity_type=entity_type,
        actor=actor,
        event_type=event_type,
        since=since,
        until=until,
        newest_first=order == "newest",
        limit=limit,
        cursor=cursor,
    )
    return {"items": items, "next_cursor": next_cursor}
