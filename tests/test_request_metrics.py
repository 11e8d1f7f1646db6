"""Prometheus request metrics through a real orchestrator and a fake model:
requests by model, route and status, latency and time-to-first-byte
histograms, and the refusals before any model, as GET /metrics shows them.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import fake_model

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def samples(orch: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with orch.client() as client:
        text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_latency_first_bytes_and_refusals_are_counted(orchestrator) -> None:
    # 60 rpm: one request a second, so the third of three at once is refused.
    orch = orchestrator({"models": {"chat": fake_model("--response-delay-ms 50", rpm=60, aliases=["c"])}})
    with orch.client() as client:
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        refused = client.post("/v1/chat/completions", json={**CHAT, "model": "c"})
        assert refused.status_code == 429
        assert client.post("/v1/chat/completions", json={**CHAT, "model": "no-such-model"}).status_code == 404
        assert client.post("/v1/completions", content=b"{not json").status_code == 400
    found = samples(orch)
    route = "/v1/chat/completions"
    assert value(found, "modelyard_requests_total", model="chat", route=route, status="200") == 1
    assert value(found, "modelyard_requests_total", model="chat", route=route, status="429") == 1  # by its alias
    # Unknown names and broken bodies never become labels of their own.
    assert value(found, "modelyard_requests_total", model="", route=route, status="404") == 1
    assert value(found, "modelyard_requests_total", model="", route="/v1/completions", status="400") == 1
    assert not any(labels and ("model", "no-such-model") in labels for _, labels in found)
    assert value(found, "modelyard_requests_refused_total", code="rate_limited") == 1
    assert value(found, "modelyard_request_seconds_count", model="chat", route=route) == 2
    # The served one took the model's 50 ms at least; all of it went to its first byte.
    assert value(found, "modelyard_request_seconds_bucket", model="chat", route=route, le="0.025") == 1  # the 429
    assert value(found, "modelyard_request_first_byte_seconds_count", model="chat", route=route) == 2


def test_streams_get_their_time_to_first_event(orchestrator) -> None:
    orch = orchestrator({"models": {"chat": fake_model("--chunks 5 --chunk-delay-ms 100")}})
    with orch.client() as client:
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as stream:
            assert stream.status_code == 200
            assert sum(1 for line in stream.iter_lines() if line.startswith("data:")) >= 5
    found = samples(orch)
    route = "/v1/chat/completions"
    total = value(found, "modelyard_request_seconds_sum", model="chat", route=route)
    first = value(found, "modelyard_request_first_byte_seconds_sum", model="chat", route=route)
    assert total >= 0.4  # five chunks 100 ms apart
    assert 0 < first < total - 0.2  # the first event came well before the end
