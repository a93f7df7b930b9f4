"""Certificates: import (PEM/DER, single or bundle), list, get with chain, patch, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from api.deps import CW, Context, etag, parse_if_match, require
from api.schemas import (
    CertificatePagePublic,
    ImportCertificateRequest,
    ImportedPublic,
    ImportResultPublic,
    UpdateCertificateRequest,
)
from application.bootstrap import Certwarden
from domain.errors import InvalidInput, NotFound
from domain.principal import Role
from projections.catalogue_view import effective_status

router = APIRouter(prefix="/api/v1/orgs/{org}/certificates", tags=["certificates"])

RAW_TYPES = (
    "application/x-pem-file",
    "application/pkix-cert",
    "application/octet-stream",
    "text/plain",
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ImportResultPublic,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": ImportCertificateRequest.model_json_schema()},
                "application/x-pem-file": {"schema": {"type": "string"}},
                "application/pkix-cert": {"schema": {"type": "string", "format": "binary"}},
            }
        }
    },
)
async def import_certificates(
    org: str,
    request: Request,
    cw: CW,
    ctx: Context,
    policy_id: Annotated[str | None, Query(max_length=64)] = None,
    folder: Annotated[str, Query(max_length=2000)] = "/",
    name: Annotated[str | None, Query(max_length=200)] = None,
) -> ImportResultPublic:
    """JSON {"pem": ...} or a raw PEM / DER body (options as query parameters)."""
    require(ctx, org, Role.ADMIN)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    options: dict[str, Any] = {"policy_id": policy_id, "folder": folder, "name": name}
    if content_type == "application/json":
        try:
            parsed = ImportCertificateRequest.model_validate_json(body)
        except ValueError as exc:
            raise InvalidInput(f"invalid JSON body: {str(exc).splitlines()[0][:200]}") from None
        data = parsed.pem.encode()
        options = parsed.model_dump(exclude={"pem"})
    elif content_type in RAW_TYPES or not content_type:
        data = body
    else:
        raise InvalidInput(f"unsupported content type {content_type[:60]!r}")

    def command() -> Any:
        done = cw.registry.import_certificates(org, data, ctx.actor, **options)
        cw.sync()  # read-your-writes for the caller's next GET
        return done

    outcomes = await run_in_threadpool(command)
    return ImportResultPublic(certificates=[ImportedPublic(**vars_of(o)) for o in outcomes])


def vars_of(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__slots__}


@router.get("", response_model=CertificatePagePublic)
def list_certificates(
    org: str,
    cw: CW,
    ctx: Context,
    folder: str | None = None,
    recursive: bool = True,
    status_: Annotated[str | None, Query(alias="status", pattern="^(ACTIVE|INACTIVE)$")] = None,
    is_ca: bool | None = None,
    expiring_within_days: Annotated[int | None, Query(ge=0, le=36500)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> CertificatePagePublic:
    require(ctx, org, Role.VIEWER)
    items, next_cursor = cw.catalogue.list_certificates(
        org,
        folder=folder,
        recursive=recursive,
        status=status_,
        is_ca=is_ca,
        expiring_within_days=expiring_within_days,
        text=q,
        limit=limit,
        cursor=cursor,
    )
    return CertificatePagePublic(items=items, next_cursor=next_cursor)


def _one(cw: Certwarden, org: str, certificate_id: str) -> dict[str, Any]:
    cert = cw.registry.certificate(org, certificate_id)
    chain = cw.lookup.chain(str(cert.id)) or {}
    facts = cert.facts
    return {
        "certificate_id": str(cert.id),
        "org_uid": cert.org_uid,
        "name": cert.name,
        "subject": facts["subject"],
        "issuer": facts["issuer"],
        "fingerprint": facts["fingerprint"],
        "serial": facts["serial"],
        "status": cert.status,
        "is_ca": cert.is_ca,
        "ca_detected": facts["ca_detected"],
        "self_signed": facts["self_signed"],
        "not_before": facts["not_before"],
        "not_after": facts["not_after"],
        "key_type": facts["key_type"],
        "key_size": facts["key_size"],
        "sans": facts["sans"],
        "ski": facts["ski"],
        "aki": facts["aki"],
        "policy_id": cert.policy_id,
        "run_as_user": cert.run_as_user,
        "registration": {
            "template_id": cert.registration_template,
            "initial_folder": cert.registration_folder,
        },
        "pinned_host": cert.pinned_host,
        "pinned_component": cert.pinned_component,
        "folder": cert.folder,
        "pem": facts["pem"],
        "version": cert.version,
        "chain": chain.get("chain", []),
        "issuer_certificate_id": chain.get("issuer_id"),
        "effective_status": effective_status(
            chain.get("usable"),
            chain.get("blocked_reason"),
            chain.get("chain_not_before"),
            chain.get("chain_not_after"),
        ),
    }


@router.get("/{certificate_id}")
def get_certificate(
    org: str, certificate_id: str, cw: CW, ctx: Context, response: Response
) -> dict[str, Any]:
    require(ctx, org, Role.VIEWER)
    data = _one(cw, org, certificate_id)
    response.headers["ETag"] = etag(data["version"])
    return data


@router.patch("/{certificate_id}")
def update_certificate(
    org: str,
    certificate_id: str,
    body: UpdateCertificateRequest,
    cw: CW,
    ctx: Context,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Partial update; operators may change status and pins, admins everything."""
    changes = body.model_dump(exclude_unset=True)
    operator_fields = {"status", "pinned_host", "pinned_component"}
    require(ctx, org, Role.OPERATOR if set(changes) <= operator_fields else Role.ADMIN)
    if "registration" in changes and body.registration is not None:
        changes["registration"] = body.registration.model_dump()
    cert = cw.registry.update_certificate(
        org, certificate_id, changes, ctx.actor, expected_version=parse_if_match(if_match)
    )
    cw.sync()
    data = _one(cw, org, str(cert.id))
    response.headers["ETag"] = etag(data["version"])
    return data


@router.delete("/{certificate_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_certificate(org: str, certificate_id: str, cw: CW, ctx: Context) -> None:
    require(ctx, org, Role.ADMIN)
    cw.registry.delete_certificate(org, certificate_id, ctx.actor)
    cw.sync()


@router.get("/{certificate_id}/history")
def certificate_history(org: str, certificate_id: str, cw: CW, ctx: Context) -> dict[str, Any]:
    """Every event of the certificate, oldest first (deleted certificates keep their history)."""
    require(ctx, org, Role.VIEWER)
    items, _ = cw.audit.query(org, entity_id=certificate_id, newest_first=False, limit=1000)
    if not items:
        raise NotFound("certificate not found")
    return {"items": items}
