"""Admin API for the encrypted captures (orchestrator/capture.py). Who may
call it is decided where the router is mounted, not here.

    GET /admin/captures?since=&until=&model=&key_id=&limit=
                                 -> {"captures": [metadata, newest first]}
                                    since/until: unix seconds or ISO date/datetime (UTC without a zone)
    GET /admin/captures/{id}     -> metadata + "request" and "response": the parsed JSON when the
                                    content type is JSON and the body parses (not when truncated),
                                    else {"base64": ..., "content_type": ...}

404 capture_disabled when capture is off, 404 capture_not_found, 409
capture_unreadable when the record cannot be decrypted (the message names the
key it needs, or says it was altered). Decryption and sqlite run in a worker
thread: a body can be megabytes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request

from core.errors import ServiceError
from core.times import period_params
from orchestrator.capture import PARTS, CaptureNotFound, CaptureStore, CaptureUnreadable, present_body


def captures_of(request: Request) -> CaptureStore:
    store: CaptureStore | None = getattr(request.app.state, "captures", None)
    if store is None:
        raise ServiceError(404, "capture is disabled: settings.capture.enabled is off, so nothing is recorded",
                           code="capture_disabled")
    return store


def presented(store: CaptureStore, record_id: int) -> dict[str, Any]:
    """The record with its bodies made JSON-friendly (parsing and base64 of megabytes: off the loop too)."""
    record = store.read(record_id)
    for part in PARTS:
        record[part] = present_body(record[part], record[f"{part}_type"])
    return record


def build_capture_router() -> APIRouter:
    router = APIRouter(prefix="/admin/captures", tags=["admin: captures"])

    @router.get("")
    async def list_captures(
        request: Request,
        since: str | None = Query(None, description="unix seconds or ISO date/datetime; from this time on"),
        until: str | None = Query(None, description="unix seconds or ISO date/datetime; before this time"),
        model: str | None = None,
        key_id: str | None = Query(None, description="the API key id that made the requests"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        store = captures_of(request)
        start, end = period_params(since, until)
        records = await asyncio.to_thread(store.list, start, end, model, key_id, limit)
        return {"captures": records}

    @router.get("/{record_id}")
    async def get_capture(request: Request, record_id: int) -> dict[str, Any]:
        store = captures_of(request)
        try:
            return await asyncio.to_thread(presented, store, record_id)
        except CaptureNotFound:
            raise ServiceError(404, f"no capture with id {record_id}", code="capture_not_found") from None
        except CaptureUnreadable as exc:
            raise ServiceError(409, exc.message, code="capture_unreadable") from None

    return router
