"""Admin API for usage and cost (scope admin:read): GET /admin/usage.

    GET /admin/usage?since=2026-11-01&until=2026-12-01&group_by=key,model[&key_id=ID][&model=ID]
        -> {"currency": "USD", "since": ..., "until": ..., "group_by": [...],
            "rows": [{"key": ID, "key_name": NAME, "model": ID, "requests": N, "prompt_tokens": N,
                      "completion_tokens": N, "images": N, "audio_seconds": S, "gpu_seconds": S, "cost": C}],
            "total": {...the same sums over every row}}

Periods are whole UTC hours: since and until are ISO dates or times (UTC
unless they say otherwise) or unix seconds; until is exclusive.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from core.errors import ServiceError
from core.times import period_params
from orchestrator.accounting import COLUMNS, GROUPS, Ledger


def build_usage_router() -> APIRouter:
    router = APIRouter(prefix="/admin/usage", tags=["admin: usage"])

    @router.get("")
    async def usage(
        request: Request,
        since: str | None = Query(None, description="start (inclusive): ISO date/time or unix seconds"),
        until: str | None = Query(None, description="end (exclusive): ISO date/time or unix seconds"),
        group_by: str = Query("key,model", description=f"comma-separated: {', '.join(GROUPS)}; empty: one total"),
        key_id: str | None = Query(None, max_length=200),
        model: str | None = Query(None, max_length=200),
    ) -> dict[str, Any]:
        groups = [group.strip() for group in group_by.split(",") if group.strip()]
        unknown = [group for group in groups if group not in GROUPS]
        if unknown or len(set(groups)) != len(groups):
            raise ServiceError(400, f"group_by: give distinct ones of {', '.join(GROUPS)}", code="invalid_request",
                               param="group_by")
        start, end = period_params(since, until)
        ledger: Ledger = request.app.state.ledger
        rows = ledger.report(start, end, groups, key_id, model)
        if "key" in groups:
            keys = request.app.state.keys
            for row in rows:
                key = keys.get(row["key"]) if row["key"] else None
                row["key_name"] = key.name if key is not None else None
        total = {name: sum(row[name] for row in rows) for name in COLUMNS}
        total["cost"] = round(total["cost"], 6)
        return {"currency": request.app.state.config.settings.currency, "since": start, "until": end,
                "group_by": groups, "rows": rows, "total": total}

    return router
