"""Admin API for the audit log (orchestrator/audit.py); who may call it is
decided where the routers are mounted, not here.

    GET /admin/audit?since=T&until=T&format=json|jsonl|csv&limit=N
        json (default): {"entries": [...], "truncated": bool}, at most limit entries (default 1000)
        jsonl, csv: the whole period as a download, streamed
    GET /admin/audit/verify  -> {"ok", "checked", "head", "problem", "row_id"}; 200 either way

T is unix seconds or an ISO date/datetime (naive means UTC); since is
inclusive, until exclusive.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from core.errors import ServiceError
from core.times import period_params
from orchestrator.audit import AuditReader

DEFAULT_LIMIT = 1000
MAX_LIMIT = 100_000
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


def build_audit_router() -> APIRouter:
    router = APIRouter(prefix="/admin/audit", tags=["admin: audit"])

    def audit_of(request: Request) -> AuditReader:
        return request.app.state.audit

    # Plain def handlers: sqlite reads block, so they run in the worker threads.
    @router.get("", response_model=None)
    def list_entries(
        request: Request,
        since: str | None = Query(None, description="first time included: unix seconds or ISO date/datetime"),
        until: str | None = Query(None, description="first time excluded: unix seconds or ISO date/datetime"),
        fmt: str = Query("json", alias="format", description="json, jsonl or csv"),
        limit: int | None = Query(None, description=f"json only: at most this many entries (max {MAX_LIMIT})"),
    ) -> dict[str, Any] | StreamingResponse:
        start, end = period_params(since, until)
        if fmt not in ("json", *MEDIA_TYPES):
            raise ServiceError(400, f"format: {fmt!r} is not one of json, jsonl, csv", code="invalid_request",
                               param="format")
        audit = audit_of(request)
        if fmt != "json":
            return download(audit, fmt, start, end)
        wanted = DEFAULT_LIMIT if limit is None else limit
        if not 1 <= wanted <= MAX_LIMIT:
            raise ServiceError(400, f"limit: give 1 to {MAX_LIMIT}", code="invalid_request", param="limit")
        entries = audit.entries(since=start, until=end, limit=wanted + 1)  # one more tells whether there are more
        return {"entries": entries[:wanted], "truncated": len(entries) > wanted}

    @router.get("/verify")
    def verify(request: Request) -> dict[str, Any]:
        return audit_of(request).verify().public()

    return router


def download(audit: AuditReader, fmt: str, since: float | None, until: float | None) -> StreamingResponse:
    filename = f"modelyard-audit-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.{fmt}"
    return StreamingResponse(
        audit.export_chunks(fmt, since, until),  # type: ignore[arg-type]  # checked against MEDIA_TYPES
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
