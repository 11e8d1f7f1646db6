"""FastAPI error handlers shared by the orchestrator and every BaseService:
whatever goes wrong leaves as an OpenAI-shaped body with the right status,
never as a traceback."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import ServiceError, error_body

log = logging.getLogger("modelyard.http")

# pydantic names the union member an error came from in the location
# (("prompt", "list[str]"), ("stream", "bool")); clients want the field only.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list|dict|[a-z-]+\[.*\])$")


def describe_validation(errors: list[Any]) -> tuple[str, str | None]:
    """The first pydantic problem as (message, param) for an OpenAI error."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _UNION_TAG.match(str(p))]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    if first.get("type") == "missing":
        return f"missing required field '{param}'", param
    return (f"{param}: {msg}" if param else msg), param


def install_error_handlers(app: FastAPI, service: str) -> None:
    """Every error leaves as an OpenAI-shaped body; never a traceback."""

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation(list(exc.errors()))
        return JSONResponse(error_body(400, message, "invalid_request", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(
            error_body(500, f"internal error in {service}: {type(exc).__name__}", "internal_error"),
            status_code=500,
        )
