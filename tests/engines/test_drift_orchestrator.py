"""The drift monitor as users run it: a sibling service of a real
orchestrator (settings.drift.enabled), its API on the orchestrator's port
behind auth, every completed request's features fed into monitors with
`source: requests`, a latency shift detected from real traffic, and no event
lost when the drift service is killed and the orchestrator restarts it."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import fake_model, instance_processes, wait_until
from tests.support.encoders import minilm_dir
from tests.support.engine_process import engine_python
from tests.test_limits import create_key

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def envs() -> dict[str, str]:
    """The installed engine environments, for an orchestrator on a state directory of its own."""
    return {"MODELYARD_ENVS_DIR": str(engine_python("drift").parent.parent.parent)}


def drift_processes(state: Path) -> list[psutil.Process]:
    return [p for p in instance_processes(state) if any("models/drift/server.py" in part for part in p.cmdline())]


def events_seen(client: httpx.Client, ref: str, headers: dict[str, str] | None = None) -> int:
    answer = client.get(f"/drift/monitors/{ref}", headers=headers or {})
    return answer.json()["events_seen"] if answer.status_code == 200 else -1


def test_drift_is_served_behind_auth_and_sees_a_latency_shift_in_real_traffic(orchestrator, tmp_path: Path) -> None:
    state = tmp_path / "state"
    admin = create_key(state, "--role", "admin")
    config = {"settings": {"auth": {"enabled": True}, "drift": {"enabled": True}},
              "models": {"fast": fake_model(), "slow": fake_model("--response-delay-ms 60")}}
    orch = orchestrator(config, state_dir=state, extra_env=envs())
    auth = {"Authorization": f"Bearer {admin['key']}"}
    with orch.client() as client:
        member = client.post("/admin/keys", json={"name": "m", "role": "member"}, headers=auth).json()
        as_member = {"Authorization": f"Bearer {member['key']}"}
        refused = client.get("/drift/monitors", headers=as_member)
        assert refused.status_code == 403 and "drift:read" in refused.json()["error"]["message"]
        assert client.get("/drift/monitors").status_code == 401

        body = {"name": "latency", "source": "requests",
                "features": [{"name": "latency_ms", "kind": "numeric"}, {"name": "model", "kind": "categorical"},
                             {"name": "finish_reason", "kind": "categorical"},
                             {"name": "prompt_tokens", "kind": "numeric"}],
                "window": {"kind": "fixed", "size": 40, "reference_size": 40}}
        made = client.post("/drift/monitors", json=body, headers=auth)  # waits for the service to be up
        assert made.status_code == 201, made.text
        monitor = made.json()["id"]
        # The feed's own door stays shut from outside, however the path is spelled.
        for path in ("/drift/requests", "/drift/x/../requests", "/drift/%2e%2e/drift/requests", "/drift/requests%23",
                     "/drift/requests%3F", "/drift/requests%09", "/drift/requests/"):
            assert client.post(path, json={"feed": "f", "events": []}, headers=auth).status_code == 404, path
        # A decoded "?" stays in the path: it cannot smuggle a query string through.
        assert client.get("/drift/monitors%3Fmodel=x", headers=auth).status_code == 404

        for _ in range(40):
            assert client.post("/v1/chat/completions", json={"model": "fast", **CHAT}, headers=as_member
                               ).status_code == 200
        assert wait_until(lambda: events_seen(client, monitor, auth) == 40, 10)
        assert client.get(f"/drift/monitors/{monitor}/status", headers=auth).json()["severity"] == "none"
        for _ in range(40):
            assert client.post("/v1/chat/completions", json={"model": "slow", **CHAT}, headers=as_member
                               ).status_code == 200
        assert wait_until(lambda: events_seen(client, monitor, auth) == 80, 10)

        status = client.get(f"/drift/monitors/{monitor}/status", headers=auth).json()
        assert status["severity"] == "critical"
        assert status["features"]["latency_ms"]["severity"] == "critical"
        assert status["features"]["model"]["severity"] == "critical"  # every request went to another model
        assert status["features"]["finish_reason"]["severity"] == "none"  # the fake always says stop
        alerts = client.get("/drift/alerts", headers=auth).json()["data"]
        assert [alert["monitor"] for alert in alerts] == ["latency"]
        metrics = client.get("/drift/metrics", headers=auth)
        assert metrics.status_code == 200 and 'modelyard_drift_severity{model="",monitor="latency"} 4.0' \
            in metrics.text
        entries = client.get("/admin/audit", params={"format": "json"}, headers=auth).json()["entries"]
        assert any(e["action"] == "POST /drift/monitors" and e["status"] == 201 for e in entries)


def test_events_are_not_lost_when_the_drift_service_is_killed(orchestrator, tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = {"settings": {"drift": {"enabled": True}}, "models": {"chat": fake_model()}}
    orch = orchestrator(config, state_dir=state, extra_env=envs())
    with orch.client() as client:
        made = client.post("/drift/monitors", json={"name": "count", "source": "requests",
                                                    "features": [{"name": "latency_ms", "kind": "numeric"}]})
        assert made.status_code == 201, made.text
        monitor = made.json()["id"]
        for _ in range(20):
            assert client.post("/v1/chat/completions", json={"model": "chat", **CHAT}).status_code == 200
        assert wait_until(lambda: events_seen(client, monitor) == 20, 10)

        [drift] = drift_processes(state)
        os.kill(drift.pid, signal.SIGKILL)
        drift.wait(10)
        for _ in range(30):  # the models do not notice: their answers do not wait for drift
            assert client.post("/v1/chat/completions", json={"model": "chat", **CHAT}).status_code == 200
        assert wait_until(lambda: events_seen(client, monitor) == 50, 30), events_seen(client, monitor)
        [restarted] = drift_processes(state)
        assert restarted.pid != drift.pid
    assert "drift service stopped" in orch.log() and "exit code -9" in orch.log()


def test_without_the_drift_environment_the_models_still_serve_and_drift_says_why(orchestrator,
                                                                                  tmp_path: Path) -> None:
    empty = tmp_path / "no-envs"
    empty.mkdir()
    config = {"settings": {"drift": {"enabled": True}}, "models": {"chat": fake_model()}}
    orch = orchestrator(config, extra_env={"MODELYARD_ENVS_DIR": str(empty)})
    with orch.client() as client:
        assert client.post("/v1/chat/completions", json={"model": "chat", **CHAT}).status_code == 200
        answer = client.get("/drift/monitors")
        assert answer.status_code == 503
        assert "./scripts/install.sh --engine drift" in answer.json()["error"]["message"]
        assert answer.headers["retry-after"] == "5"


def test_with_drift_off_its_routes_say_how_to_turn_it_on(orchestrator) -> None:
    orch = orchestrator({"models": {"chat": fake_model()}})
    with orch.client() as client:
        answer = client.get("/drift/monitors")
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "drift_disabled"
        assert "settings.drift.enabled" in answer.json()["error"]["message"]


COOKING = ["How do I {} {} for {} people?", "What goes well with {} {} at a dinner for {}?",
           "Can I {} {} the night before, for {} guests?"]
FINANCE = ["Should I buy {} shares before the {} report, with {} dollars?",
           "Is {} a good hedge against {} when rates rise {} points?",
           "How do {} bonds react to {} inflation over {} years?"]
WORDS = {"cooking": (["roast", "braise", "grill", "bake", "steam"], ["chicken", "salmon", "potatoes", "lamb", "tofu"]),
         "finance": (["Nvidia", "gold", "treasury", "Apple", "utility"], ["quarterly", "annual", "earnings", "fed"])}


def prompts(topic: str, count: int, rng: random.Random) -> list[str]:
    templates = COOKING if topic == "cooking" else FINANCE
    first, second = WORDS[topic]
    return [rng.choice(templates).format(rng.choice(first), rng.choice(second), rng.randint(2, 12))
            for _ in range(count)]


@pytest.mark.slow
def test_prompt_embeddings_from_the_real_minilm_show_a_change_of_topic(orchestrator, tmp_path: Path) -> None:
    """settings.drift.prompt_embeddings: each chat prompt is embedded by the
    real all-MiniLM-L6-v2, through the scheduler, and a monitor on
    prompt_embedding sees prompts about cooking turn into prompts about money."""
    config = {"settings": {"drift": {"enabled": True, "prompt_embeddings": "minilm"}},
              "models": {"chat": fake_model(),
                         "minilm": {"type": "embedding", "engine": "embeddings", "model": str(minilm_dir()),
                                    "memory_gb": 1, "startup_timeout": 120}}}
    orch = orchestrator(config, extra_env=envs())
    rng = random.Random(7)
    with orch.client() as client:
        made = client.post("/drift/monitors", json={
            "name": "topics", "model": "chat", "source": "requests",
            "features": [{"name": "prompt_embedding", "kind": "embedding"}],
            "window": {"kind": "fixed", "size": 60, "reference_size": 60}})
        assert made.status_code == 201, made.text
        monitor = made.json()["id"]

        def ask(texts: list[str]) -> None:
            for text in texts:
                body = {"model": "chat", "messages": [{"role": "user", "content": text}]}
                assert client.post("/v1/chat/completions", json=body).status_code == 200

        ask(prompts("cooking", 120, rng))  # the reference, then a current window on the same topic
        assert wait_until(lambda: events_seen(client, monitor) == 120, 120), events_seen(client, monitor)
        status = client.get(f"/drift/monitors/{monitor}/status").json()
        assert status["features"]["prompt_embedding"]["severity"] == "none", status
        ask(prompts("finance", 60, rng))
        assert wait_until(lambda: events_seen(client, monitor) == 180, 60), events_seen(client, monitor)
        status = client.get(f"/drift/monitors/{monitor}/status").json()
        assert status["features"]["prompt_embedding"]["severity"] in ("high", "critical"), status
        report = client.get(f"/drift/monitors/{monitor}/report").json()
        assert report["features"]["prompt_embedding"]["window"]["dimension"] == 384  # the vectors are MiniLM's
        services = client.get("/admin/services").json()["services"]
        assert next(s for s in services if s["id"] == "minilm")["state"] == "ready"  # started for the feed
    assert "embedding prompts for drift failed" not in orch.log()
