"""Forwards a request to a service and its answer back to the client, writing
straight to the ASGI connection as chunks arrive. Never decides placement: it
gets a lease from the scheduler.

aiohttp's client sits on the hot path because it was measured: on this machine
it drove a trivial server at about 12,000 requests/s where httpx managed 379
(../shared/ENVIRONMENT.md). Responses are written with ASGI send() rather than
a framework response class: per chunk that saves the work that made 256 paced
streams miss their time-to-first-chunk target (scripts/bench.sh).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from core.errors import error_body
from orchestrator.scheduler import Lease
from orchestrator.tracing import Tracing
from orchestrator.usage import StreamUsage, usage_of_answer

log = logging.getLogger("modelyard.proxy")

OVERHEAD_HEADER = b"x-modelyard-overhead-ms"
# On an answer the proxy made up because the upstream failed: before its answer began (nothing was
# done; another replica may be tried) or while it was answering (the model may have run: no retry).
UPSTREAM_ERROR_HEADER = b"x-modelyard-upstream-error"
BEFORE_ANSWER, WHILE_ANSWERING = b"before-answer", b"while-answering"
LOAD_HEADER = b"x-modelyard-load-ms"
# Hop-by-hop and recomputed headers are not copied from the upstream answer.
_SKIP_HEADERS = {b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"date", b"server"}

Send = Any  # the ASGI send callable


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    data = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data})


class Proxy:
    def __init__(self, upstream_timeout: float, tracing: Tracing | None = None) -> None:
        self.upstream_timeout = upstream_timeout
        self.tracing = tracing or Tracing(None)  # carries the trace on to the service
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=self.upstream_timeout),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def forward(
        self,
        lease: Lease,
        path: str,
        body: bytes,
        request_id: bytes,
        began: float,
        send: Send,
        transform: Callable[[bytes], bytes] | None = None,
        meter: StreamUsage | None = None,
    ) -> None:
        """Send body to the leased service and relay its answer to the client
        (a successful answer that is not a stream through transform, if given).
        What a successful answer used goes on lease.usage (orchestrator/usage.py),
        for a stream the client left too: a stream's usage is read by meter.

        The lease is released when the answer is over, whatever happens. If the
        client goes away, the caller cancels us; closing the upstream
        connection then tells the service to stop working on it.
        """
        assert self.session is not None
        model = lease.service.id
        # Our own time: before the upstream call (less waiting for the model),
        # plus from having the upstream's answer to passing it on.
        before = time.perf_counter() - began - lease.waited
        upstream: aiohttp.ClientResponse | None = None
        metering = False
        clean = False
        try:
            try:
                upstream = await self.session.post(
                    lease.url + path,
                    data=body,
                    headers=self.tracing.inject({"content-type": "application/json",
                                                 "x-request-id": request_id.decode(),
                                                 # a peer replica's own credential (routing/router.py PeerLease)
                                                 **getattr(lease, "headers", {})}),
                )
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                await self._upstream_failed(send, lease, exc, "could not be reached", "upstream_unreachable", request_id,
                                            BEFORE_ANSWER)
                return
            answered = time.perf_counter()
            headers = [(k.lower(), v) for k, v in upstream.raw_headers if k.lower() not in _SKIP_HEADERS]
            headers += [(b"x-request-id", request_id), (LOAD_HEADER, f"{lease.waited * 1000:.1f}".encode())]

            if not upstream.content_type.startswith("text/event-stream"):
                try:
                    data = await upstream.read()
                    answered = time.perf_counter()
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    await self._upstream_failed(send, lease, exc, "failed while answering", "upstream_failed",
                                                request_id, WHILE_ANSWERING)
                    return
                clean = True
                if upstream.status == 200:
                    lease.usage = usage_of_answer(path, upstream.content_type, data)
                if transform is not None and upstream.status == 200:
                    data = transform(data)
                own = before + time.perf_counter() - answered
                headers += [(OVERHEAD_HEADER, f"{own * 1000:.3f}".encode()), (b"content-length", str(len(data)).encode())]
                lease.responded = True
                await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
                await send({"type": "http.response.body", "body": data})
                return

            own = before + time.perf_counter() - answered
            headers.append((OVERHEAD_HEADER, f"{own * 1000:.3f}".encode()))
            lease.responded = True
            await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
            metering = meter is not None and upstream.status == 200
            try:
                async for chunk in upstream.content.iter_any():
                    if metering and meter is not None:
                        chunk = meter.feed(chunk)
                        if not chunk:
                            continue
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                clean = True
                if metering and meter is not None and (rest := meter.rest()):
                    await send({"type": "http.response.body", "body": rest, "more_body": True})
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                # The service died or stalled mid-stream: say so rather than cut the body.
                lease.broken = True
                log.warning("stream from %s broke: %s", model, _reason(exc), extra={"fields": {"request_id": request_id.decode()}})
                event = error_body(502, f"model '{model}' failed mid-stream: {_reason(exc)}", "upstream_failed")
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(event) + b"\n\n", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            if metering and meter is not None:
                lease.usage = meter.result()
            if upstream is not None:
                if clean:
                    upstream.release()
                else:
                    upstream.close()  # drop the connection: the upstream sees the disconnect
            lease.release()

    async def _upstream_failed(
        self, send: Send, lease: Lease, exc: BaseException, doing: str, code: str, request_id: bytes, phase: bytes
    ) -> None:
        """Answer 504 when the service was too slow, 502 when it failed."""
        model = lease.service.id
        lease.responded = True
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            status, message, code = 504, f"model '{model}' did not accept the connection in time", "upstream_timeout"
        elif isinstance(exc, asyncio.TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
            status, code = 504, "upstream_timeout"
            message = f"model '{model}' stayed silent for {self.upstream_timeout:g} s (settings.upstream_timeout)"
        else:
            status, message = 502, f"model '{model}' {doing}: {_reason(exc)}"
        await send_json(send, status, error_body(status, message, code),
                        [(b"x-request-id", request_id), (UPSTREAM_ERROR_HEADER, phase)])


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
