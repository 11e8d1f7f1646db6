"""The request feed into the drift service (orchestrator/drift_feed.py): what
one request becomes, that events wait in drift_feed.db while the service is
down and arrive in order once it is back, that the backlog is bounded, and
that prompts reach only the embedder, never the disk. The receiving side is a
real HTTP server standing in for the drift service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from orchestrator.drift_feed import DriftFeed, FeedMetrics, prompt_text, request_features
from orchestrator.usage import StreamUsage, Usage, finish_reason_of, usage_of_answer


class Receiver:
    """A stand-in drift service: records the batches POSTed to /drift/requests."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.status = 200
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/drift/requests", self.take)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def take(self, request: web.Request) -> web.Response:
        if self.status != 200:
            return web.json_response({"error": {"message": "down"}}, status=self.status)
        self.batches.append((await request.json())["events"])
        return web.json_response({"accepted": len(self.batches[-1])})

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def seqs(self) -> list[int]:
        return [event["seq"] for batch in self.batches for event in batch]


def feed_at(path: Path, receiver: Receiver | None, **kwargs: Any) -> DriftFeed:
    async def url_of() -> str:
        if receiver is None:
            raise RuntimeError("the drift service is not available: it is starting")
        return receiver.url

    return DriftFeed(path, url_of, FeedMetrics(CollectorRegistry()), **kwargs)


def features(n: int) -> dict[str, Any]:
    return {"latency_ms": float(n), "status": "200"}


def test_a_request_becomes_the_documented_features() -> None:
    usage = Usage(prompt_tokens=12, completion_tokens=30, finish_reason="length")
    streamed = request_features("/v1/chat/completions", "chat", 200, None, 0.25, 0.05, True, "key_1", "acme",
                                usage)
    assert streamed == {"latency_ms": 250.0, "ttft_ms": 50.0, "status": "200", "error": "none",
                        "route": "/v1/chat/completions", "model": "chat", "key": "key_1", "tenant": "acme",
                        "stream": "true", "prompt_tokens": 12, "completion_tokens": 30, "finish_reason": "length"}
    refused = request_features("/v1/embeddings", "emb", 429, "rate_limited", 0.001, 0.001, False, None, None, None)
    assert refused["error"] == "rate_limited" and refused["key"] == "anonymous" and refused["tenant"] == "none"
    assert "ttft_ms" not in refused and "prompt_tokens" not in refused  # what it did not have is absent
    assert request_features("/v1/completions", "m", 502, None, 1, None, False, None, None, None)["error"] == "http_502"


def test_the_prompt_to_embed_is_the_last_user_message_or_the_text_prompt() -> None:
    chat = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
                         {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": [{"type": "text", "text": "tell"}, {"type": "image_url"},
                                                      {"type": "text", "text": "me"}]}]}
    assert prompt_text(chat) == "tell me"
    assert prompt_text({"prompt": "once upon"}) == "once upon"
    assert prompt_text({"prompt": [1, 2, 3]}) is None  # token ids are not text
    assert prompt_text({"messages": [{"role": "user", "content": ""}]}) is None


def test_finish_reasons_are_read_from_answers_and_streams() -> None:
    answer = orjson.dumps({"choices": [{"finish_reason": "stop"}, {"finish_reason": "length"}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    found = usage_of_answer("/v1/chat/completions", "application/json", answer)
    assert (found.finish_reason, found.tokens) == ("length", 7)
    assert finish_reason_of(b'{"choices":[{"finish_reason":null}]}') is None
    meter = StreamUsage(strip=True, prompt_estimate=5)
    meter.feed(b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":null}]}\n\n')
    meter.feed(b'data: {"choices":[{"delta":{},"finish_reason": "stop"}]}\n\ndata: [DONE]\n\n')
    assert meter.result().finish_reason == "stop"


async def test_events_wait_while_the_service_is_down_and_arrive_in_order(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        receiver.status = 503
        feed = feed_at(tmp_path / "drift_feed.db", receiver, batch_size=4)
        for n in range(10):
            feed.record("chat", features(n))
        assert await feed.pump() == 0  # refused: the rows stay
        assert feed._count() == 10 and feed.metrics.pending._value.get() == 10
        await feed.close()

        # A new orchestrator on the same state: the events are still there, and go out in order, in batches.
        receiver.status = 200
        feed = feed_at(tmp_path / "drift_feed.db", receiver, batch_size=4)
        feed.record("chat", features(10))
        assert await feed.pump() == 11
        assert receiver.seqs() == list(range(1, 12))
        assert [len(batch) for batch in receiver.batches] == [4, 4, 3]
        assert [event["features"]["latency_ms"] for batch in receiver.batches for event in batch] == \
            [float(n) for n in range(11)]
        assert feed._count() == 0
        assert await feed.pump() == 0  # nothing is sent twice
        await feed.close()
    finally:
        await receiver.stop()


async def test_a_service_that_is_not_running_keeps_the_rows(tmp_path: Path) -> None:
    feed = feed_at(tmp_path / "drift_feed.db", None)
    feed.record("chat", features(1))
    assert await feed.pump() == 0
    assert feed._count() == 1
    await feed.close()


async def test_the_backlog_is_bounded_and_the_oldest_events_go_first(tmp_path: Path) -> None:
    feed = feed_at(tmp_path / "drift_feed.db", None, max_pending=1000)
    for n in range(1500):
        feed.record("chat", features(n))
    await feed.pump()
    assert feed._count() == 1000
    assert feed.metrics.dropped.labels("max_pending")._value.get() == 500
    oldest = feed._oldest(1)[0]
    assert orjson.loads(oldest["features"])["latency_ms"] == 500.0
    await feed.close()


async def test_prompts_are_embedded_and_never_written(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    seen: list[list[str]] = []

    async def embed(texts: list[str]) -> list[list[float]]:
        seen.append(texts)
        return [[float(len(text)), 1.0] for text in texts]

    try:
        feed = feed_at(tmp_path / "drift_feed.db", receiver, embed=embed)
        feed.record("chat", features(1), prompt="a secret prompt")
        feed.record("chat", features(2), prompt=None)
        await feed.write_waiting()
        stored = [orjson.loads(row["features"]) for row in feed._oldest(10)]
        assert stored[0]["prompt_embedding"] == [15.0, 1.0] and "secret" not in orjson.dumps(stored).decode()
        await feed.pump()
        sent = [event["features"] for batch in receiver.batches for event in batch]
        assert seen == [["a secret prompt"]]
        assert sent[0]["prompt_embedding"] == [15.0, 1.0] and "prompt_embedding" not in sent[1]
        feed.record("chat", features(3), prompt="another secret prompt")
        await feed.close()  # written unembedded at shutdown
        files = list(tmp_path.glob("drift_feed.db*"))  # the database, its WAL and shared memory, if left
        assert files and not any(b"secret" in path.read_bytes() for path in files)
    finally:
        await receiver.stop()


async def test_an_embedding_failure_keeps_the_other_features(tmp_path: Path) -> None:
    async def broken(texts: list[str]) -> list[list[float]]:
        raise RuntimeError("model crashed")

    feed = feed_at(tmp_path / "drift_feed.db", None, embed=broken)
    feed.record("chat", features(1), prompt="hello")
    await feed.write_waiting()
    stored = orjson.loads(feed._oldest(1)[0]["features"])
    assert stored == features(1)
    assert feed.metrics.dropped.labels("embedding_failed")._value.get() == 1
    await feed.close()
