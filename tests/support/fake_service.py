"""A tiny OpenAI-compatible BaseService for tests and benchmarks.

It is a real service process (core.BaseService, real HTTP), with knobs that
make it misbehave the ways real engines do: slow or failing loads, a load that
never finishes, a crash in the middle of a stream, ignoring SIGTERM, and a
child process of its own. The orchestrator starts it through the `command`
engine: cmd: "${PYTHON} tests/support/fake_service.py --port ${PORT} ..."
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fastapi import FastAPI, Request  # noqa: E402

from core.base_service import BaseService, sse_response  # noqa: E402
from core.errors import ServiceError  # noqa: E402
from core.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, completion_id, now  # noqa: E402


class FakeService(BaseService):
    name = "fake"
    can_sleep = True

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds load() takes")
        parser.add_argument("--never-ready", action="store_true", help="load() never finishes")
        parser.add_argument("--fail-load", action="store_true", help="load() raises")
        parser.add_argument("--chunks", type=int, default=8, help="stream chunks per answer")
        parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause between chunks")
        parser.add_argument("--response-delay-ms", type=float, default=0.0, help="pause before a non-streamed answer")
        parser.add_argument("--crash-after-chunks", type=int, default=0, help="exit hard after N chunks")
        parser.add_argument("--ignore-sigterm", action="store_true", help="survive SIGTERM (tests SIGKILL)")
        parser.add_argument("--spawn-child", action="store_true", help="start a sleeping child process")
        parser.add_argument("--sleep-ms", type=float, default=0.0, help="time a sleep or a wake takes")
        parser.add_argument("--fail-sleep", action="store_true", help="POST /sleep fails")
        parser.add_argument("--fail-wake", action="store_true", help="POST /wake fails")
        parser.add_argument("--fail-fraction", type=float, default=0.0,
                            help="answer this share of completions with 500 (a faulty version, for canaries)")
        parser.add_argument("--gpu-memory-utilization", type=float, default=None,
                            help="like vLLM's: the share of each card it may take (reported in /health)")

    def __init__(self, options: argparse.Namespace) -> None:
        self.stats = {"requests": 0, "completed": 0, "cancelled": 0}
        self.child: subprocess.Popen[bytes] | None = None
        super().__init__(options)

    def load(self) -> None:
        if self.options.ignore_sigterm:
            # Signal handlers can only be set on the main thread, after uvicorn set its own.
            assert self.loop is not None
            self.loop.call_soon_threadsafe(signal.signal, signal.SIGTERM, signal.SIG_IGN)
        if self.options.spawn_child:
            self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        if self.options.fail_load:
            raise RuntimeError("weights are corrupt (simulated)")
        if self.options.never_ready:
            while True:
                time.sleep(1)
        time.sleep(self.options.startup_delay)

    def sleep(self) -> None:
        time.sleep(self.options.sleep_ms / 1000)
        if self.options.fail_sleep:
            raise ServiceError(500, "cannot sleep (simulated)")
        self.stats["sleeps"] = self.stats.get("sleeps", 0) + 1

    def wake(self) -> None:
        time.sleep(self.options.sleep_ms / 1000)
        if self.options.fail_wake:
            raise ServiceError(500, "cannot wake (simulated)")
        self.stats["wakes"] = self.stats.get("wakes", 0) + 1

    def health_details(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "child_pid": self.child.pid if self.child else None,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_memory_utilization": self.options.gpu_memory_utilization,
        }

    def add_routes(self, app: FastAPI) -> None:
        app.add_api_route("/stats", lambda: self.stats, methods=["GET"])
        app.add_api_route("/v1/chat/completions", self.chat, methods=["POST"])
        app.add_api_route("/v1/completions", self.completions, methods=["POST"])
        app.add_api_route("/v1/embeddings", self.embeddings, methods=["POST"])

    def _words(self, text: str) -> list[str]:
        answer = f"echo: {text}"
        count = max(1, self.options.chunks)
        size = max(1, -(-len(answer) // count))
        return [answer[i : i + size] for i in range(0, len(answer), size)][:count]

    async def _stream(self, model: str, text: str, chat: bool, delay_ms: float,
                      usage: bool) -> AsyncIterator[dict[str, Any]]:
        cid = completion_id()
        sent = 0
        content = ""
        try:
            for piece in self._words(text):
                if self.options.crash_after_chunks and sent >= self.options.crash_after_chunks:
                    os._exit(9)
                if delay_ms:
                    await asyncio.sleep(delay_ms / 1000)
                sent += 1
                content += piece
                if chat:
                    yield {"id": cid, "object": "chat.completion.chunk", "created": now(), "model": model,
                           "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                else:
                    yield {"id": cid, "object": "text_completion", "created": now(), "model": model,
                           "choices": [{"index": 0, "text": piece, "finish_reason": None}]}
            if usage:  # like vLLM with stream_options.include_usage: a last event with no choices
                prompt, words = len(text.split()), len(content.split())
                yield {"id": cid, "object": "chat.completion.chunk" if chat else "text_completion", "created": now(),
                       "model": model, "choices": [],
                       "usage": {"prompt_tokens": prompt, "completion_tokens": words, "total_tokens": prompt + words}}
            self.stats["completed"] += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.stats["cancelled"] += 1
            raise

    async def _answer(self, body: Any, text: str, chat: bool, request: Request | None = None) -> Any:
        self.stats["requests"] += 1
        if self.options.fail_fraction and random.random() < self.options.fail_fraction:
            self.stats["failed"] = self.stats.get("failed", 0) + 1
            raise ServiceError(500, "the model failed (simulated)")
        self.stats["last_fields"] = sorted(body.model_fields_set | set(body.model_extra or {}))
        model = body.model
        # A test may ask one request to take longer: {"fake_delay_ms": N} in the body.
        extra = getattr(body, "model_extra", None) or {}
        if body.stream:
            options = extra.get("stream_options") or {}
            usage = isinstance(options, dict) and options.get("include_usage") is True
            delay = extra.get("fake_delay_ms", self.options.chunk_delay_ms)
            return sse_response(self._stream(model, text, chat, delay, usage))
        delay_ms = extra.get("fake_delay_ms", self.options.response_delay_ms)
        if delay_ms:
            # Like a real engine, notice a client that leaves while we "generate".
            deadline = time.monotonic() + delay_ms / 1000
            while time.monotonic() < deadline:
                if request is not None and await request.is_disconnected():
                    self.stats["cancelled"] += 1
                    return {}
                await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        content = "".join(self._words(text))
        self.stats["completed"] += 1
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": len(content.split()),
                 "total_tokens": len(text.split()) + len(content.split())}
        if chat:
            return {"id": completion_id(), "object": "chat.completion", "created": now(), "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}], "usage": usage}
        return {"id": completion_id("cmpl"), "object": "text_completion", "created": now(), "model": model,
                "choices": [{"index": 0, "text": content, "finish_reason": "stop"}], "usage": usage}

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Any:
        last = body.messages[-1].content
        return await self._answer(body, last if isinstance(last, str) else "", True, request)

    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        prompt = body.prompt if isinstance(body.prompt, str) else " ".join(body.prompt)
        return await self._answer(body, prompt, False, request)

    async def embeddings(self, body: EmbeddingRequest) -> Any:
        self.stats["requests"] += 1
        inputs = body.input if isinstance(body.input, list) else [body.input]
        if inputs and all(isinstance(i, str) for i in inputs):
            data = [{"object": "embedding", "index": i, "embedding": [float(len(str(t))), 1.0, 0.0]}
                    for i, t in enumerate(inputs)]
        else:
            raise ServiceError(400, "this fake service embeds strings only", param="input")
        self.stats["completed"] += 1
        return {"object": "list", "data": data, "model": body.model, "usage": {"prompt_tokens": 0, "total_tokens": 0}}




if __name__ == "__main__":
    FakeService.main()
