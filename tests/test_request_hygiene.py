"""Request hygiene through a real orchestrator: X-Request-ID on every answer,
Idempotency-Key replays (the model runs once) and conflicts, CORS for
browsers, and maintenance mode.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from orchestrator.idempotency import Answer, IdempotencyStore
from tests.conftest import fake_model

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def orch(module_orchestrator) -> Any:
    config = {
        "settings": {"cors_origins": ["https://app.example.com"]},
        "models": {"chat": fake_model("--response-delay-ms 300"), "broken": fake_model("--fail-load")},
    }
    return module_orchestrator(config)


def served(orch: Any) -> int:
    """How many chat requests the fake service has answered."""
    return httpx.get(orch.service_url("chat") + "/stats", timeout=10).json()["requests"]


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/models"), ("GET", "/admin/services"), ("GET", "/health"),
                                              ("GET", "/nowhere"), ("POST", "/v1/chat/completions"),
                                              ("GET", "/v1/chat/completions")])
def test_every_answer_carries_the_request_id(orch, method, path) -> None:
    with orch.client() as client:
        body = CHAT if method == "POST" else None
        given = client.request(method, path, json=body, headers={"X-Request-ID": "trace-42"})
        assert given.headers["x-request-id"] == "trace-42"
        made = client.request(method, path, json=body)
        assert len(made.headers["x-request-id"]) == 32


def test_a_retry_with_the_same_idempotency_key_replays_the_first_answer(orch) -> None:
    with orch.client() as client:
        first = client.post("/v1/chat/completions", json=CHAT, headers={"Idempotency-Key": "order-1"})
        assert first.status_code == 200 and "idempotent-replayed" not in first.headers
        before = served(orch)
        # The same request, its JSON spaced differently: still the same request.
        again = client.post("/v1/chat/completions", content=b'{"messages": [{"content": "hi", "role": "user"}],'
                            b'   "model": "chat"}', headers={"Idempotency-Key": "order-1",
                                                             "content-type": "application/json"})
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json() and served(orch) == before
        other = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5},
                            headers={"Idempotency-Key": "order-1"})
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"


def test_duplicates_arriving_together_run_the_model_once(orch) -> None:
    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=orch.url, timeout=60) as client:
            send = [client.post("/v1/chat/completions", json=CHAT, headers={"Idempotency-Key": "together"})
                    for _ in range(4)]
            return await asyncio.gather(*send)

    before = served(orch)
    answers = asyncio.run(both())
    assert [a.status_code for a in answers] == [200] * 4
    assert len({a.text for a in answers}) == 1 and served(orch) == before + 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 3


def test_a_request_whose_client_left_finishes_and_its_retry_gets_the_answer(orch) -> None:
    before = served(orch)
    with orch.client(timeout=0.1) as impatient, pytest.raises(httpx.TimeoutException):
        impatient.post("/v1/chat/completions", json=CHAT, headers={"Idempotency-Key": "left-early"})
    time.sleep(1.0)  # the model answers after 300 ms; its answer is kept
    with orch.client() as client:
        retry = client.post("/v1/chat/completions", json=CHAT, headers={"Idempotency-Key": "left-early"})
    assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
    assert served(orch) == before + 1


def test_the_gateways_own_refusals_are_not_kept(orch) -> None:
    broken = {**CHAT, "model": "broken"}
    with orch.client() as client:
        first = client.post("/v1/chat/completions", json=broken, headers={"Idempotency-Key": "retry-me"})
        assert first.status_code == 503
        second = client.post("/v1/chat/completions", json=broken, headers={"Idempotency-Key": "retry-me"})
        assert second.status_code == 503 and "idempotent-replayed" not in second.headers


@pytest.mark.parametrize(
    ("headers", "body", "code"),
    [
        ({"Idempotency-Key": "x" * 256}, CHAT, "invalid_idempotency_key"),
        ({"Idempotency-Key": "has space"}, CHAT, "invalid_idempotency_key"),
        ({"Idempotency-Key": "s-1"}, {**CHAT, "stream": True}, "idempotency_unsupported"),
    ],
)
def test_unusable_idempotency_keys_are_400s(orch, headers, body, code) -> None:
    with orch.client() as client:
        response = client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 400 and response.json()["error"]["code"] == code


def test_browsers_from_allowed_origins_get_cors_headers(orch) -> None:
    with orch.client() as client:
        preflight = client.options("/v1/chat/completions", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        answer = client.post("/v1/chat/completions", json=CHAT, headers={"Origin": "https://app.example.com"})
        assert answer.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-request-id" in answer.headers["access-control-expose-headers"]
        stranger = client.options("/v1/chat/completions", headers={
            "Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"})
        assert stranger.status_code == 400 and "access-control-allow-origin" not in stranger.headers


def test_maintenance_stops_inference_and_readiness_but_not_admin(orch) -> None:
    with orch.client() as client:
        on = client.post("/admin/maintenance", json={"enabled": True, "message": "driver upgrade"})
        assert on.status_code == 200 and on.json()["enabled"] is True and on.json()["since"] > 0
        try:
            refused = client.post("/v1/chat/completions", json=CHAT)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "maintenance"
            assert "driver upgrade" in refused.json()["error"]["message"] and refused.headers["retry-after"]
            assert client.get("/ready").status_code == 503
            assert client.get("/health").status_code == 200
            assert client.get("/admin/services").status_code == 200
            assert client.get("/v1/models").status_code == 200
        finally:
            off = client.post("/admin/maintenance", json={"enabled": False})
        assert off.json() == {"enabled": False, "message": "", "since": None}
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert client.get("/ready").status_code == 200
        assert client.post("/admin/maintenance", json={"enabled": "yes"}).status_code == 400


def test_a_failed_write_never_leaves_a_key_stuck(tmp_path, monkeypatch) -> None:
    store = IdempotencyStore(tmp_path / "idempotency.db", 60)

    def broken(*args: Any) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(store, "_store", broken)

    async def scenario() -> list[Any]:
        assert await store.begin("me", "k", "print") is None  # the first claims the key
        waiter = asyncio.create_task(store.begin("me", "k", "print"))
        await asyncio.sleep(0.05)
        await store.finish("me", "k", "print", Answer(200, [], b"{}"))
        # The waiter was woken with nothing kept, so it claims the key and runs itself ...
        woken = await asyncio.wait_for(waiter, 5)
        third = asyncio.create_task(store.begin("me", "k", "print"))
        await asyncio.sleep(0.05)
        await store.finish("me", "k", "print", Answer(200, [], b"{}"))
        # ... and when its write fails too, the next one is not blocked either.
        return [woken, await asyncio.wait_for(third, 5), list(store.running)]

    # Each was told to run (None), and only the last one's claim is open.
    assert asyncio.run(scenario()) == [None, None, [("me", "k")]]
