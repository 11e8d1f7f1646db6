"""Progress events for a streamed request that must wait for its model to load
(settings.load_progress): the stream starts at once and, until the model
answers, carries an SSE comment every PROGRESS_INTERVAL seconds
(": loading model 'x' (3 s)"), which SSE clients, the openai SDK among them,
skip. A long cold start then neither looks dead nor trips client read
timeouts. Since the 200 and its headers have gone out, a failure from then
on arrives as a final `data: {"error": ...}` event, as a mid-stream failure
does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from core.errors import ServiceError
from orchestrator.service import Lease

PROGRESS_INTERVAL = 1.0
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def error_event(body: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def acquire_with_progress(
    acquire: Callable[[], Awaitable[Lease]], model_id: str, send: Any, request_id: bytes
) -> Lease | None:
    """Start the stream, then wait for acquire()'s lease on model_id, sending
    progress comments; None when the wait failed (the error event and the end
    were sent)."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [*SSE_HEADERS, (b"x-request-id", request_id)]})
    began = time.monotonic()
    waiting = asyncio.ensure_future(acquire())
    try:
        while True:
            done, _ = await asyncio.wait([waiting], timeout=PROGRESS_INTERVAL)
            if done:
                return waiting.result()
            seconds = time.monotonic() - began
            comment = f": loading model '{model_id}' ({seconds:.0f} s)\n\n".encode()
            await send({"type": "http.response.body", "body": comment, "more_body": True})
    except ServiceError as exc:
        await send({"type": "http.response.body", "body": error_event(exc.body()), "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return None
    finally:
        if not waiting.done():
            waiting.cancel()  # we were cancelled (client gone, shutdown): stop waiting too


class AfterHeaders:
    """The ASGI send for the proxy once our own 200 went out: the upstream's
    response start is dropped; an upstream answer that is not a stream (an
    error) becomes one final error event."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._status = 200
        self._streaming = True
        self._body = b""

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            self._status = message["status"]
            self._streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            return
        if self._streaming:
            await self._send(message)
            return
        self._body += message.get("body", b"")
        if message.get("more_body"):
            return
        try:
            body = orjson.loads(self._body)
        except orjson.JSONDecodeError:
            body = None
        if not (isinstance(body, dict) and "error" in body):
            text = self._body[:200].decode(errors="replace")
            body = {"error": {"message": f"the model answered {self._status}: {text}", "type": "upstream_error",
                              "param": None, "code": "upstream_failed"}}
        await self._send({"type": "http.response.body", "body": error_event(body), "more_body": True})
        await self._send({"type": "http.response.body", "body": b""})
