"""/drift/* on the orchestrator's port: the drift monitor's API (models/drift/
README.md), forwarded to the sibling service behind the orchestrator's auth
(scopes drift:read for GET, drift:write for the rest), body limit and audit.

/drift/metrics is the service's Prometheus page. /drift/requests, where the
orchestrator's own request feed goes in (orchestrator/drift_feed.py), is not
reachable from outside: a client cannot pose as the request stream.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import aiohttp
from fastapi import APIRouter, Request
from starlette.responses import Response

from core.errors import ServiceError
from orchestrator.siblings import Sibling

FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=120)  # a report over 100,000-value windows takes a while
STARTING_WAIT = 30.0  # seconds a request waits for a drift service that is starting
INTERNAL = frozenset({"requests"})
PASSED_HEADERS = ("content-type", "retry-after")


def build_drift_router() -> APIRouter:
    router = APIRouter(tags=["drift"])

    @router.api_route("/drift/{path:path}", methods=["GET", "POST", "PATCH", "DELETE"])
    async def forward(path: str, request: Request) -> Response:
        sibling: Sibling | None = request.app.state.drift
        if sibling is None:
            raise ServiceError(404, "the drift monitor is off; turn it on with settings.drift.enabled in "
                               "models.yaml (and ./scripts/install.sh --engine drift)", code="drift_disabled")
        segments = path.split("/")
        # ".." would be resolved on the way (by the HTTP client) into a route this one did not check
        if segments[0] in INTERNAL or any(segment in (".", "..") for segment in segments) \
                or any(ord(char) < 32 or char == "\x7f" for char in path):
            raise ServiceError(404, "no such drift route", code="not_found")
        limit = int(request.app.state.config.settings.max_request_mb * 1024 * 1024)
        body = await _read_limited(request, limit)
        url = await sibling.ready_url(STARTING_WAIT)
        # Sent percent-encoded as it came: a decoded "#" or "?" must not cut the path short.
        target = url + ("/metrics" if path == "metrics" else "/drift/" + quote(path, safe="/"))
        session = _session(request)
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        try:
            async with session.request(request.method, target, params=list(request.query_params.multi_items()),
                                       data=body or None, headers=headers) as answer:
                data = await answer.read()
                passed = {name: answer.headers[name] for name in PASSED_HEADERS if name in answer.headers}
                return Response(data, status_code=answer.status, headers=passed)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise ServiceError(503, f"the drift service did not answer: {type(exc).__name__}",
                               code="drift_unavailable", retry_after=5) from None

    return router


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(413, f"request body is {declared} bytes; the limit is {limit}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _session(request: Request) -> aiohttp.ClientSession:
    """One connection pool to the drift service, closed at shutdown (app.py)."""
    session: aiohttp.ClientSession | None = getattr(request.app.state, "drift_session", None)
    if session is None or session.closed:
        session = request.app.state.drift_session = aiohttp.ClientSession(timeout=FORWARD_TIMEOUT)
    return session
