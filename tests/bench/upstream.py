"""A fast OpenAI-compatible test upstream for the proxy benchmark.

aiohttp.web rather than FastAPI, so that the upstream is not the bottleneck:
the benchmark wants to see what the orchestrator adds, not what a framework
costs. It answers

  GET  /health                 200 once listening; the body says when this
                               process started and when it began listening,
                               so a benchmark can subtract the service's own
                               startup time from a cold start
  POST /v1/chat/completions    a small chat.completion, or with "stream": true
                               an SSE stream of --chunks chat.completion.chunk
                               events (each after --chunk-delay-ms, the way an
                               LLM paces its tokens) and then `data: [DONE]`

  python tests/bench/upstream.py --port P [--chunks 32] [--chunk-delay-ms 0]
                                 [--startup-delay-ms 0 --startup-jitter-ms 0]

It exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import time

SCRIPT_STARTED = time.time()  # before the imports: what Python itself took is still in process_started

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

from aiohttp import web  # noqa: E402

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    loads = orjson.loads
except ImportError:  # pragma: no cover - the orchestrator's env has orjson

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    loads = json.loads


def process_started() -> float:
    """Wall-clock time at which the kernel created this process (the fork in
    the parent, so interpreter start-up and imports count as ours).

    psutil's create_time() adds the start tick to /proc/stat's btime, which is
    whole seconds, so it can be off by up to a second; measuring the age of
    the process on CLOCK_BOOTTIME (the clock /proc/<pid>/stat counts in) keeps
    the error to one clock tick (10 ms)."""
    try:
        with open(f"/proc/{os.getpid()}/stat", "rb") as handle:
            stat = handle.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        start_ticks = int(fields[19])  # field 22 of stat(5); fields[0] is field 3
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
        if 0 <= age < 600:
            return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - best effort; fall back to the script's own start
        return SCRIPT_STARTED


class Upstream:
    def __init__(self, chunks: int, chunk_delay_ms: float) -> None:
        self.chunks = chunks
        self.delay = chunk_delay_ms / 1000.0
        self.started = process_started()
        self.ready_at: float | None = None
        self.health_body = b""

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(body=self.health_body, content_type="application/json")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            payload = loads(await request.read())
        except ValueError:
            return web.json_response({"error": {"message": "invalid JSON"}}, status=400)
        if not isinstance(payload, dict):
            return web.json_response({"error": {"message": "body must be an object"}}, status=400)
        model = str(payload.get("model") or "bench")
        ident = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        if not payload.get("stream"):
            body = dumps(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "Paris is the capital of France."},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15},
                }
            )
            return web.Response(body=body, content_type="application/json")

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        last = self.chunks - 1
        for index in range(self.chunks):
            if self.delay:
                await asyncio.sleep(self.delay)
            event = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": f"tok{index} "},
                        "finish_reason": "length" if index == last else None,
                    }
                ],
            }
            await response.write(b"data: " + dumps(event) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def serve(port: int, host: str, upstream: Upstream) -> None:
    app = web.Application()
    app.router.add_get("/health", upstream.health)
    app.router.add_post("/v1/chat/completions", upstream.chat)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    try:
        await site.start()
        upstream.ready_at = time.time()
        upstream.health_body = dumps(
            {
                "status": "ok",
                "pid": os.getpid(),
                "process_started": upstream.started,
                "script_started": SCRIPT_STARTED,
                "ready_at": upstream.ready_at,
                "startup_seconds": upstream.ready_at - upstream.started,
                "chunks": upstream.chunks,
                "chunk_delay_ms": upstream.delay * 1000.0,
            }
        )
        print(f"upstream listening on http://{host}:{port} pid {os.getpid()}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fast OpenAI-compatible benchmark upstream")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--chunks", type=int, default=32, help="chunks per streamed answer")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause before each chunk")
    parser.add_argument("--startup-delay-ms", type=float, default=0.0,
                        help="pause before listening, as a model's load would (part of its own startup time)")
    parser.add_argument("--startup-jitter-ms", type=float, default=0.0,
                        help="add a random 0..N ms to --startup-delay-ms")
    args = parser.parse_args(argv)
    delay = max(0.0, args.startup_delay_ms) + random.uniform(0.0, max(0.0, args.startup_jitter_ms))
    if delay:
        time.sleep(delay / 1000.0)
    upstream = Upstream(max(1, args.chunks), max(0.0, args.chunk_delay_ms))
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(serve(args.port, args.host, upstream))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
