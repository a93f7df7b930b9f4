"""Certificate operations: CRUD, execute now (202 + run id), runs and per-certificate outcomes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response, status
from pydantic import BaseModel, Field

from api.deps import CW, Context, etag, parse_if_match, require
from api.schemas import Strict
from application.bootstrap import Certwarden
from domain.errors import NotFound
from domain.operation import Operation
from domain.principal import Role

router = APIRouter(prefix="/api/v1/orgs/{org}/operations", tags=["operations"])
OperationTypeName = Literal[
    "REPORT_EXPIRING", "ROLL_EXPIRING", "ROLL_ALL", "UPDATE_TRUSTSTORE", "TAKE_ACTION"
]
# API field -> operation setting
FIELDS = {
    "name": "name",
    "type": "op_type",
    "folder": "folder",
    "include_subfolders": "recursive",
    "expiring_window_days": "window_days",
    "action_package_id": "action_package_id",
    "email_recipients": "recipients",
}


class ScheduleBody(Strict):
    cron: str = Field(min_length=1, max_length=120, examples=["0 3 * * *"])
    timezone: str = Field(default="UTC", max_length=64, examples=["Europe/Paris"])
    enabled: bool = True


class CreateOperationRequest(Strict):
    name: str = Field(min_length=1, max_length=200)
    type: OperationTypeName
    folder: str = Field(default="/", max_length=2000)
    include_subfolders: bool = True
    expiring_window_days: int = Field(default=30, ge=0, le=3650)
    action_package_id: str | None = Field(default=None, max_length=64)
    email_recipients: list[str] = Field(default_factory=list, max_length=50)
    schedule: ScheduleBody | None = None


class UpdateOperationRequest(Strict):
    name: str | None = Field(default=None, max_length=200)
    type: OperationTypeName | None = None
    folder: str | None = Field(default=None, max_length=2000)
    include_subfolders: bool | None = None
    expiring_window_days: int | None = Field(default=None, ge=0, le=3650)
    action_package_id: str | None = Field(default=None, max_length=64)
    email_recipients: list[str] | None = Field(default=None, max_length=50)
    schedule: ScheduleBody | None = Field(default=None, description="null disables the schedule")


class SchedulePublic(BaseModel):
    cron: str
    timezone: str
    enabled: bool
    next_fire_time: str | None


class OperationPublic(BaseModel):
    operation_id: str
    name: str
    type: str
    folder: str
    include_subfolders: bool
    expiring_window_days: int
    action_package_id: str | None
    email_recipients: list[str]
    schedule: SchedulePublic | None
    last_fire_time: str | None
    open_runs: list[str]
    version: int


class RunAccepted(BaseModel):
    run_id: str
    operation_id: str
    status: str = "requested"


def _public(cw: Certwarden, op: Operation) -> OperationPublic:
    schedule = None
    if op.cron and op.timezone:
        fire = cw.registry.next_fire(op)
        schedule = SchedulePublic(
            cron=op.cron,
            timezone=op.timezone,
            enabled=op.schedule_enabled,
            next_fire_time=fire.isoformat() if fire else None,
        )
    c = op.config
    return OperationPublic(
        operation_id=str(op.id),
        name=op.name,
        type=op.op_type.value,
        folder=c["folder"],
        include_subfolders=c["recursive"],
        expiring_window_days=c["window_days"],
        action_package_id=op.action_package_id,
        email_recipients=list(c["recipients"]),
        schedule=schedule,
        last_fire_time=op.last_fire_time,
        open_runs=sorted(op.open_runs),
        version=op.version,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=OperationPublic)
def create_operation(
    org: str, body: CreateOperationRequest, cw: CW, ctx: Context, response: Response
) -> OperationPublic:
    require(ctx, org, Role.ADMIN)
    config = {FIELDS[k]: v for k, v in body.model_dump(exclude={"schedule"}).items()}
    schedule = body.schedule.model_dump() if body.schedule else None
    op = cw.registry.create_operation(org, config, ctx.actor, schedule=schedule)
    cw.sync()
    response.headers["ETag"] = etag(op.version)
    return _public(cw, op)


@router.get("")
def list_operations(org: str, cw: CW, ctx: Context) -> dict[str, Any]:
    require(ctx, org, Role.VIEWER)
    return {"items": cw.operations.operations(org)}


@router.get("/{operation_id}", response_model=OperationPublic)
def get_operation(
    org: str, operation_id: str, cw: CW, ctx: Context, response: Response
) -> OperationPublic:
    require(ctx, org, Role.VIEWER)
    op = cw.registry.operation(org, operation_id)
    response.headers["ETag"] = etag(op.version)
    return _public(cw, op)


@router.patch("/{operation_id}", response_model=OperationPublic)
def update_operation(
    org: str,
    operation_id: str,
    body: UpdateOperationRequest,
    cw: CW,
    ctx: Context,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> OperationPublic:
    require(ctx, org, Role.ADMIN)
    sent = body.model_dump(exclude_unset=True)
    changes: dict[str, Any] = {FIELDS[k]: v for k, v in sent.items() if k != "schedule"}
    if "schedule" in sent:
        changes["schedule"] = sent["schedule"]
    op = cw.registry.update_operation(
        org, operation_id, changes, ctx.actor, expected_version=parse_if_match(if_match)
    )
    cw.sync()
    response.headers["ETag"] = etag(op.version)
    return _public(cw, op)


@router.delete("/{operation_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_operation(org: str, operation_id: str, cw: CW, ctx: Context) -> None:
    require(ctx, org, Role.ADMIN)
    cw.registry.delete_operation(org, operation_id, ctx.actor)
    cw.sync()


@router.post(
    "/{operation_id}/execute", status_code=status.HTTP_202_ACCEPTED, response_model=RunAccepted
)
def execute_operation(org: str, operation_id: str, cw: CW, ctx: Context) -> RunAccepted:
    """Run now. The run proceeds in a worker; follow it under /runs/{run_id}."""
    require(ctx, org, Role.OPERATOR)
    run_id = cw.registry.execute_operation(org, operation_id, ctx.actor)
    cw.sync()
    return RunAccepted(run_id=run_id, operation_id=operation_id)


def _with_progress(cw: Certwarden, run: dict[str, Any]) -> dict[str, Any]:
    if run["status"] == "requested":
        checkpoint = cw.outcomes.checkpoint(run["run_id"])
        run["counts"] = dict(checkpoint.counts) if checkpoint else {}
    return run


@router.get("/{operation_id}/runs")
def list_runs(
    org: str,
    operation_id: str,
    cw: CW,
    ctx: Context,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Newest first; open runs show the counts committed so far."""
    require(ctx, org, Role.VIEWER)
    cw.registry.operation(org, operation_id)  # 404 for an unknown or foreign operation
    items, next_cursor = cw.operations.runs(org, operation_id, limit, cursor)
    return {"items": [_with_progress(cw, r) for r in items], "next_cursor": next_cursor}


@router.get("/{operation_id}/runs/{run_id}")
def get_run(
    org: str,
    operation_id: str,
    run_id: str,
    cw: CW,
    ctx: Context,
    outcome: Literal["published", "emailed", "reported", "skipped", "failed"] | None = None,
    after: Annotated[int, Query(ge=-1)] = -1,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The run and a page of per-certificate outcomes (published topics, or why skipped or
    failed), in processing order; pass `next_after` back as `after` for the next page."""
    require(ctx, org, Role.VIEWER)
    run = cw.operations.run(org, run_id)
    if run is None or run["operation_id"] != operation_id:
        raise NotFound("run not found")
    rows = cw.outcomes.outcomes(run_id, outcome=outcome, after=after, limit=limit)
    certificates = [
        {
            "certificate_id": o.certificate_id,
            "name": o.name,
            "dn": o.subject,
            "not_after": o.not_after,
            "status": o.status,
            "component_id": o.component_id,
            "outcome": o.outcome,
            "reason": o.reason or None,
            "topics": list(o.topics),
        }
        for o in rows
    ]
    next_after = rows[-1].seq if len(rows) == limit else None
    return {**_with_progress(cw, run), "certificates": certificates, "next_after": next_after}
