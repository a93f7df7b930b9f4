"""Explain an authorization decision without side effects (like AWS IoT TestAuthorization)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CW, Context, require
from api.schemas import DecisionPublic, ExplainRequest
from application.ports import AccessRequest, Action, Decision
from domain.errors import InvalidInput, NotFound
from domain.principal import Role

router = APIRouter(prefix="/api/v1/orgs/{org}/authorize", tags=["authorization"])


@router.post("/explain", response_model=DecisionPublic)
def explain(org: str, body: ExplainRequest, cw: CW, ctx: Context) -> DecisionPublic:
    require(ctx, org, Role.VIEWER)
    if body.certificate_id:
        fingerprint = cw.registry.certificate(org, body.certificate_id).fingerprint
    elif body.fingerprint:
        fingerprint = body.fingerprint.lower()
        found = cw.index.row(fingerprint)
        if isinstance(found, Decision) or found.org_uid != org:
            raise NotFound("no certificate with this fingerprint in the organization")
    else:
        raise InvalidInput("give certificate_id or fingerprint")
    cw.sync()
    # without a peer address, explain as seen from the pinned host (or any host if unpinned)
    peer_ip = body.peer_ip or _pinned_or_any(cw, fingerprint)
    if body.action == "CONNECT":
        decision = cw.authorization.check_connect(fingerprint, peer_ip, pin=False)
    else:
        if not body.topic:
            raise InvalidInput("topic is required for PUBLISH, SUBSCRIBE and RECEIVE")
        request = AccessRequest(
            fingerprint, body.client_id, peer_ip, Action(body.action), body.topic, body.retain
        )
        decision = cw.authorization.authorize(request)
    return DecisionPublic(
        allowed=decision.allowed,
        reason=decision.reason,
        detail=decision.detail,
        certificate_id=decision.certificate_id,
        matched=decision.matched,
    )


def _pinned_or_any(cw: CW, fingerprint: str) -> str:
    found = cw.index.row(fingerprint)
    if isinstance(found, Decision) or found.pinned_host is None:
        return ""
    return found.pinned_host
