"""Forwards a request to a service and its answer back, streaming bytes as they
arrive. Never decides placement: it gets a lease from the scheduler.

aiohttp's client sits on the hot path because it was measured: on this machine
it drove a trivial server at about 12,000 requests/s where httpx managed 379
(../shared/ENVIRONMENT.md); scripts/bench.sh reports our own figures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
from starlette.responses import Response, StreamingResponse

from core.errors import error_body
from orchestrator.scheduler import Lease

log = logging.getLogger("modelyard.proxy")

OVERHEAD_HEADER = "x-modelyard-overhead-ms"
LOAD_HEADER = "x-modelyard-load-ms"
# Hop-by-hop and recomputed headers are not copied from the upstream answer.
_SKIP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}


class Proxy:
    def __init__(self, upstream_timeout: float) -> None:
        self.upstream_timeout = upstream_timeout
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
        self, lease: Lease, path: str, body: bytes, request_id: str, began: float
    ) -> Response:
        """Send body to the leased service; the lease is released when the
        answer (or the stream) is over, whatever happens."""
        assert self.session is not None
        headers = {"content-type": "application/json", "x-request-id": request_id}
        sent = time.perf_counter()
        try:
            upstream = await self.session.post(lease.url + path, data=body, headers=headers)
        except asyncio.TimeoutError:
            lease.release()
            return _error(504, f"model '{lease.service.id}' did not answer within {self.upstream_timeout:g} s", "upstream_timeout", request_id)
        except (aiohttp.ClientError, OSError) as exc:
            lease.release()
            return _error(502, f"model '{lease.service.id}' could not be reached: {_reason(exc)}", "upstream_unreachable", request_id)
        except BaseException:
            lease.release()
            raise
        upstream_wait = time.perf_counter() - sent
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _SKIP_HEADERS}
        out_headers["x-request-id"] = request_id
        out_headers[LOAD_HEADER] = f"{lease.waited * 1000:.1f}"

        if not upstream.content_type.startswith("text/event-stream"):
            try:
                data = await upstream.read()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                return _error(502, f"model '{lease.service.id}' failed while answering: {_reason(exc)}", "upstream_failed", request_id)
            finally:
                upstream.release()
                lease.release()
            upstream_time = time.perf_counter() - sent
            overhead = time.perf_counter() - began - upstream_time - lease.waited
            out_headers[OVERHEAD_HEADER] = f"{overhead * 1000:.3f}"
            return Response(data, status_code=upstream.status, headers=out_headers)

        overhead = time.perf_counter() - began - upstream_wait - lease.waited
        out_headers[OVERHEAD_HEADER] = f"{overhead * 1000:.3f}"
        return StreamingResponse(
            _relay(upstream, lease, request_id), status_code=upstream.status, headers=out_headers
        )


async def _relay(upstream: aiohttp.ClientResponse, lease: Lease, request_id: str) -> AsyncIterator[bytes]:
    """Yield upstream chunks as they come. If the client goes away, Starlette
    cancels us and closing the connection tells the service to stop. If the
    service dies mid-stream, the client gets an error event, not a cut body."""
    clean = False
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
        clean = True
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        log.warning("stream from %s broke: %s", lease.service.id, _reason(exc), extra={"fields": {"request_id": request_id}})
        event = error_body(502, f"model '{lease.service.id}' failed mid-stream: {_reason(exc)}", "upstream_failed")
        yield b"data: " + orjson.dumps(event) + b"\n\n"
    finally:
        if clean:
            upstream.release()
        else:
            upstream.close()  # drop the connection: the upstream sees the disconnect
        lease.release()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _error(status: int, message: str, code: str, request_id: str) -> Response:
    return Response(
        orjson.dumps(error_body(status, message, code)),
        status_code=status,
        media_type="application/json",
        headers={"x-request-id": request_id},
    )
