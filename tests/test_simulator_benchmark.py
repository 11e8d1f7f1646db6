"""The benchmark client (models/simulator/benchmark.py) against a fake
OpenAI completions server over real HTTP: uvicorn in a thread of its own, so
that the server's pacing does not share an event loop with the timing it is
checked against. The server streams tokens with known delays, counts its own
peak concurrency, and fails, breaks or empties answers on request."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from core.process import free_port
from models.simulator.benchmark import (
    VOCABULARY,
    BenchmarkError,
    PointResult,
    SweepPoint,
    make_prompt,
    run_point,
    run_sweep,
)


@dataclass
class Behaviour:
    ttft_ms: float = 0.0  # pause before the first token
    itl_ms: float = 0.0  # pause between two chunks
    tokens_per_chunk: int = 1  # as vLLM packs several tokens into a chunk under load
    usage: bool = True  # send the final usage chunk
    fail_every: int = 0  # every k-th request (1-based) gets an HTTP error
    fail_status: int = 500
    fail_message: str = "engine exploded"
    break_every: int = 0  # every k-th request's stream stops half way, without [DONE]
    empty_every: int = 0  # every k-th request streams no token at all


@dataclass
class FakeCompletions:
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: int = 0
    in_flight: int = 0
    peak: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)

    def reset(self, **behaviour: Any) -> None:
        self.behaviour = Behaviour(**behaviour)
        self.requests = self.in_flight = self.peak = 0
        self.bodies.clear()
        self.authorizations.clear()


def fake_app(fake: FakeCompletions) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        fake.requests += 1
        index = fake.requests
        fake.bodies.append(body)
        fake.authorizations.append(request.headers.get("authorization"))
        b = fake.behaviour
        if b.fail_every and index % b.fail_every == 0:
            error = {"message": b.fail_message, "type": "server_error", "code": b.fail_status}
            return JSONResponse({"error": error}, status_code=b.fail_status)
        tokens = 0 if b.empty_every and index % b.empty_every == 0 else int(body["max_tokens"])
        broken = bool(b.break_every and index % b.break_every == 0)

        def event(payload: Any) -> str:
            return f"data: {json.dumps(payload)}\n\n"

        async def stream() -> Any:
            fake.in_flight += 1
            fake.peak = max(fake.peak, fake.in_flight)
            try:
                await asyncio.sleep(b.ttft_ms / 1000)
                sent = 0
                while sent < tokens:
                    if sent:
                        await asyncio.sleep(b.itl_ms / 1000)
                    n = min(b.tokens_per_chunk, tokens - sent)
                    sent += n
                    finish = "length" if sent == tokens else None
                    yield event({"object": "text_completion", "choices": [
                        {"index": 0, "text": " tok" * n, "finish_reason": finish}]})
                    if broken and sent >= tokens // 2:
                        return
                if b.usage:
                    usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": tokens}
                    yield event({"object": "text_completion", "choices": [], "usage": usage})
            finally:
                fake.in_flight -= 1  # before [DONE]: the client sends its next request only after it
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


@dataclass
class Served:
    url: str
    fake: FakeCompletions


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    fake = FakeCompletions()
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(fake_app(fake), host="127.0.0.1", port=port, log_config=None,
                                       access_log=False, lifespan="off"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "fake server did not start"
        time.sleep(0.01)
    yield Served(f"http://127.0.0.1:{port}", fake)
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def served(server: Served) -> Served:
    server.fake.reset()
    return server


async def point(served: Served, p: SweepPoint, **kwargs: Any) -> PointResult:
    limits = httpx.Limits(max_connections=p.concurrency + 1)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        return await run_point(client, served.url, "m", p, **kwargs)


async def test_measures_ttft_tpot_and_throughput(served: Served) -> None:
    served.fake.reset(ttft_ms=100, itl_ms=20)
    p = SweepPoint(concurrency=4, input_tokens=50, output_tokens=10)
    [result] = await run_sweep(served.url, "smol", [p], requests_per_point=8, api_key="k-123")

    assert served.fake.requests == 9  # the warm-up and 8 measured
    assert served.fake.peak == 4
    assert result.point == p and result.requests == 8 and result.failed == 0
    assert 90 <= result.ttft_ms <= 150, result
    assert 15 <= result.tpot_ms <= 30, result
    assert result.completion_tokens == 10
    assert result.prompt_tokens == 50
    expected_e2e = (100 + 9 * 20) / 1000
    assert expected_e2e * 0.9 <= result.e2e_latency_s <= expected_e2e * 1.5, result
    # tokens over the decoding time (180 ms): about 56 tokens/s
    assert 10 / 0.18 * 0.6 <= result.throughput_per_user <= 10 / 0.18 * 1.2, result
    # closed loop: concurrency users, each getting its answer's tokens every e2e
    little = 4 * result.completion_tokens / result.e2e_latency_s
    assert little * 0.7 <= result.total_throughput <= little * 1.1, result

    body = served.fake.bodies[-1]
    assert body["model"] == "smol"
    assert body["max_tokens"] == body["min_tokens"] == 10
    assert body["ignore_eos"] is True and body["stream"] is True and body["temperature"] == 0
    assert body["stream_options"] == {"include_usage": True}
    assert len(body["prompt"].split()) == 50
    assert len({b["prompt"] for b in served.fake.bodies}) == 9
    assert set(served.fake.authorizations) == {"Bearer k-123"}

    record = result.as_dict()
    assert record["concurrency"] == 4 and record["input_tokens"] == 50 and record["output_tokens"] == 10
    assert record["ttft_ms"] == result.ttft_ms and record["failed"] == 0
    json.dumps(record)


@pytest.mark.parametrize(("concurrency", "requests_per_point", "sent"), [(3, 7, 7), (4, 2, 4), (2, None, 2)])
async def test_closed_loop_keeps_concurrency_in_flight(
    served: Served, concurrency: int, requests_per_point: int | None, sent: int
) -> None:
    served.fake.reset(ttft_ms=40)
    result = await point(served, SweepPoint(concurrency, 8, 2), requests_per_point=requests_per_point)
    assert result.requests == served.fake.requests == sent
    assert served.fake.peak == concurrency
    assert served.fake.authorizations == [None] * sent


async def test_tpot_counts_the_servers_tokens_not_its_chunks(served: Served) -> None:
    # 10 tokens in 5 chunks 20 ms apart: 80 ms over 9 token gaps, not 4
    served.fake.reset(itl_ms=20, tokens_per_chunk=2)
    result = await point(served, SweepPoint(1, 4, 10), requests_per_point=2)
    assert result.completion_tokens == 10
    assert 80 / 9 * 0.8 <= result.tpot_ms <= 80 / 9 * 1.5, result

    # without usage the chunks are all there is to count
    served.fake.reset(itl_ms=20, tokens_per_chunk=2, usage=False)
    result = await point(served, SweepPoint(1, 4, 10), requests_per_point=2)
    assert result.completion_tokens == 5 and result.prompt_tokens == 0
    assert 20 * 0.8 <= result.tpot_ms <= 20 * 1.5, result


async def test_one_token_answers_have_no_tpot(served: Served) -> None:
    served.fake.reset(ttft_ms=20)
    result = await point(served, SweepPoint(2, 4, 1))
    assert result.failed == 0 and result.completion_tokens == 1
    assert result.tpot_ms == 0 and result.throughput_per_user == 0
    assert result.ttft_ms >= 18


@pytest.mark.parametrize("failure", ["fail_every", "break_every", "empty_every"])
async def test_failed_requests_are_counted_and_left_out_of_the_means(served: Served, failure: str) -> None:
    # HTTP errors come at once; had they been averaged in, TTFT and latency would drop by a third
    served.fake.reset(ttft_ms=60, itl_ms=10, **{failure: 3})
    async with httpx.AsyncClient(trust_env=False) as client:
        started = time.perf_counter()
        result = await run_point(client, served.url, "m", SweepPoint(2, 8, 4), requests_per_point=6)
        wall = time.perf_counter() - started
    assert result.requests == 6 and result.failed == 2
    assert result.ttft_ms >= 55, result
    assert result.completion_tokens == 4
    assert result.e2e_latency_s >= 0.085, result
    # the total counts only what was served: 4 answers of 4 tokens (a broken stream's 2 tokens are not)
    assert 16 * 0.9 <= result.total_throughput * wall <= 16 * 1.1, result


async def test_every_request_failing_raises_with_the_servers_message(served: Served) -> None:
    served.fake.reset(fail_every=1, fail_status=429, fail_message="Rate limit reached for tests")
    p = SweepPoint(2, 8, 4)
    with pytest.raises(BenchmarkError) as caught:
        await run_sweep(served.url, "m", [p], requests_per_point=3, warmup=False)
    message = str(caught.value)
    assert "HTTP 429: Rate limit reached for tests" in message
    assert "concurrency=2 input_tokens=8 output_tokens=4" in message
    assert "all 3 requests failed" in message
    assert "Traceback" not in message and "File \"" not in message

    # with a warm-up, the warm-up is what fails, before any point
    served.fake.reset(fail_every=1, fail_status=500, fail_message="no such model: m")
    with pytest.raises(BenchmarkError, match=r"warm-up request .* failed: HTTP 500: no such model: m"):
        await run_sweep(served.url, "m", [p], requests_per_point=3)
    assert served.fake.requests == 1


async def test_a_silent_server_times_out(served: Served) -> None:
    served.fake.reset(ttft_ms=2000)
    with pytest.raises(BenchmarkError, match=r"ReadTimeout: nothing received for 0.2 s"):
        await point(served, SweepPoint(1, 4, 2), timeout_s=0.2)


async def test_an_unreachable_target_raises() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BenchmarkError, match=rf"^cannot reach {url}: "):
        await run_sweep(url, "m", [SweepPoint(1, 4, 2)])
    with pytest.raises(BenchmarkError, match=rf"all 2 requests failed; first: cannot reach {url}: "):
        await run_sweep(url, "m", [SweepPoint(2, 4, 2)], warmup=False)
    with pytest.raises(BenchmarkError, match="absolute http"):
        await run_sweep("localhost:8000", "m", [SweepPoint(1, 4, 2)])


async def test_a_base_url_ending_in_v1_means_the_same_server(served: Served) -> None:
    [result] = await run_sweep(served.url + "/v1/", "m", [SweepPoint(1, 4, 2)], warmup=False)
    assert result.failed == 0 and served.fake.requests == 1


async def test_points_run_in_order_and_a_stop_ends_the_sweep_between_points(served: Served) -> None:
    points = [SweepPoint(1, 4, 2), SweepPoint(2, 4, 2), SweepPoint(3, 4, 2), SweepPoint(4, 4, 2)]
    seen: list[tuple[SweepPoint, int]] = []

    async def on_point(result: PointResult) -> None:
        seen.append((result.point, served.fake.requests))

    results = await run_sweep(served.url, "m", points, on_point=on_point, should_stop=lambda: len(seen) >= 2)
    assert [r.point for r in results] == points[:2]
    # on_point ran after each point's requests: warm-up + 1, then + 2; the third point never started
    assert seen == [(points[0], 2), (points[1], 4)]
    assert served.fake.requests == 4

    served.fake.reset()
    got: list[SweepPoint] = []
    results = await run_sweep(served.url, "m", points[:3], warmup=False, on_point=lambda r: got.append(r.point))
    assert got == [r.point for r in results] == points[:3]
    assert served.fake.requests == 1 + 2 + 3


def test_make_prompt_has_about_the_asked_length_and_differs_each_time() -> None:
    for n in (1, 5, 16, 17, 100, 1000):
        words = make_prompt(n).split()
        assert len(words) == n
        assert set(words) <= set(VOCABULARY)
    prompts = {make_prompt(64) for _ in range(20)}
    assert len(prompts) == 20
    # they differ from the start, so that no prefix-cache block is shared
    assert len({" ".join(p.split()[:16]) for p in prompts}) == 20
    with pytest.raises(ValueError):
        make_prompt(0)


def test_sweep_points_are_checked() -> None:
    with pytest.raises(ValueError, match="concurrency must be an integer >= 1"):
        SweepPoint(0, 4, 4)
    with pytest.raises(ValueError, match="output_tokens"):
        SweepPoint(1, 4, 2.5)  # type: ignore[arg-type]
