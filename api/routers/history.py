"""History: audit trail export (CSV / JSON Lines, streamed), entity histories, state as of a time."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from api.deps import CW, Context, require
from domain.certificate import Certificate
from domain.errors import NotFound
from domain.folder import normalise_folder
from domain.policy import Policy
from domain.principal import Role
from projections.audit_view import AUDIT_FIELDS, AuditFilter, parse_instant

router = APIRouter(prefix="/api/v1/orgs/{org}", tags=["history"])

Text = Annotated[str | None, Query(max_length=64)]
Since = Annotated[str | None, Query(max_length=40, description="ISO 8601, inclusive")]
Until = Annotated[str | None, Query(max_length=40, description="ISO 8601, exclusive")]
Order = Literal["newest", "oldest"]
Limit = Annotated[int, Query(ge=1, le=1000)]
Cursor = Annotated[int | None, Query(ge=0)]
AsOf = Annotated[str, Query(max_length=40, description="ISO 8601 (no offset: UTC)")]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # spreadsheet formula injection (OWASP)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _csv(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(AUDIT_FIELDS)
    for count, row in enumerate(rows, 1):
        row["changes"] = json.dumps(row["changes"], sort_keys=True)
        writer.writerow([_csv_cell(row[f]) for f in AUDIT_FIELDS])
        if count % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _jsonl(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    chunk: list[str] = []
    for row in rows:
        chunk.append(json.dumps(row, sort_keys=True) + "\n")
        if len(chunk) >= 500:
            yield "".join(chunk)
            chunk = []
    yield "".join(chunk)


@router.get("/audit/export")
def export_audit(
    org: str,
    cw: CW,
    ctx: Context,
    format: Literal["csv", "jsonl"] = "jsonl",
    entity_id: Text = None,
    entity_type: Text = None,
    entity_key: Annotated[str | None, Query(max_length=2000)] = None,
    actor: Text = None,
    actor_kind: Text = None,
    request_id: Text = None,
    event_type: Annotated[str | None, Query(max_length=1000, description="a,b,c")] = None,
    since: Since = None,
    until: Until = None,
    order: Order = "oldest",
) -> StreamingResponse:
    """Every matching audit row, streamed a page at a time (memory stays flat)."""
    require(ctx, org, Role.VIEWER)
    flt = AuditFilter(
        org_uid=org,
        entity_id=entity_id,
        entity_type=entity_type,
        entity_key=entity_key,
        actor=actor,
        actor_kind=actor_kind,
        request_id=request_id,
        event_type=event_type,
        since=since,
        until=until,
    )
    flt.where()  # invalid times are a 422 now, not a broken stream later
    rows = cw.audit.stream(flt, newest_first=order == "newest")
    body, media = (
        (_csv(rows), "text/csv") if format == "csv" else (_jsonl(rows), "application/x-ndjson")
    )
    filename = f"audit-{org}.{format}"
    return StreamingResponse(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _history(
    cw: CW, org: str, what: str, order: Order, limit: int, cursor: int | None, **filters: str
) -> dict[str, Any]:
    items, next_cursor = cw.audit.query(
        org, newest_first=order == "newest", limit=limit, cursor=cursor, **filters
    )
    if not items and cursor is None:
        raise NotFound(f"{what} not found")
    return {"items": items, "next_cursor": next_cursor}


@router.get("/policies/{policy_id}/history")
def policy_history(
    org: str,
    policy_id: str,
    cw: CW,
    ctx: Context,
    order: Order = "oldest",
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Every event of every policy that had this id (ids are reused after a delete)."""
    require(ctx, org, Role.VIEWER)
    return _history(
        cw, org, "policy", order, limit, cursor, entity_type="Policy", entity_key=policy_id
    )


@router.get("/folders/history")
def folder_history(
    org: str,
    path: str,
    cw: CW,
    ctx: Context,
    order: Order = "oldest",
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    require(ctx, org, Role.VIEWER)
    key = normalise_folder(path)
    return _history(cw, org, "folder", order, limit, cursor, entity_type="Folder", entity_key=key)


@router.get("/users/{user_id}/history")
def user_history(
    org: str,
    user_id: str,
    cw: CW,
    ctx: Context,
    order: Order = "oldest",
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    require(ctx, org, Role.VIEWER)
    return _history(cw, org, "user", order, limit, cursor, entity_type="User", entity_id=user_id)


def _certificate_state(cert: Certificate, as_of: str) -> dict[str, Any]:
    facts = cert.facts
    return {
        "as_of": as_of,
        "certificate_id": str(cert.id),
        "org_uid": cert.org_uid,
        "version": cert.version,
        "modified_on": cert.modified_on.isoformat(),
        "name": cert.name,
        "status": cert.status,
        "is_ca": cert.is_ca,
        "policy_id": cert.policy_id,
        "folder": cert.folder,
        "run_as_user": cert.run_as_user,
        "registration": {
            "template_id": cert.registration_template,
            "initial_folder": cert.registration_folder,
        },
        "pinned_host": cert.pinned_host,
        "pinned_component": cert.pinned_component,
        **{k: facts.get(k) for k in ("subject", "issuer", "fingerprint", "serial")},
        **{k: facts.get(k) for k in ("not_before", "not_after", "pem")},
    }


@router.get("/certificates/{certificate_id}/state")
def certificate_as_of(
    org: str, certificate_id: str, as_of: AsOf, cw: CW, ctx: Context
) -> dict[str, Any]:
    """The certificate as it was at `as_of`, replayed from its events (chain status, which
    depends on other certificates, is not reconstructed)."""
    require(ctx, org, Role.VIEWER)
    moment = parse_instant(as_of, "as_of")
    return _certificate_state(cw.registry.certificate_as_of(org, certificate_id, moment), as_of)


def _policy_state(policy: Policy, as_of: str) -> dict[str, Any]:
    return {
        "as_of": as_of,
        "policy_id": policy.policy_id,
        "name": policy.name,
        "permission_sets": policy.permission_sets,
        "version": policy.version,
        "modified_on": policy.modified_on.isoformat(),
    }


@router.get("/policies/{policy_id}/state")
def policy_as_of(org: str, policy_id: str, as_of: AsOf, cw: CW, ctx: Context) -> dict[str, Any]:
    """The policy holding this id at `as_of`, replayed from its events."""
    require(ctx, org, Role.VIEWER)
    moment = parse_instant(as_of, "as_of")
    return _policy_state(cw.registry.policy_as_of(org, policy_id, moment), as_of)
