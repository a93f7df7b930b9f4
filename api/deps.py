"""Dependencies: the container, the authenticated caller and the request's actor."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from api.errors import Unauthorized
from application.bootstrap import Certwarden
from application.organizations import Principal
from domain.errors import Forbidden
from domain.meta import Actor
from domain.principal import Role


def get_cw(request: Request) -> Certwarden:
    cw: Certwarden = request.app.state.cw
    return cw


CW = Annotated[Certwarden, Depends(get_cw)]


def get_principal(
    request: Request, cw: CW, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
    try:
        principal = cw.registry.authenticate(authorization[7:].strip())
    except Forbidden:
        raise Unauthorized("invalid or revoked API key") from None
    request.state.may_see_other_orgs = principal.role is Role.SUPER_ADMIN
    return principal


Caller = Annotated[Principal, Depends(get_principal)]


@dataclass(frozen=True)
class Ctx:
    """The caller plus request id and source IP, ready to stamp events."""

    principal: Principal
    actor: Actor


def get_ctx(request: Request, principal: Caller) -> Ctx:
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    request_id = "".join(c for c in request_id if c.isalnum() or c in "-_.")[:64]
    source_ip = request.client.host if request.client else ""
    return Ctx(principal, principal.actor(request_id, source_ip))


Context = Annotated[Ctx, Depends(get_ctx)]


def require(ctx: Ctx, org_uid: str, role: Role) -> None:
    ctx.principal.require(org_uid, role)


def etag(version: int) -> str:
    return f'"{version}"'


def parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    try:
        return int(text)
    except ValueError:
        return -1  # never matches: a malformed If-Match must not be ignored
