"""Monitors fed by the orchestrator's request feed (source: requests), on the
real drift service: which events reach which monitor, that a batch sent
again (its answer lost, or after a kill -9) is not counted twice, that only
features requests have are accepted, and that a latency shift in the feed
raises an alert."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engines.test_drift_service import unique
from tests.support.engine_process import Engine, start_engine


def start(state: Path) -> Engine:
    return start_engine("drift", state / "drift.log", "--state-dir", str(state))


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("drift-requests")


@pytest.fixture(scope="module")
def service(state: Path) -> Iterator[Engine]:
    started = start(state)
    yield started
    started.stop()


@pytest.fixture
def client(service: Engine) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30) as http:
        yield http


class Feed:
    """What the orchestrator's DriftFeed sends: events with rising seq numbers."""

    def __init__(self, start: int = 1, feed: str = "feed-1") -> None:
        self.seq = start - 1
        self.feed = feed

    def body(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        return {"feed": self.feed, "events": events}

    def events(self, model: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        made = []
        for row in rows:
            self.seq += 1
            made.append({"seq": self.seq, "ts": 1_700_000_000.0 + self.seq, "model": model, "features": row})
        return made


def monitor(client: httpx.Client, **body: Any) -> dict[str, Any]:
    body = {"name": unique("req"), "source": "requests", **body}
    answer = client.post("/drift/monitors", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def seen(client: httpx.Client, ref: str) -> int:
    return client.get(f"/drift/monitors/{ref}").json()["events_seen"]


def latency_rows(n: int, mean: float, rng: random.Random) -> list[dict[str, Any]]:
    return [{"latency_ms": rng.gauss(mean, 10), "status": "200", "model": "x"} for _ in range(n)]


def test_a_requests_monitor_takes_only_features_requests_have(client: httpx.Client) -> None:
    answer = client.post("/drift/monitors", json={"name": unique("bad"), "source": "requests",
                                                  "features": [{"name": "temperature", "kind": "numeric"}]})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "unknown_feature" and "latency_ms" in answer.json()["error"]["message"]
    answer = client.post("/drift/monitors", json={"name": unique("bad"), "source": "requests",
                                                  "features": [{"name": "status", "kind": "numeric"}]})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "kind_mismatch"
    made = monitor(client, features=[{"name": "latency_ms", "kind": "numeric"}])
    assert made["source"] == "requests"
    pushed = client.post("/drift/ingest", json={"monitor": made["id"], "events": [{"latency_ms": 1.0}]})
    assert pushed.status_code == 409 and pushed.json()["error"]["code"] == "monitor_fed_by_requests"


def test_events_reach_the_monitors_of_their_model_once(client: httpx.Client, state: Path) -> None:
    rng = random.Random(1)
    feed = Feed(start=10_000)  # above any seq an earlier test sent
    only_a = monitor(client, model="model-a", features=[{"name": "latency_ms", "kind": "numeric"}])
    every = monitor(client, features=[{"name": "latency_ms", "kind": "numeric"},
                                      {"name": "model", "kind": "categorical"}])
    ttft = monitor(client, features=[{"name": "ttft_ms", "kind": "numeric"}])
    batch = feed.events("model-a", latency_rows(30, 100, rng)) + feed.events("model-b", latency_rows(20, 100, rng))
    answer = client.post("/drift/requests", json=feed.body(batch))
    assert answer.status_code == 200, answer.text
    assert answer.json()["last_seq"] == feed.seq
    assert (seen(client, only_a["id"]), seen(client, every["id"]), seen(client, ttft["id"])) == (30, 50, 0)

    # The same batch again (the orchestrator never got the answer): nothing is counted twice.
    assert client.post("/drift/requests", json=feed.body(batch)).status_code == 200
    assert (seen(client, only_a["id"]), seen(client, every["id"])) == (30, 50)
    # A batch overlapping the last: only the new events count.
    more = feed.events("model-a", latency_rows(5, 100, rng))
    assert client.post("/drift/requests", json=feed.body(batch[-10:] + more)).status_code == 200
    assert (seen(client, only_a["id"]), seen(client, every["id"])) == (35, 55)


def test_a_batch_sent_again_after_a_kill_is_not_counted_twice(tmp_path: Path) -> None:
    rng = random.Random(2)
    service = start(tmp_path)
    try:
        with httpx.Client(base_url=service.url, timeout=30) as http:
            made = monitor(http, features=[{"name": "latency_ms", "kind": "numeric"}])
            feed = Feed()
            batch = feed.events("m", latency_rows(40, 100, rng))
            assert http.post("/drift/requests", json=feed.body(batch)).status_code == 200
        service.process.kill()  # kill -9: nothing is flushed at exit
        service.process.wait(10)
        service = start(tmp_path)
        with httpx.Client(base_url=service.url, timeout=30) as http:
            assert http.post("/drift/requests", json=feed.body(batch)).status_code == 200
            assert seen(http, made["id"]) == 40
    finally:
        service.stop()


def test_a_latency_shift_in_the_request_feed_raises_an_alert(client: httpx.Client) -> None:
    rng = random.Random(3)
    feed = Feed(start=20_000)
    made = monitor(client, model="x", features=[{"name": "latency_ms", "kind": "numeric"}],
                   window={"kind": "fixed", "size": 200, "reference_size": 200})
    calm = client.post("/drift/requests", json=feed.body(feed.events("x", latency_rows(400, 100, rng))))
    assert calm.status_code == 200
    assert client.get(f"/drift/monitors/{made['id']}/status").json()["severity"] == "none"
    slow = client.post("/drift/requests", json=feed.body(feed.events("x", latency_rows(200, 130, rng))))
    assert slow.status_code == 200
    status = client.get(f"/drift/monitors/{made['id']}/status").json()
    assert status["severity"] in ("high", "critical"), status
    alerts = client.get("/drift/alerts", params={"monitor": made["id"]}).json()["data"]
    assert len(alerts) == 1 and alerts[0]["drifted"] == ["latency_ms"]


def test_overlapping_batches_sent_at_once_count_each_event_once(client: httpx.Client, service: Engine) -> None:
    """A retry after a timeout may overlap a batch still being taken. The feed
    sends in order, every batch from the oldest event not yet acknowledged; the
    service skips, under the monitor's lock, every event it committed."""
    rng = random.Random(4)
    feed = Feed(start=30_000, feed="feed-overlap")
    made = monitor(client, features=[{"name": "latency_ms", "kind": "numeric"}])
    events = feed.events("m", latency_rows(1000, 100, rng))
    bodies = [feed.body(events[:300]), feed.body(events), feed.body(events[:600])] * 2

    def post(body: dict[str, Any]) -> int:
        with httpx.Client(base_url=service.url, timeout=60) as http:
            return http.post("/drift/requests", json=body).status_code

    with ThreadPoolExecutor(len(bodies)) as pool:
        assert list(pool.map(post, bodies)) == [200] * len(bodies)
    assert seen(client, made["id"]) == 1000


def test_a_new_feed_is_counted_from_its_start(client: httpx.Client) -> None:
    """A new drift_feed.db numbers its events from 1 again, under a new feed id."""
    rng = random.Random(5)
    made = monitor(client, features=[{"name": "latency_ms", "kind": "numeric"}])
    old = Feed(start=40_000, feed="feed-old")
    assert client.post("/drift/requests", json=old.body(old.events("m", latency_rows(50, 100, rng)))
                       ).status_code == 200
    new = Feed(feed="feed-new")
    assert client.post("/drift/requests", json=new.body(new.events("m", latency_rows(10, 100, rng)))
                       ).status_code == 200
    assert seen(client, made["id"]) == 60


def test_an_event_a_monitor_refuses_does_not_cost_the_others(client: httpx.Client) -> None:
    made = monitor(client, features=[{"name": "latency_ms", "kind": "numeric"},
                                     {"name": "prompt_embedding", "kind": "embedding"}])
    feed = Feed(start=50_000, feed="feed-refusals")
    first = feed.events("m", [{"latency_ms": 10.0, "prompt_embedding": [0.1, 0.2, 0.3]}] * 2)
    assert client.post("/drift/requests", json=feed.body(first)).status_code == 200  # sets the size: 3
    rows = [{"latency_ms": 10.0, "prompt_embedding": [0.1, 0.2, 0.3]} for _ in range(5)]
    rows[2]["prompt_embedding"] = [0.1, 0.2]  # another size (the embedding model changed, say)
    batch = feed.events("m", rows)
    answer = client.post("/drift/requests", json=feed.body(batch))
    assert answer.status_code == 200 and answer.json()["monitors_fed"] >= 1
    assert seen(client, made["id"]) == 6
    # Sent again, nothing more is counted: its seq was committed with the others'.
    assert client.post("/drift/requests", json=feed.body(batch)).status_code == 200
    assert seen(client, made["id"]) == 6


def test_with_a_token_set_only_its_holder_may_post_the_feed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_DRIFT_FEED_TOKEN", "s3cret-token")
    service = start(tmp_path)
    try:
        with httpx.Client(base_url=service.url, timeout=30) as http:
            body = {"feed": "f", "events": []}
            refused = http.post("/drift/requests", json=body)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "feed_token_invalid"
            wrong = http.post("/drift/requests", json=body, headers={"x-modelyard-feed-token": "guess"})
            assert wrong.status_code == 403
            assert http.post("/drift/requests", json=body,
                             headers={"x-modelyard-feed-token": "s3cret-token"}).status_code == 200
    finally:
        service.stop()
