"""A sibling service's API on the orchestrator's port: /<name>/* forwarded to
the sibling (orchestrator/siblings.py) behind the orchestrator's auth
(scopes <name>:read for GET, <name>:write for the rest), body limit and
audit. Used by the drift monitor (/drift/*) and the simulator (/simulator/*).

Routes named in `internal` are not reachable from outside (the drift feed's
own route): a client cannot pose as the orchestrator. /<name>/metrics is the
service's own Prometheus page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from fastapi import APIRouter, Request
from starlette.responses import Response

from core.errors import ServiceError
from orchestrator.siblings import Sibling

STARTING_WAIT = 30.0  # seconds a request waits for a sibling that is starting
PASSED_HEADERS = ("content-type", "retry-after")
PAGE_TIMEOUT = aiohttp.ClientTimeout(total=30)  # sibling_json: what a dashboard part waits at most
# Checks a request may need beyond its scope (the simulator's benchmark job names a
# model the caller must be allowed to use): (request, path, body) -> raises ServiceError.
Check = Callable[[Request, str, bytes], Awaitable[None]]


def build_sibling_router(name: str, disabled_hint: str, *, internal: frozenset[str] = frozenset(),
                         timeout: float = 120.0, check: Check | None = None) -> APIRouter:
    router = APIRouter(tags=[name])
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    @router.api_route(f"/{name}/{{path:path}}", methods=["GET", "POST", "PATCH", "DELETE"])
    async def forward(path: str, request: Request) -> Response:
        sibling: Sibling | None = getattr(request.app.state, name)
        if sibling is None:
            raise ServiceError(404, disabled_hint, code=f"{name}_disabled")
        segments = path.split("/")
        # ".." would be resolved on the way (by the HTTP client) into a route this one did not check
        if segments[0] in internal or any(segment in (".", "..") for segment in segments) \
                or any(ord(char) < 32 or char == "\x7f" for char in path):
            raise ServiceError(404, f"no such {name} route", code="not_found")
        limit = int(request.app.state.config.settings.max_request_mb * 1024 * 1024)
        body = await read_limited(request, limit)
        if check is not None:
            await check(request, path, body)
        url = await sibling.ready_url(STARTING_WAIT)
        # Sent percent-encoded as it came: a decoded "#" or "?" must not cut the path short.
        target = url + ("/metrics" if path == "metrics" else f"/{name}/" + quote(path, safe="/"))
        session = _session(request.app.state, name, client_timeout)
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        try:
            async with session.request(request.method, target, params=list(request.query_params.multi_items()),
                                       data=body or None, headers=headers) as answer:
                data = await answer.read()
                passed = {header: answer.headers[header] for header in PASSED_HEADERS if header in answer.headers}
                return Response(data, status_code=answer.status, headers=passed)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise ServiceError(503, f"the {name} service did not answer: {type(exc).__name__}",
                               code=f"{name}_unavailable", retry_after=5) from None

    return router


async def read_limited(request: Request, limit: int) -> bytes:
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


async def sibling_json(state: Any, name: str, path: str, params: dict[str, Any] | None = None,
                       wait: float = 2.0) -> Any:
    """GET /<name>/<path> of a sibling, for the orchestrator's own pages (the
    dashboard): its JSON answer, or ServiceError (404 when it is off, 503 when
    it is not up, the sibling's own status and message otherwise)."""
    sibling: Sibling | None = getattr(state, name)
    if sibling is None:
        raise ServiceError(404, f"the {name} service is off (settings.{name}.enabled)", code=f"{name}_disabled")
    url = await sibling.ready_url(wait)
    session = _session(state, name, aiohttp.ClientTimeout(total=120))
    try:
        async with session.get(f"{url}/{name}/{path}", params=params, timeout=PAGE_TIMEOUT) as answer:
            body = await answer.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        raise ServiceError(503, f"the {name} service did not answer: {type(exc).__name__}",
                           code=f"{name}_unavailable") from None
    if answer.status != 200:
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        raise ServiceError(answer.status, str(error.get("message", f"HTTP {answer.status}")),
                           code=str(error["code"]) if error.get("code") else None)
    return body


def _session(state: Any, name: str, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
    """One connection pool per sibling, closed at shutdown (app.close_sessions)."""
    sessions: dict[str, aiohttp.ClientSession] = state.sibling_sessions
    session = sessions.get(name)
    if session is None or session.closed:
        session = sessions[name] = aiohttp.ClientSession(timeout=timeout)
    return session
