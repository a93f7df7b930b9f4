"""Policies: CRUD by organization-unique policy id."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response, status

from api.deps import CW, Context, etag, parse_if_match, require
from api.schemas import CreatePolicyRequest, PolicyPublic, UpdatePolicyRequest
from domain.policy import Policy
from domain.principal import Role

router = APIRouter(prefix="/api/v1/orgs/{org}/policies", tags=["policies"])


def _public(policy: Policy) -> PolicyPublic:
    return PolicyPublic(
        policy_id=policy.policy_id,
        name=policy.name,
        permission_sets=policy.permission_sets,
        version=policy.version,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=PolicyPublic)
def create_policy(
    org: str, body: CreatePolicyRequest, cw: CW, ctx: Context, response: Response
) -> PolicyPublic:
    require(ctx, org, Role.ADMIN)
    sets = [s.model_dump() for s in body.permission_sets]
    policy = cw.registry.create_policy(
        org, body.policy_id, body.name or body.policy_id, sets, ctx.actor
    )
    cw.sync()
    response.headers["ETag"] = etag(policy.version)
    return _public(policy)


@router.get("")
def list_policies(org: str, cw: CW, ctx: Context) -> dict[str, Any]:
    require(ctx, org, Role.VIEWER)
    return {"items": cw.catalogue.policies(org)}


@router.get("/{policy_id}", response_model=PolicyPublic)
def get_policy(org: str, policy_id: str, cw: CW, ctx: Context, response: Response) -> PolicyPublic:
    require(ctx, org, Role.VIEWER)
    policy = cw.registry.policy(org, policy_id)
    response.headers["ETag"] = etag(policy.version)
    return _public(policy)


@router.patch("/{policy_id}", response_model=PolicyPublic)
def update_policy(
    org: str,
    policy_id: str,
    body: UpdatePolicyRequest,
    cw: CW,
    ctx: Context,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> PolicyPublic:
    require(ctx, org, Role.ADMIN)
    sets = None if body.permission_sets is None else [s.model_dump() for s in body.permission_sets]
    policy = cw.registry.update_policy(
        org,
        policy_id,
        ctx.actor,
        name=body.name,
        permission_sets=sets,
        expected_version=parse_if_match(if_match),
    )
    cw.sync()
    response.headers["ETag"] = etag(policy.version)
    return _public(policy)


@router.delete("/{policy_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_policy(org: str, policy_id: str, cw: CW, ctx: Context) -> None:
    require(ctx, org, Role.ADMIN)
    cw.registry.delete_policy(org, policy_id, ctx.actor)
    cw.sync()
