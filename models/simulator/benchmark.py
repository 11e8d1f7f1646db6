"""The benchmark job's client: measure a running OpenAI-compatible completions
service over a sweep of concurrency and prompt/output lengths.

The simulator's regressors learn from these measurements, so each number
means exactly one thing:

    ttft_ms              request sent -> first chunk with text (queueing and
                         prefill included: what a user waits for)
    tpot_ms              (last text chunk - first text chunk) / (tokens - 1);
                         taken from the server's usage count, not the chunk
                         count, since a server may pack several tokens into one
                         chunk; 0 for a one-token answer
    e2e_latency_s        request sent -> `data: [DONE]`
    throughput_per_user  tokens / (e2e - ttft): how fast one user sees tokens
                         while decoding (BudSim's output token throughput per
                         user); a one-token answer has no decoding and is left
                         out of this mean (0 when every answer has one token)
    total_throughput     every token of the point / the point's wall time

Each is a mean over the point's successful requests; failed requests (an HTTP
error, a broken or malformed stream, no output token) are only counted, as a
failure rate the caller can judge a record by.

The load is closed-loop: `concurrency` users, each sending its next request
when its previous one is answered, until the point's requests are sent. That
keeps exactly `concurrency` requests in flight, the quantity the simulator
predicts for, where an open-loop arrival rate would measure the queue instead.

Requests ask for exactly output_tokens tokens (max_tokens and min_tokens, and
ignore_eos so that an early end-of-sequence does not cut the answer short;
both are vLLM's extensions, which other servers ignore), greedily, streamed,
with usage in the last chunk (stream_options.include_usage). Prompts are
common short English words, about one token each in a Llama-style BPE
vocabulary, with random leading words so that no two requests share a prefix
cache block: what is measured is prefill, not the cache. The usage the server
reports is kept (prompt_tokens, completion_tokens) so that a record shows the
lengths actually served next to the ones aimed at.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

# Short common words, each a single token (with its leading space) in GPT-2,
# Llama and SmolLM2 vocabularies, so that a prompt of n words is about n tokens.
WORDS = (
    "the cat sat on a mat and the dog ran to the park in the sun with a red ball "
    "as the old man read his book by the door of a small house near the sea"
).split()
VOCABULARY = sorted(set(WORDS))
# Leading words drawn at random: more than one 16-token prefix-cache block's
# worth would be wasted, fewer would let two prompts share a first block.
RANDOM_LEADING_WORDS = 16

WARMUP_OUTPUT_TOKENS = 16  # enough to exercise decoding, short enough not to cost a point's time
REASON_CHARS = 300  # a server's error text is cut to this length in messages


class BenchmarkError(Exception):
    """The target cannot be measured: unreachable, refusing the warm-up, or
    failing every request of a point. The message names the point and the
    server's own reason."""


@dataclass(frozen=True)
class SweepPoint:
    """One load: `concurrency` users sending prompts of about input_tokens
    tokens and asking for output_tokens tokens each."""

    concurrency: int
    input_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:
        for name in ("concurrency", "input_tokens", "output_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SweepPoint.{name} must be an integer >= 1, got {value!r}")

    def describe(self) -> str:
        return (
            f"concurrency={self.concurrency} input_tokens={self.input_tokens} output_tokens={self.output_tokens}"
        )


@dataclass(frozen=True)
class PointResult:
    """The measurements of one point (see the module docstring for their definitions)."""

    point: SweepPoint
    requests: int
    failed: int
    ttft_ms: float
    tpot_ms: float
    e2e_latency_s: float
    throughput_per_user: float
    total_throughput: float
    prompt_tokens: float  # mean of the server's usage.prompt_tokens; 0 when it reported no usage
    completion_tokens: float

    def as_dict(self) -> dict[str, Any]:
        """A flat record: the point's fields, then the measurements."""
        return {
            "concurrency": self.point.concurrency,
            "input_tokens": self.point.input_tokens,
            "output_tokens": self.point.output_tokens,
            "requests": self.requests,
            "failed": self.failed,
            "ttft_ms": self.ttft_ms,
            "tpot_ms": self.tpot_ms,
            "e2e_latency_s": self.e2e_latency_s,
            "throughput_per_user": self.throughput_per_user,
            "total_throughput": self.total_throughput,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@dataclass(frozen=True)
class _Outcome:
    """One request: its timings when it succeeded, its reason when not."""

    duration_s: float = 0.0
    ttft_s: float = 0.0
    decode_s: float = 0.0  # first text chunk -> last text chunk
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    reason: str | None = None  # set when the request failed
    unreachable: bool = False  # no connection could be made at all

    @property
    def ok(self) -> bool:
        return self.reason is None


# A generator of its own: a genetic search reseeds the global one, which would make
# two jobs' "random" words the same and turn prefill into prefix-cache hits.
_PROMPT_RANDOM = random.Random()


def make_prompt(input_tokens: int) -> str:
    """About input_tokens tokens of plain words: exactly input_tokens words,
    the first RANDOM_LEADING_WORDS of them drawn at random (so that two
    prompts differ from their first cache block), the rest a fixed cycle."""
    if input_tokens < 1:
        raise ValueError(f"input_tokens must be >= 1, got {input_tokens}")
    leading = _PROMPT_RANDOM.choices(VOCABULARY, k=min(input_tokens, RANDOM_LEADING_WORDS))
    rest = [WORDS[i % len(WORDS)] for i in range(input_tokens - len(leading))]
    return " ".join(leading + rest)


def completions_url(base_url: str) -> str:
    """{base_url}/v1/completions; a base_url that already ends in /v1 (the
    OpenAI SDK's convention) is taken as meaning the same server."""
    parts = urlsplit(base_url)
    bad = BenchmarkError(f"base_url must be an absolute http:// or https:// URL, not {base_url!r}")
    try:
        parts.port  # noqa: B018 - raises for a port out of range or not a number
    except ValueError:
        raise bad from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root + "/v1/completions"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS] + "..."


def _error_message(body: bytes) -> str:
    """The server's own words: OpenAI's error.message, FastAPI's detail, or the body's text."""
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return _short(text) or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return _short(str(error["message"]))
        if isinstance(error, str) and error:
            return _short(error)
        if data.get("detail"):
            return _short(str(data["detail"]))
        if data.get("message"):
            return _short(str(data["message"]))
    return _short(text)


def _request_body(model: str, point: SweepPoint) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": make_prompt(point.input_tokens),
        "max_tokens": point.output_tokens,
        "min_tokens": point.output_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _one_request(
    client: httpx.AsyncClient, base_url: str, model: str, point: SweepPoint, headers: dict[str, str], timeout_s: float
) -> _Outcome:
    """Send one streamed completion and time it. Never raises for what the
    server or the network does: that becomes the outcome's reason."""
    url = completions_url(base_url)
    body = _request_body(model, point)
    first_text = last_text = None
    text_chunks = 0
    usage: dict[str, Any] | None = None
    done_at = None
    start = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body, headers=headers, timeout=timeout_s) as response:
            if response.status_code != 200:
                error_body = await response.aread()
                return _Outcome(reason=f"HTTP {response.status_code}: {_error_message(error_body)}")
            async for line in response.aiter_lines():
                if done_at is not None or not line.startswith("data:"):
                    continue  # blank separators, SSE comments and fields, anything after [DONE]
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    done_at = time.perf_counter()
                    continue
                now = time.perf_counter()
                try:
                    chunk = json.loads(data)
                except ValueError:
                    return _Outcome(reason=f"malformed stream chunk: {_short(data)}")
                if not isinstance(chunk, dict):
                    return _Outcome(reason=f"malformed stream chunk: {_short(data)}")
                if chunk.get("error"):
                    return _Outcome(reason=f"error in stream: {_error_message(data.encode())}")
                choices = chunk.get("choices")
                if isinstance(choices, list) and choices and isinstance(choices[0], dict) and choices[0].get("text"):
                    first_text = now if first_text is None else first_text
                    last_text = now
                    text_chunks += 1
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
    except httpx.ConnectError as exc:
        return _Outcome(reason=f"cannot reach {base_url}: {exc or type(exc).__name__}", unreachable=True)
    except httpx.TimeoutException as exc:
        return _Outcome(reason=f"{type(exc).__name__}: nothing received for {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return _Outcome(reason=f"broken stream: {type(exc).__name__}: {exc}")
    if done_at is None:
        return _Outcome(reason="broken stream: it ended before data: [DONE]")
    tokens = _int_or_none((usage or {}).get("completion_tokens"))
    tokens = text_chunks if tokens is None else tokens
    if tokens < 1 or first_text is None or last_text is None:
        return _Outcome(reason=f"no output token (completion_tokens={tokens}, text chunks={text_chunks})")
    return _Outcome(
        duration_s=done_at - start,
        ttft_s=first_text - start,
        decode_s=last_text - first_text,
        completion_tokens=tokens,
        prompt_tokens=_int_or_none((usage or {}).get("prompt_tokens")),
    )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def run_point(
    client: httpx.AsyncClient,
    base_url: str,
    model: str,
    point: SweepPoint,
    *,
    requests_per_point: int | None = None,
    api_key: str | None = None,
    timeout_s: float = 300.0,
) -> PointResult:
    """Measure one point: max(concurrency, requests_per_point) requests from
    `concurrency` closed-loop users. timeout_s bounds each wait of a request
    (connecting, and the silence between two chunks), not its whole duration,
    since a long answer under load is legitimately slow. The client's
    connection limits must allow `concurrency` connections, or its pool
    becomes a queue the measurements include (run_sweep sizes its own).
    Raises BenchmarkError when every request failed."""
    if requests_per_point is not None and requests_per_point < 1:
        raise ValueError(f"requests_per_point must be >= 1, got {requests_per_point}")
    completions_url(base_url)  # a bad URL fails here, once, rather than as every request's reason
    headers = _headers(api_key)
    total = max(point.concurrency, requests_per_point or point.concurrency)
    outcomes: list[_Outcome] = []
    remaining = iter(range(total))

    async def user() -> None:
        for _ in remaining:  # shared: each user takes the next request when its previous one is done
            outcomes.append(await _one_request(client, base_url, model, point, headers, timeout_s))

    started = time.perf_counter()
    async with asyncio.TaskGroup() as users:
        for _ in range(point.concurrency):
            users.create_task(user())
    wall_s = time.perf_counter() - started

    succeeded = [o for o in outcomes if o.ok]
    if not succeeded:
        raise BenchmarkError(f"point {point.describe()}: all {total} requests failed; first: {outcomes[0].reason}")
    multi = [o for o in succeeded if o.completion_tokens > 1 and o.duration_s > o.ttft_s]
    prompts = [o.prompt_tokens for o in succeeded if o.prompt_tokens is not None]
    return PointResult(
        point=point,
        requests=total,
        failed=total - len(succeeded),
        ttft_ms=_mean([o.ttft_s * 1000 for o in succeeded]),
        tpot_ms=_mean([o.decode_s / (o.completion_tokens - 1) * 1000 if o.completion_tokens > 1 else 0.0
                       for o in succeeded]),
        e2e_latency_s=_mean([o.duration_s for o in succeeded]),
        throughput_per_user=_mean([o.completion_tokens / (o.duration_s - o.ttft_s) for o in multi]),
        total_throughput=sum(o.completion_tokens for o in succeeded) / wall_s if wall_s > 0 else 0.0,
        prompt_tokens=_mean(prompts),
        completion_tokens=_mean([o.completion_tokens for o in succeeded]),
    )


async def run_sweep(
    base_url: str,
    model: str,
    points: Sequence[SweepPoint],
    *,
    requests_per_point: int | None = None,
    api_key: str | None = None,
    timeout_s: float = 300.0,
    warmup: bool = True,
    on_point: Callable[[PointResult], Awaitable[None] | None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[PointResult]:
    """Measure the points in order, after one unrecorded warm-up request
    (first-request costs such as compilation and connection setup belong to no
    point). on_point (sync or async) gets each result as it comes, so a caller
    keeps what was measured if a later point fails; should_stop is asked
    before each point, so a cancelled job stops between points with the
    results so far. A point whose requests all fail raises BenchmarkError."""
    completions_url(base_url)
    if not points:
        return []
    most = max(point.concurrency for point in points)
    limits = httpx.Limits(max_connections=most + 1, max_keepalive_connections=most + 1)
    # trust_env=False: the target is a local service; a proxy from the environment would be measured too.
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s, trust_env=False) as client:
        if warmup:
            first = points[0]
            probe = SweepPoint(1, first.input_tokens, min(first.output_tokens, WARMUP_OUTPUT_TOKENS))
            outcome = await _one_request(client, base_url, model, probe, _headers(api_key), timeout_s)
            if outcome.unreachable:
                raise BenchmarkError(outcome.reason)
            if not outcome.ok:
                raise BenchmarkError(f"warm-up request to {base_url} failed: {outcome.reason}")
        results: list[PointResult] = []
        for point in points:
            if should_stop is not None and should_stop():
                break
            result = await run_point(
                client, base_url, model, point,
                requests_per_point=requests_per_point, api_key=api_key, timeout_s=timeout_s,
            )
            results.append(result)
            if on_point is not None:
                notified = on_point(result)
                if inspect.isawaitable(notified):
                    await notified
        return results
