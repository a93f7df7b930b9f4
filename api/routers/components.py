"""Components (with last-seen time), component templates, and the broker's decision log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from api.deps import CW, Context, require
from api.schemas import (
    ComponentTemplatePublic,
    CreateComponentTemplateRequest,
    UpdateComponentTemplateRequest,
)
from domain.component import ComponentTemplate
from domain.principal import Role

router = APIRouter(prefix="/api/v1/orgs/{org}", tags=["components"])


def _public(t: ComponentTemplate) -> ComponentTemplatePublic:
    return ComponentTemplatePublic(
        template_id=t.template_id, name=t.name, name_pattern=t.name_pattern, version=t.version
    )


@router.get("/components")
def list_components(
    org: str,
    cw: CW,
    ctx: Context,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(max_length=128)] = None,
) -> dict[str, Any]:
    """Registered components ordered by id; `after` is the last id of the previous page."""
    require(ctx, org, Role.VIEWER)
    items = cw.components.components(org, limit=limit, after=after)
    return {
        "items": items,
        "next_after": items[-1]["component_id"] if len(items) == limit else None,
    }


@router.get("/component-templates")
def list_templates(org: str, cw: CW, ctx: Context) -> dict[str, Any]:
    require(ctx, org, Role.VIEWER)
    return {"items": cw.components.templates(org)}


@router.post(
    "/component-templates",
    status_code=status.HTTP_201_CREATED,
    response_model=ComponentTemplatePublic,
)
def create_template(
    org: str, body: CreateComponentTemplateRequest, cw: CW, ctx: Context
) -> ComponentTemplatePublic:
    require(ctx, org, Role.ADMIN)
    template = cw.registry.create_template(
        org, body.template_id, body.name or body.template_id, body.name_pattern, ctx.actor
    )
    cw.sync()
    return _public(template)


@router.get("/component-templates/{template_id}", response_model=ComponentTemplatePublic)
def get_template(org: str, template_id: str, cw: CW, ctx: Context) -> ComponentTemplatePublic:
    require(ctx, org, Role.VIEWER)
    return _public(cw.registry.template(org, template_id))


@router.patch("/component-templates/{template_id}", response_model=ComponentTemplatePublic)
def update_template(
    org: str, template_id: str, body: UpdateComponentTemplateRequest, cw: CW, ctx: Context
) -> ComponentTemplatePublic:
    require(ctx, org, Role.ADMIN)
    template = cw.registry.update_template(
        org, template_id, ctx.actor, body.name, body.name_pattern
    )
    cw.sync()
    return _public(template)


@router.delete("/component-templates/{template_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_template(org: str, template_id: str, cw: CW, ctx: Context) -> None:
    require(ctx, org, Role.ADMIN)
    cw.registry.delete_template(org, template_id, ctx.actor)
    cw.sync()


@router.get("/decisions")
def decision_log(
    org: str,
    cw: CW,
    ctx: Context,
    certificate_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[float | None, Query(description="epoch seconds; page backwards")] = None,
) -> dict[str, Any]:
    """Refused connects and denied publish/subscribe, newest first (rate limited per certificate)."""
    require(ctx, org, Role.VIEWER)
    items = cw.decisions.query(org, certificate_id=certificate_id, limit=limit, before=before)
    return {"items": items, "next_before": items[-1]["at"] if len(items) == limit else None}
