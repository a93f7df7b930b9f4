"""Organizations, their users and API keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from api.deps import CW, Context, require
from api.schemas import (
    ApiKeyPublic,
    CreateOrganizationRequest,
    CreateUserRequest,
    IssueKeyRequest,
    OrganizationPublic,
    UserPublic,
)
from domain.errors import Forbidden
from domain.principal import Role

router = APIRouter(prefix="/api/v1/orgs", tags=["organizations"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=OrganizationPublic)
def create_organization(
    body: CreateOrganizationRequest, cw: CW, ctx: Context
) -> OrganizationPublic:
    if ctx.principal.role is not Role.SUPER_ADMIN:
        raise Forbidden("only super-admin keys create organizations")
    org = cw.registry.create_organization(body.name, ctx.actor)
    cw.sync()
    return OrganizationPublic(uid=org.uid, name=org.name)


@router.get("/{org}", response_model=OrganizationPublic)
def get_organization(org: str, cw: CW, ctx: Context) -> OrganizationPublic:
    require(ctx, org, Role.VIEWER)
    found = cw.registry.organization(org)
    return OrganizationPublic(uid=found.uid, name=found.name)


@router.post("/{org}/users", status_code=status.HTTP_201_CREATED, response_model=UserPublic)
def create_user(org: str, body: CreateUserRequest, cw: CW, ctx: Context) -> UserPublic:
    require(ctx, org, Role.ADMIN)
    user = cw.registry.create_user(org, body.name, body.role, ctx.actor)
    cw.sync()
    return UserPublic(user_id=str(user.id), org_uid=org, name=user.name, role=str(user.role))


@router.get("/{org}/users")
def list_users(org: str, cw: CW, ctx: Context) -> dict[str, Any]:
    require(ctx, org, Role.ADMIN)
    return {"items": cw.principals.users(org)}


@router.get("/{org}/keys")
def list_keys(org: str, cw: CW, ctx: Context) -> dict[str, Any]:
    """API keys of the organization (ids and labels; secrets are never stored)."""
    require(ctx, org, Role.ADMIN)
    return {"items": cw.principals.keys(org)}


@router.post(
    "/{org}/users/{user_id}/keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyPublic
)
def issue_key(org: str, user_id: str, body: IssueKeyRequest, cw: CW, ctx: Context) -> ApiKeyPublic:
    require(ctx, org, Role.ADMIN)
    issued = cw.registry.issue_api_key(org, user_id, body.label, ctx.actor)
    cw.sync()
    return ApiKeyPublic(key_id=issued.key_id, api_key=issued.secret)


@router.delete("/{org}/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_key(org: str, key_id: str, cw: CW, ctx: Context) -> None:
    require(ctx, org, Role.ADMIN)
    cw.registry.revoke_api_key(key_id, ctx.actor, org_uid=org)
    cw.sync()
