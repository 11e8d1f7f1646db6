"""The drift service as the orchestrator will run it: models/drift/server.py as
a real process with its own environment (./scripts/install.sh --engine drift;
override with MODELYARD_DRIFT_PYTHON) on a state directory of its own, driven
over HTTP: monitor CRUD and validation, detection and alerts (latency,
de-duplication, cooldown, webhook, Prometheus), per-model status, reports,
bad input, and events surviving a kill -9."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from statistics import NormalDist
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until
from tests.support.api_errors import assert_error
from tests.support.engine_process import Engine, start_engine

STANDARD = NormalDist()


def normal(n: int, shift: float = 0.0, seed: int | None = None) -> list[float]:
    """n standard normal quantiles moved by shift: a sample without sampling noise
    (so every severity below is exact), shuffled when seed is given."""
    values = [STANDARD.inv_cdf((i + 0.5) / n) + shift for i in range(n)]
    if seed is not None:
        random.Random(seed).shuffle(values)
    return values


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    state = tmp_path_factory.mktemp("drift")
    # The tests' webhook sink listens on loopback, which a service refuses by default.
    started = start_engine("drift", state / "drift.log", "--state-dir", str(state), "--allow-private-webhooks")
    yield started
    started.stop()


@pytest.fixture
def client(service: Engine) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30) as http:
        yield http


def create(client: httpx.Client, **body: Any) -> dict[str, Any]:
    body.setdefault("name", unique("mon"))
    response = client.post("/drift/monitors", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def ingest(client: httpx.Client, monitor: str, events: list[dict[str, Any]], status: int = 200) -> dict[str, Any]:
    # json.dumps, not httpx's encoder: that one refuses NaN, which a client may well send.
    response = client.post("/drift/ingest", content=json.dumps({"monitor": monitor, "events": events}),
                           headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    return response.json()


def numeric_events(values: list[float], feature: str = "x") -> list[dict[str, Any]]:
    return [{feature: value} for value in values]


def alerts(client: httpx.Client, monitor: str) -> list[dict[str, Any]]:
    response = client.get("/drift/alerts", params={"monitor": monitor})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


# ---------------------------------------------------------------- monitors


def test_monitor_crud(client: httpx.Client) -> None:
    name = unique("crud")
    created = create(client, name=name, model="crud-model", features=[{"name": "latency", "kind": "numeric"},
                                                                      {"name": "route", "kind": "categorical"}],
                     window={"kind": "sliding", "size": 100})
    assert created["id"].startswith("mon_") and created["name"] == name
    assert created["algorithms"] == ["psi", "kl_divergence", "js_distance", "ks", "wasserstein", "chi_square"]
    assert created["alert_severity"] == "medium" and created["cooldown_seconds"] == 300
    assert created["window"] == {"kind": "sliding", "size": 100}
    assert client.get(f"/drift/monitors/{created['id']}").json()["name"] == name
    assert client.get(f"/drift/monitors/{name}").json()["id"] == created["id"]  # by name too
    listed = client.get("/drift/monitors", params={"model": "crud-model"}).json()["data"]
    assert [m["id"] for m in listed] == [created["id"]]
    assert_error(client.post("/drift/monitors", json={"name": name, "features": [{"name": "a", "kind": "numeric"}]}),
                 409, "name", "monitor_exists")

    ingest(client, name, [{"latency": 1.0, "route": "a"}] * 10)
    patched = client.patch(f"/drift/monitors/{name}", json={"cooldown_seconds": 5, "alert_severity": "high",
                                                            "algorithms": ["ks", "chi_square"]})
    assert patched.status_code == 200, patched.text
    assert patched.json()["restarted"] is False and patched.json()["events_seen"] == 10
    assert patched.json()["algorithms"] == ["ks", "chi_square"] and patched.json()["alert_severity"] == "high"
    restarted = client.patch(f"/drift/monitors/{name}", json={"window": {"kind": "tumbling", "size": 50}}).json()
    assert restarted["restarted"] is True and restarted["events_seen"] == 0
    assert restarted["window"] == {"kind": "tumbling", "size": 50}
    assert_error(client.patch(f"/drift/monitors/{name}", json={"algorithms": ["ks"]}), 400, "algorithms",
                 "kind_mismatch")  # route is categorical: ks cannot watch it
    assert_error(client.patch(f"/drift/monitors/{name}", json={"colour": "red"}), 400, "colour")

    deleted = client.delete(f"/drift/monitors/{created['id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert_error(client.get(f"/drift/monitors/{created['id']}"), 404, None, "monitor_not_found")
    assert_error(client.delete(f"/drift/monitors/{created['id']}"), 404, None, "monitor_not_found")
    assert_error(client.get("/drift/monitors/nope/status"), 404, None, "monitor_not_found")


NUMERIC = [{"name": "x", "kind": "numeric"}]
CATEGORICAL = [{"name": "c", "kind": "categorical"}]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"features": NUMERIC, "algorithms": ["psi", "magic"]}, "algorithms.1", "invalid_request"),
        ({"features": NUMERIC, "window": {"kind": "sliding", "size": 0}}, "window.size", "invalid_request"),
        ({"features": NUMERIC, "window": {"kind": "sliding", "size": 10**6}}, "window.size", "invalid_request"),
        ({"features": NUMERIC, "window": {"kind": "sliding", "size": "big"}}, "window.size", "invalid_request"),
        ({"features": NUMERIC, "window": {"kind": "hopping"}}, "window.kind", "invalid_request"),
        ({"features": [{"name": "x", "kind": "text"}]}, "features.0.kind", "invalid_request"),
        ({"features": []}, "features", "invalid_request"),
        ({"features": NUMERIC * 2}, "features.1.name", "duplicate_feature"),
        ({"features": CATEGORICAL, "window": {"kind": "adwin", "size": 100}}, "window.kind", "kind_mismatch"),
        ({"features": CATEGORICAL, "algorithms": ["ks"]}, "algorithms", "kind_mismatch"),
        ({"features": NUMERIC, "window": {"kind": "sliding", "reference_size": 100}}, "window.reference_size",
         "invalid_value"),
        ({"features": NUMERIC, "window": {"kind": "fixed", "reference": {"x": normal(50), "y": normal(50)}}},
         "window.reference.y", "unknown_feature"),
        ({"features": NUMERIC + CATEGORICAL, "window": {"kind": "fixed", "reference": {"x": normal(50)}}},
         "window.reference", "missing_feature"),
        ({"features": NUMERIC, "window": {"kind": "fixed", "reference": {"x": [*normal(40), "slow"]}}},
         "window.reference.x.40", "kind_mismatch"),
        ({"features": NUMERIC, "window": {"kind": "fixed", "reference": {"x": normal(10)}}}, "window.reference.x",
         "invalid_value"),
        ({"features": NUMERIC, "thresholds": {"psi": {"medium": 0.5, "high": 0.3}}}, "thresholds.psi",
         "invalid_value"),
        ({"features": NUMERIC, "webhook": "ftp://example.com/hook"}, "webhook", "invalid_value"),
        ({"features": NUMERIC, "alert_severity": "none"}, "alert_severity", "invalid_request"),
        ({"features": NUMERIC, "colour": "red"}, "colour", "invalid_request"),
        ({"features": NUMERIC, "name": "has spaces"}, "name", "invalid_request"),
    ],
)
def test_bad_monitors_get_precise_400s(client: httpx.Client, body: dict[str, Any], param: str, code: str) -> None:
    body = {"name": unique("bad"), **body}
    assert_error(client.post("/drift/monitors", json=body), 400, param, code)


# ---------------------------------------------------------------- detection and alerts


class WebhookSink:
    """A tiny HTTP server that keeps the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    server = WebhookSink()
    yield server
    server.close()


def test_drift_raises_one_alert_per_news_quickly_with_webhook_and_gauge(client: httpx.Client,
                                                                       sink: WebhookSink) -> None:
    name = unique("latency")
    monitor = create(client, name=name, model="model-a", features=NUMERIC, webhook=sink.url,
                     window={"kind": "fixed", "size": 500, "reference": {"x": normal(1000)}})
    quiet = ingest(client, name, numeric_events(normal(500, seed=1)))
    assert quiet["accepted"] == 500 and quiet["severity"] == "none" and quiet["alert"] is None

    began = time.monotonic()
    drifted = ingest(client, name, numeric_events(normal(500, 0.4, seed=2)))  # 0.4 sd: medium on every algorithm
    rows: list[dict[str, Any]] = []
    while not rows and time.monotonic() - began < 10:
        rows = alerts(client, monitor["id"])
    latency = time.monotonic() - began
    print(f"\ndrift detection latency, from the drifted batch's POST to the alert row: {latency * 1000:.0f} ms "
          f"(evaluation {drifted['evaluation_seconds'] * 1000:.1f} ms)")
    assert latency < 5, latency
    assert drifted["severity"] == "medium" and drifted["alert"]["severity"] == "medium"
    assert len(rows) == 1 and rows[0]["severity"] == "medium" and rows[0]["drifted"] == ["x"]
    assert rows[0]["reason"] == "first" and rows[0]["features"]["x"]["worst"]["value"] > 0

    again = ingest(client, name, numeric_events(normal(500, 0.4, seed=3)))  # the same news within the cooldown
    assert again["severity"] == "medium" and again["alert"] is None
    assert len(alerts(client, name)) == 1
    higher = ingest(client, name, numeric_events(normal(500, 0.7, seed=4)))  # 0.7 sd: high
    assert higher["severity"] == "high" and higher["alert"]["reason"] == "higher_severity"
    assert [row["severity"] for row in alerts(client, name)] == ["high", "medium"]  # newest first
    lower = ingest(client, name, numeric_events(normal(500, 0.4, seed=5)))
    assert lower["severity"] == "medium" and lower["alert"] is None

    payloads = sink.wait_for(2)
    assert [p["alert"]["severity"] for p in payloads] == ["medium", "high"], payloads
    assert payloads[0]["type"] == "modelyard.drift.alert" and payloads[0]["alert"]["monitor"] == name
    deadline = time.monotonic() + 5
    while any(row["webhook_status"] != "200" for row in alerts(client, name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [row["webhook_status"] for row in alerts(client, name)] == ["200", "200"]
    since = alerts(client, name)[0]["ts"]
    assert len(client.get("/drift/alerts", params={"monitor": name, "since": since}).json()["data"]) == 1
    assert_error(client.get("/drift/alerts", params={"since": "yesterday"}), 400, "since")

    status = client.get(f"/drift/monitors/{name}/status").json()
    assert status["severity"] == "medium" and status["events_seen"] == 2500
    assert status["features"]["x"]["window"]["reference"] == 1000
    assert status["features"]["x"]["window"]["current"] == 500
    assert status["features"]["x"]["results"]["ks"]["severity"] == "medium"
    assert status["last_alert"]["severity"] == "high"

    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert metric(metrics.text, "modelyard_drift_severity", monitor=name, model="model-a") == 2  # medium
    assert metric(metrics.text, "modelyard_drift_alerts_total", monitor=name, severity="medium") == 1
    assert metric(metrics.text, "modelyard_drift_alerts_total", monitor=name, severity="high") == 1
    assert metric(metrics.text, "modelyard_drift_alerts_suppressed_total", monitor=name, reason="duplicate") == 1
    assert metric(metrics.text, "modelyard_drift_events_total", monitor=name) == 2500


def test_cooldown_over_alerts_again(client: httpx.Client) -> None:
    name = unique("cool")
    create(client, name=name, features=NUMERIC, cooldown_seconds=2.0,
           window={"kind": "fixed", "size": 200, "reference": {"x": normal(1000)}})
    assert ingest(client, name, numeric_events(normal(200, 2.0)))["alert"]["severity"] == "critical"
    assert ingest(client, name, numeric_events(normal(200, 2.0)))["alert"] is None
    time.sleep(2.1)
    assert ingest(client, name, numeric_events(normal(200, 2.0)))["alert"]["reason"] == "cooldown_over"


def test_adwin_finds_a_change_and_grades_it(client: httpx.Client) -> None:
    name = unique("adwin")
    create(client, name=name, features=NUMERIC, window={"kind": "adwin", "size": 200})
    before = ingest(client, name, numeric_events(normal(500, seed=10)))
    assert before["severity"] == "none"
    assert client.get(f"/drift/monitors/{name}/status").json()["features"]["x"]["window"]["change_points"] == []
    after = ingest(client, name, numeric_events(normal(300, 1.5, seed=11)))
    assert after["severity"] == "critical" and after["alert"]["severity"] == "critical"
    window = client.get(f"/drift/monitors/{name}/status").json()["features"]["x"]["window"]
    assert [500 <= point < 600 for point in window["change_points"]] == [True], window
    assert window["reference"] == window["current"] == 200


def test_model_status_is_the_worst_of_its_monitors(client: httpx.Client) -> None:
    model = f"org/{unique('model')}"  # a model id with a slash
    calm = create(client, model=model, features=CATEGORICAL, window={"kind": "sliding", "size": 100})
    ingest(client, calm["id"], [{"c": "abc"[i % 3]} for i in range(200)])
    assert client.get(f"/drift/models/{model}/status").json()["severity"] == "none"
    hot = create(client, model=model, features=NUMERIC,
                 window={"kind": "fixed", "size": 200, "reference": {"x": normal(1000)}})
    assert ingest(client, hot["id"], numeric_events(normal(200, 0.7)))["severity"] == "high"
    status = client.get(f"/drift/models/{model}/status").json()
    assert status["severity"] == "high"
    assert {m["id"]: m["severity"] for m in status["monitors"]} == {calm["id"]: "none", hot["id"]: "high"}
    metrics = client.get("/metrics").text
    assert metric(metrics, "modelyard_drift_model_severity", model=model) == 3
    assert_error(client.get("/drift/models/nobody/status"), 404, "model", "model_not_monitored")


def test_report_has_histograms_and_unseen_categories(client: httpx.Client) -> None:
    name = unique("routes")
    create(client, name=name, features=CATEGORICAL + NUMERIC, window={"kind": "tumbling", "size": 300})
    first = [{"c": "abc"[i % 3], "x": value} for i, value in enumerate(normal(300, seed=6))]
    second = [{"c": "z" if i % 5 < 2 else "abc"[i % 3], "x": value} for i, value in enumerate(normal(300, seed=7))]
    assert ingest(client, name, first)["severity"] == "none"
    assert ingest(client, name, second)["severity"] == "critical"  # 40% of a category never seen
    report = client.get(f"/drift/monitors/{name}/report").json()
    assert report["severity"] == "critical" and report["thresholds"]["psi"]["medium"] == 0.1
    categories = {r["name"]: r for r in report["features"]["c"]["drift"]["results"]}
    assert categories["chi_square"]["unseen"] == ["z"] and categories["chi_square"]["unseen_count"] == 120
    assert categories["psi"]["categories"][-1] == "<unseen>"
    numbers = {r["name"]: r for r in report["features"]["x"]["drift"]["results"]}
    psi = numbers["psi"]
    assert len(psi["edges"]) == 9 and len(psi["reference"]) == len(psi["current"]) == 10
    assert abs(sum(psi["reference"]) - 1) < 1e-9 and numbers["ks"]["severity"] == "none"
    assert report["features"]["x"]["window"] == {"kind": "tumbling", "size": 300, "reference": 300, "current": 300,
                                                 "closed_windows": 2, "filling": 0, "held": 600}


def test_bad_events_get_precise_errors_and_nan_is_counted(client: httpx.Client) -> None:
    name = unique("input")
    create(client, name=name, features=NUMERIC + CATEGORICAL, window={"kind": "sliding", "size": 50})
    fresh = client.get(f"/drift/monitors/{name}/status").json()
    assert fresh["severity"] == "none" and fresh["features"]["x"]["ready"] is False
    assert "filling" in fresh["features"]["x"]["note"]

    nan = ingest(client, name, [{"x": float("nan"), "c": "a"}, {"x": None, "c": "b"}, {"x": float("inf")},
                                {"x": 1.5, "c": 7}, {"c": True}])
    assert nan["accepted"] == 5 and nan["dropped_nan"] == 3  # NaN, null and inf; missing values are not NaN
    status = client.get(f"/drift/monitors/{name}/status").json()
    assert status["events_seen"] == 5
    assert status["features"]["x"]["dropped"] == 4 and status["features"]["c"]["dropped"] == 1

    def rejected(events: list[dict[str, Any]], param: str, code: str) -> None:
        response = client.post("/drift/ingest", content=json.dumps({"monitor": name, "events": events}),
                               headers={"content-type": "application/json"})
        assert_error(response, 400, param, code)

    rejected([{"x": 1.0}, {"x": 2.0, "bogus": 1}], "events.1.bogus", "unknown_feature")
    rejected([{"x": "fast"}], "events.0.x", "kind_mismatch")
    rejected([{"c": "a"}, {"c": 0.5}], "events.1.c", "kind_mismatch")
    rejected([{"x": True}], "events.0.x", "kind_mismatch")
    rejected([{"x": [1, 2]}], "events.0.x", "invalid_value")
    rejected([], "events", "empty_batch")
    rejected([{}], "events.0", "empty_event")
    assert client.get(f"/drift/monitors/{name}").json()["events_seen"] == 5  # a rejected batch adds nothing
    assert_error(client.post("/drift/ingest", json={"monitor": "no-such", "events": [{"x": 1}]}), 404, "monitor",
                 "monitor_not_found")
    assert_error(client.post("/drift/ingest", json={"monitor": name, "events": [{"x": 1}], "extra": 1}), 400,
                 "extra")
    assert_error(client.post("/drift/ingest", json={"monitor": name}), 400, "events")
    assert_error(client.post("/drift/ingest", content=b"{not json", headers={"content-type": "application/json"}),
                 400, None)


# ---------------------------------------------------------------- durability


def window_view(status: dict[str, Any]) -> dict[str, Any]:
    return {"severity": status["severity"], "events_seen": status["events_seen"],
            "features": {name: (f["window"], f["dropped"], f["severity"], {k: r["value"] for k, r in
                                                                            f["results"].items()})
                         for name, f in status["features"].items()}}


def test_accepted_events_survive_kill_9_and_detection_continues(tmp_path: Path) -> None:
    argv = ("--state-dir", str(tmp_path), "--keep-events", "0")
    first = start_engine("drift", tmp_path / "first.log", *argv)
    windows = {"sliding": {"kind": "sliding", "size": 100}, "tumbling": {"kind": "tumbling", "size": 100},
               "fixed": {"kind": "fixed", "size": 100, "reference_size": 100}}
    try:
        with httpx.Client(base_url=first.url, timeout=30) as client:
            for name, window in windows.items():
                create(client, name=name, features=NUMERIC + CATEGORICAL, window=window)
            values = normal(350, seed=8)
            for start in range(0, 350, 50):
                batch = [{"x": value, "c": "ab"[i % 2]} for i, value in enumerate(values[start:start + 50], start)]
                batch[0]["x"] = float("nan")
                for name in windows:
                    ingest(client, name, batch)
            before = {name: window_view(client.get(f"/drift/monitors/{name}/status").json()) for name in windows}
    finally:
        first.process.kill()  # SIGKILL, right after the last answer
        first.process.wait(10)
    assert before["sliding"]["features"]["x"][0]["held"] == 200
    assert before["fixed"]["features"]["x"][0]["reference_frozen"] is True

    second = start_engine("drift", tmp_path / "second.log", *argv)
    try:
        with httpx.Client(base_url=second.url, timeout=30) as client:
            after = {name: window_view(client.get(f"/drift/monitors/{name}/status").json()) for name in windows}
            assert after == before  # every accepted event is back in its window
            with sqlite3.connect(tmp_path / "drift.db") as db:  # retention: what the windows need, no more
                kept = dict(db.execute("SELECT m.name, count(*) FROM events e JOIN monitors m ON m.id = e.monitor_id "
                                       "GROUP BY m.name").fetchall())
            assert kept == {"sliding": 200, "tumbling": 300, "fixed": 200}

            drifted = [{"x": value, "c": "b"} for value in normal(100, 2.0, seed=9)]
            result = ingest(client, "sliding", drifted)
            assert result["severity"] == "critical" and result["alert"]["severity"] == "critical"
            tumbling = ingest(client, "tumbling", drifted[:50])  # closes the window the kill left half full
            assert tumbling["events_seen"] == 400 and tumbling["severity"] in ("high", "critical"), tumbling
            status = client.get("/drift/monitors/tumbling/status").json()
            assert status["features"]["x"]["window"]["closed_windows"] == 4
            assert status["features"]["x"]["window"]["filling"] == 0
    finally:
        second.stop()


def test_webhooks_to_internal_addresses_are_refused_unless_allowed() -> None:
    from models.drift.alerts import check_webhook, private_address

    for internal in ("http://127.0.0.1:8080/hook", "http://169.254.169.254/latest/meta-data", "http://10.1.2.3/x",
                     "http://localhost/hook", "http://[::1]/hook"):
        assert private_address(internal) is not None, internal
    assert private_address("http://8.8.8.8/hook") is None
    for bad_url in ("http://user:secret@example.com/hook", "http://example.com:99999/hook", "ftp://example.com/x"):
        with pytest.raises(Exception) as refused:
            check_webhook(bad_url)
        assert refused.value.status == 400  # type: ignore[attr-defined]


# ---------------------------------------------------------------- embeddings


EMBEDDING = [{"name": "prompt", "kind": "embedding"}]


def vectors(n: int, moved: float, seed: int, dim: int = 16) -> list[list[float]]:
    """n vectors of unit normal noise around cluster A (the origin) or, for a
    `moved` share of them, cluster B (6 noise standard deviations away)."""
    rng = random.Random(seed)
    far = 6.0 / dim**0.5  # B sits at (far, ..., far): 6 from A
    return [[rng.gauss(far if index < moved * n else 0.0, 1.0) for _ in range(dim)] for index in range(n)]


def embedding_events(n: int, moved: float, seed: int) -> list[dict[str, Any]]:
    return [{"prompt": vector} for vector in vectors(n, moved, seed)]


def test_embedding_drift_is_detected_alerted_and_reported_over_http(client: httpx.Client) -> None:
    name = unique("prompts")
    create(client, name=name, model="embed-model", features=EMBEDDING + NUMERIC,
           window={"kind": "fixed", "size": 200, "reference_size": 300})
    reference = [{**event, "x": value} for event, value in zip(embedding_events(300, 0.0, 20), normal(300, seed=21),
                                                               strict=True)]
    assert ingest(client, name, reference)["severity"] == "none"
    calm = ingest(client, name, [{**event, "x": value} for event, value in zip(embedding_events(200, 0.0, 22),
                                                                               normal(200, seed=24), strict=True)])
    assert calm["severity"] == "none" and calm["alert"] is None

    drifted = ingest(client, name, embedding_events(200, 0.5, 23))  # half the prompts in a new cluster
    assert drifted["severity"] == "critical" and drifted["alert"]["severity"] == "critical"
    print(f"\nembedding evaluation, 300 vs 200 vectors of 16 dimensions: {drifted['evaluation_seconds'] * 1000:.1f} ms")
    rows = alerts(client, name)
    assert len(rows) == 1 and "prompt" in rows[0]["drifted"]
    status = client.get(f"/drift/monitors/{name}/status").json()
    feature = status["features"]["prompt"]
    assert feature["kind"] == "embedding" and feature["severity"] == "critical"
    assert set(feature["results"]) == {"ks", "wasserstein"} and feature["worst"]["severity"] == "critical"
    assert feature["window"]["dimension"] == 16 and feature["window"]["reference"] == 300
    report = client.get(f"/drift/monitors/{name}/report").json()
    assert set(report["features"]["prompt"]) == set(report["features"]["x"])
    ks = next(r for r in report["features"]["prompt"]["drift"]["results"] if r["name"] == "ks")
    assert ks["dimension"] == 16 and ks["worst_component"] == 0 and len(ks["components"]) == 10
    assert abs(ks["value"] - 0.5) < 0.1  # about the share of vectors that moved

    def rejected(body: dict[str, Any], param: str, code: str, path: str = "/drift/ingest") -> None:
        response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        assert_error(response, 400, param, code)

    rejected({"monitor": name, "events": [{"prompt": [1.0] * 8}]}, "events.0.prompt", "dimension_mismatch")
    rejected({"monitor": name, "events": [{"prompt": "a prompt"}]}, "events.0.prompt", "kind_mismatch")
    rejected({"monitor": name, "events": [{"prompt": [1.0, "x"] * 8}]}, "events.0.prompt.1", "invalid_value")
    nan = ingest(client, name, [{"prompt": [float("nan")] + [0.0] * 15}, {"prompt": None}])
    assert nan["dropped_nan"] == 2
    rejected({"name": unique("bad"), "features": EMBEDDING, "window": {"kind": "adwin", "size": 100}},
             "window.kind", "kind_mismatch", "/drift/monitors")
    rejected({"name": unique("bad"), "features": EMBEDDING, "window": {"kind": "sliding", "size": 5001}},
             "window.size", "invalid_value", "/drift/monitors")


def test_embedding_windows_survive_kill_9(tmp_path: Path) -> None:
    argv = ("--state-dir", str(tmp_path), "--keep-events", "0")
    first = start_engine("drift", tmp_path / "first.log", *argv)
    try:
        with httpx.Client(base_url=first.url, timeout=30) as client:
            create(client, name="prompts", features=EMBEDDING, window={"kind": "sliding", "size": 100})
            for start in range(0, 250, 50):
                batch = embedding_events(50, 0.0, 30 + start)
                batch[0]["prompt"][3] = float("nan")  # a vector holding NaN: stored as null
                ingest(client, "prompts", batch)
            before = window_view(client.get("/drift/monitors/prompts/status").json())
    finally:
        first.process.kill()  # SIGKILL, right after the last answer
        first.process.wait(10)
    assert before["features"]["prompt"][0]["held"] == 200 and before["features"]["prompt"][1] == 5

    second = start_engine("drift", tmp_path / "second.log", *argv)
    try:
        with httpx.Client(base_url=second.url, timeout=30) as client:
            after = window_view(client.get("/drift/monitors/prompts/status").json())
            assert after == before  # the same vectors, the same figures
            assert_error(client.post("/drift/ingest", json={"monitor": "prompts", "events": [{"prompt": [0.0] * 4}]}),
                         400, "events.0.prompt", "dimension_mismatch")  # the replay fixed the dimension again
            result = ingest(client, "prompts", embedding_events(100, 0.6, 40))
            assert result["severity"] == "critical" and result["alert"]["severity"] == "critical"
    finally:
        second.stop()


def test_small_batches_are_evaluated_together_and_still_raise_their_alert(tmp_path: Path) -> None:
    """Batches under a quarter of the window, arriving within --evaluate-every
    of the last evaluation, are evaluated together: their answers say
    "evaluated": false and carry no alert; the alert comes from the evaluation
    that follows, with no request to trigger it, or from a PATCH meanwhile."""
    # 10 s: wide enough that a loaded CI machine still sends all 20 small batches within it
    service = start_engine("drift", tmp_path / "drift.log", "--state-dir", str(tmp_path), "--evaluate-every", "10")
    try:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            later, patched = (create(client, features=[{"name": "x", "kind": "numeric"}],
                                     window={"kind": "fixed", "size": 400, "reference_size": 400}) for _ in range(2))
            drifted = numeric_events(normal(400, shift=2.0, seed=2))
            for made in (later, patched):
                assert ingest(client, made["id"], numeric_events(normal(400, seed=1)))["evaluated"] is True
                answers = [ingest(client, made["id"], drifted[start:start + 20]) for start in range(0, 400, 20)]
                assert [answer["evaluated"] for answer in answers] == [False] * 20
                assert all(answer["alert"] is None and answer["severity"] == "none" for answer in answers)
            assert client.patch(f"/drift/monitors/{patched['id']}", json={"cooldown_seconds": 60}).status_code == 200
            assert [alert["severity"] for alert in alerts(client, patched["id"])] == ["critical"]  # at once
            # GET /drift/alerts evaluates nothing: what it lists, the deferred evaluation raised.
            assert alerts(client, later["id"]) == []
            assert wait_until(lambda: len(alerts(client, later["id"])) == 1, 20)
            status = client.get(f"/drift/monitors/{later['id']}/status").json()
            assert status["events_seen"] == 800 and status["severity"] == "critical"
    finally:
        service.stop()
