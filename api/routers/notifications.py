"""System notifications: what failed in the background (runs, broker, SMTP), and acknowledging it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import CW, Context, require
from domain.principal import Role

router = APIRouter(prefix="/api/v1/orgs/{org}/notifications", tags=["notifications"])


@router.get("")
def list_notifications(
    org: str,
    cw: CW,
    ctx: Context,
    acknowledged: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Newest first; `acknowledged=false` lists what still needs attention."""
    require(ctx, org, Role.VIEWER)
    items, next_cursor = cw.operations.notifications(org, acknowledged, limit, cursor)
    return {"items": items, "next_cursor": next_cursor}


@router.post("/{notification_id}/ack")
def acknowledge_notification(
    org: str, notification_id: str, cw: CW, ctx: Context
) -> dict[str, Any]:
    require(ctx, org, Role.OPERATOR)
    notification = cw.registry.acknowledge_notification(org, notification_id, ctx.actor)
    cw.sync()
    return {"notification_id": str(notification.id), "acknowledged": notification.acknowledged}
