"""Rate limits (per model, per API key) and request quotas (per key) through a
real orchestrator and fake services: the configured rate is what gets through,
a quota is never overrun by concurrent requests, counts survive a restart and
a rotation, and refusals are 429s with Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, fake_model

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def create_key(state: Path, *argv: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "orchestrator.keys_cli", "--state-dir", str(state), "--json",
                           "create", "--name", "t", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def chat(client: httpx.Client, model: str = "chat", key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/v1/chat/completions", json={"model": model, **CHAT}, headers=headers)


def test_a_model_rate_limit_lets_through_its_rate(orchestrator) -> None:
    orch = orchestrator({"models": {"chat": fake_model(rpm=600)}})  # 10 a second
    with orch.client() as client:
        assert chat(client).status_code == 200  # started; its bucket refills while we wait
        time.sleep(1.2)
        began = time.monotonic()
        served: list[float] = []
        refused: list[httpx.Response] = []
        while time.monotonic() - began < 6.0:
            response = chat(client)
            if response.status_code == 200:
                served.append(time.monotonic() - began)
            else:
                refused.append(response)
    steady = [t for t in served if t >= 1.0]  # after the first second's burst: the refill rate
    assert 45 <= len(steady) <= 55, f"{len(steady)} served in 5 s at 10/s"
    assert refused, "nothing was refused: the limit did not bite"
    first = refused[0]
    assert first.status_code == 429 and first.json()["error"]["code"] == "rate_limited"
    assert "model chat" in first.json()["error"]["message"] and int(first.headers["retry-after"]) >= 1
    assert {r.status_code for r in refused} == {429}


def test_a_key_rate_limit_applies_to_that_key_only(orchestrator, tmp_path: Path) -> None:
    state = tmp_path / "state"
    slow = create_key(state, "--rpm", "60")  # one a second, no burst
    free = create_key(state)
    orch = orchestrator({"settings": {"auth": {"enabled": True}}, "models": {"chat": fake_model()}}, state_dir=state)
    with orch.client() as client:
        assert chat(client, key=slow["key"]).status_code == 200
        limited = chat(client, key=slow["key"])
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
        assert slow["id"] in limited.json()["error"]["message"]
        assert [chat(client, key=free["key"]).status_code for _ in range(5)] == [200] * 5
        time.sleep(1.1)
        assert chat(client, key=slow["key"]).status_code == 200


async def burst(url: str, key: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        headers = {"Authorization": f"Bearer {key}"}
        return await asyncio.gather(*(client.post("/v1/chat/completions", json={"model": "chat", **CHAT},
                                                  headers=headers) for _ in range(count)))


def test_a_quota_is_never_overrun_and_survives_restarts_and_rotation(orchestrator, tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = create_key(state, "--quota", "50/day")
    config = {"settings": {"auth": {"enabled": True}}, "models": {"chat": fake_model()}}
    orch = orchestrator(config, state_dir=state)
    with orch.client() as client:
        assert chat(client, key=key["key"]).status_code == 200  # starts the model: 1 of 50 used
    answers = asyncio.run(burst(orch.url, key["key"], 200))
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 49 and statuses.count(429) == 151
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert 0 < int(refused.headers["retry-after"]) <= 86400

    orch.stop()  # counts are written at shutdown ...
    orch = orchestrator(config, state_dir=state)
    with orch.client() as client:
        again = chat(client, key=key["key"])
        assert again.status_code == 429 and again.json()["error"]["code"] == "quota_exceeded"
        # ... and a rotated key keeps its predecessor's count
        admin = create_key(state, "--role", "admin")
        time.sleep(1.1)  # the running orchestrator picks up the CLI's key
        rotated = client.post(f"/admin/keys/{key['id']}/rotate", headers={"Authorization": f"Bearer {admin['key']}"})
        assert rotated.status_code == 201, rotated.text
        assert rotated.json()["quota_requests"] == 50
        assert chat(client, key=rotated.json()["key"]).status_code == 429


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--quota", "10/week"], "e.g. 1000/day"), (["--rpm", "0"], "must be above 0"), (["--rpm", "x"], "not a number")],
)
def test_the_cli_refuses_bad_limits(tmp_path: Path, argv: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "orchestrator.keys_cli", "--state-dir", str(tmp_path), "create",
                           "--name", "t", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and message in done.stderr
