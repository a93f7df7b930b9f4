"""The one place that maps domain errors to HTTP problems (RFC 9457 problem+json)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain.errors import (
    BadCertificateInput,
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    PreconditionFailed,
)

log = logging.getLogger(__name__)

STATUS: list[tuple[type[DomainError], int, str]] = [
    (BadCertificateInput, 422, "bad-certificate"),
    (InvalidInput, 422, "invalid-input"),
    (NotFound, 404, "not-found"),
    (Conflict, 409, "conflict"),
    (PreconditionFailed, 412, "precondition-failed"),
    (Forbidden, 403, "forbidden"),
]


class Unauthorized(DomainError):
    """No or invalid credentials (401)."""


def problem(status: int, kind: str, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {
        "type": f"https://certwarden.invalid/problems/{kind}",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


def _domain(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    if isinstance(exc, Unauthorized):
        return problem(401, "unauthorized", "Unauthorized", exc.detail)
    for cls, status, kind in STATUS:
        if isinstance(exc, cls):
            extra = {k: v for k, v in exc.extra.items() if k in PUBLIC_EXTRA}
            if "other_org_uid" in exc.extra and getattr(request.state, "may_see_other_orgs", False):
                extra["other_org_uid"] = exc.extra["other_org_uid"]
            return problem(status, kind, kind.replace("-", " ").capitalize(), exc.detail, **extra)
    return problem(400, "bad-request", "Bad request", exc.detail)


PUBLIC_EXTRA = {"index", "certificate_id", "version", "certificates", "line", "conflicts"}


def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors[:5])
    return problem(422, "invalid-request", "Invalid request", detail, errors=errors)


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem(exc.status_code, "http", str(exc.detail), str(exc.detail))


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem(
        500, "internal", "Internal error", "an unexpected error occurred; see server logs"
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
