"""Action packages: ordered MQTT publish / e-mail actions run by TAKE_ACTION operations."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Response, status
from pydantic import BaseModel, Field

from api.deps import CW, Context, etag, parse_if_match, require
from api.schemas import Strict
from domain.action_package import ActionPackage
from domain.principal import Role

router = APIRouter(prefix="/api/v1/orgs/{org}/action-packages", tags=["action packages"])
VARIABLES_DOC = (
    "variables: [component.id] [component.name] [cert.id] [cert.name] [cert.dn] "
    "[cert.not_after] [org.uid] [operation.name]"
)


class ActionBody(Strict):
    kind: Literal["mqtt_publish", "email"]
    topic: str | None = Field(default=None, max_length=1024, description=VARIABLES_DOC)
    payload: str | None = Field(default=None, max_length=256 * 1024)
    qos: int = Field(default=1, ge=0, le=2)
    retain: bool = False
    to: list[str] | None = Field(default=None, max_length=50)
    subject: str | None = Field(default=None, max_length=300)
    body: str | None = Field(default=None, max_length=64 * 1024)

    def as_action(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class CreateActionPackageRequest(Strict):
    name: str = Field(min_length=1, max_length=200)
    actions: list[ActionBody] = Field(min_length=1, max_length=20)


class UpdateActionPackageRequest(Strict):
    name: str | None = Field(default=None, max_length=200)
    actions: list[ActionBody] | None = Field(default=None, min_length=1, max_length=20)


class ActionPackagePublic(BaseModel):
    package_id: str
    name: str
    actions: list[dict[str, Any]]
    version: int


def _public(package: ActionPackage) -> ActionPackagePublic:
    return ActionPackagePublic(
        package_id=str(package.id),
        name=package.name,
        actions=package.actions,
        version=package.version,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ActionPackagePublic)
def create_action_package(
    org: str, body: CreateActionPackageRequest, cw: CW, ctx: Context, response: Response
) -> ActionPackagePublic:
    require(ctx, org, Role.ADMIN)
    actions = [a.as_action() for a in body.actions]
    package = cw.registry.create_action_package(org, body.name, actions, ctx.actor)
    cw.sync()
    response.headers["ETag"] = etag(package.version)
    return _public(package)


@router.get("")
def list_action_packages(org: str, cw: CW, ctx: Context) -> dict[str, Any]:
    require(ctx, org, Role.VIEWER)
    return {"items": cw.operations.packages(org)}


@router.get("/{package_id}", response_model=ActionPackagePublic)
def get_action_package(
    org: str, package_id: str, cw: CW, ctx: Context, response: Response
) -> ActionPackagePublic:
    require(ctx, org, Role.VIEWER)
    package = cw.registry.action_package(org, package_id)
    response.headers["ETag"] = etag(package.version)
    return _public(package)


@router.patch("/{package_id}", response_model=ActionPackagePublic)
def update_action_package(
    org: str,
    package_id: str,
    body: UpdateActionPackageRequest,
    cw: CW,
    ctx: Context,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> ActionPackagePublic:
    require(ctx, org, Role.ADMIN)
    actions = None if body.actions is None else [a.as_action() for a in body.actions]
    package = cw.registry.update_action_package(
        org,
        package_id,
        ctx.actor,
        name=body.name,
        actions=actions,
        expected_version=parse_if_match(if_match),
    )
    cw.sync()
    response.headers["ETag"] = etag(package.version)
    return _public(package)


@router.delete("/{package_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_action_package(org: str, package_id: str, cw: CW, ctx: Context) -> None:
    require(ctx, org, Role.ADMIN)
    cw.registry.delete_action_package(org, package_id, ctx.actor)
    cw.sync()
