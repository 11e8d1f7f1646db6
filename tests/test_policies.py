"""Policies users know from their peers: a global TTL, preload at start, and a
request's keep_alive (Ollama) within server-enforced bounds."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import fake_model, wait_until


def chat(client: httpx.Client, model: str, **extra: Any) -> httpx.Response:
    return client.post(
        "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    )


def test_settings_ttl_applies_to_models_without_their_own(orchestrator):
    orch = orchestrator(
        {"settings": {"ttl": 1}, "models": {"default": fake_model(), "forever": fake_model(ttl=0)}}
    )
    with orch.client() as client:
        assert chat(client, "default").status_code == 200
        assert chat(client, "forever").status_code == 200
    assert wait_until(lambda: orch.services()["default"]["state"] == "stopped", 5)
    assert orch.services()["forever"]["state"] == "ready"


def test_preloaded_models_start_with_the_orchestrator(orchestrator):
    orch = orchestrator(
        {"models": {"warm": fake_model(preload=True), "cold": fake_model(), "broken": fake_model("--fail-load", preload=True)}}
    )
    assert wait_until(lambda: orch.services()["warm"]["state"] == "ready", 10)
    assert orch.services()["cold"]["state"] == "stopped"
    assert wait_until(lambda: '"msg": "preload failed", "model": "broken"' in orch.log(), 10)
    with orch.client() as client:
        assert chat(client, "warm").status_code == 200
        assert orch.services()["warm"]["starts"] == 1


def test_keep_alive_sets_how_long_the_model_stays_and_is_not_forwarded(orchestrator):
    orch = orchestrator({"models": {"m": fake_model(ttl=1)}})
    with orch.client() as client:
        assert chat(client, "m", keep_alive="10m").status_code == 200
        assert orch.services()["m"]["keep_alive_s"] == 600
        stats = httpx.get(orch.service_url("m") + "/stats").json()
        assert "keep_alive" not in stats["last_fields"] and "messages" in stats["last_fields"]
        assert not wait_until(lambda: orch.services()["m"]["state"] != "ready", 2.5)  # its ttl of 1 s is overridden
        assert chat(client, "m", keep_alive=0).status_code == 200
    assert wait_until(lambda: orch.services()["m"]["state"] == "stopped", 3)  # 0: unload once idle
    with orch.client() as client:
        assert chat(client, "m").status_code == 200
    assert orch.services()["m"]["keep_alive_s"] is None  # a new run starts from the model's ttl


def test_keep_alive_is_bounded_by_the_server(orchestrator):
    orch = orchestrator(
        {"settings": {"keep_alive_min": 1, "keep_alive_max": 2}, "models": {"m": fake_model()}}
    )
    with orch.client() as client:
        assert chat(client, "m", keep_alive=-1).status_code == 200  # forever, cut to 2 s
        assert orch.services()["m"]["keep_alive_s"] == 2
        assert wait_until(lambda: orch.services()["m"]["state"] == "stopped", 5)
        assert chat(client, "m", keep_alive="10ms").status_code == 200  # raised to 1 s
        assert orch.services()["m"]["keep_alive_s"] == 1


def test_a_bad_keep_alive_is_a_400_naming_it(orchestrator):
    orch = orchestrator({"models": {"m": fake_model()}})
    with orch.client() as client:
        for bad in ("5 minutes", True, "", [1]):
            response = chat(client, "m", keep_alive=bad)
            assert response.status_code == 400, (bad, response.text)
            assert response.json()["error"]["param"] == "keep_alive", response.json()
    assert orch.services()["m"]["starts"] == 0
