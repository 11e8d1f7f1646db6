"""Replicas as users run them (models.yaml `replicas:`): a second orchestrator
serving as a peer of the first, a replica killed mid-run while requests keep
succeeding through the other, its circuit opening and closing again, a
peer refusing our key, and no healthy replica at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from core.process import free_port
from tests.conftest import ROOT, fake_model, wait_until
from tests.support.api_errors import assert_error
from tests.test_limits import create_key

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def ask(url: str, model: str = "chat", **extra: Any) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"model": model, **CHAT, **extra}, timeout=30)


def replicas_of(url: str, model: str = "chat") -> dict[str, dict[str, Any]]:
    listed = httpx.get(url + "/admin/replicas", timeout=10).json()["data"]
    return {r["name"]: r for r in next(m for m in listed if m["model"] == model)["replicas"]}


class PlainPeer:
    """Any OpenAI-compatible server as a peer: the fake service on a fixed port, stopped and started at will."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"peer-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen([sys.executable, "tests/support/fake_service.py", "--port", str(self.port)],
                                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        assert wait_until(self.healthy, 30), self.log.read_text()

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def plain_peer(tmp_path: Path) -> Iterator[PlainPeer]:
    peer = PlainPeer(tmp_path)
    peer.start()
    yield peer
    if peer.process is not None and peer.process.poll() is None:
        peer.kill()


def test_a_second_orchestrator_serves_as_a_replica_of_the_first(orchestrator, tmp_path: Path) -> None:
    state_b = tmp_path / "b-state"
    admin_b = create_key(state_b, "--role", "admin")
    b = orchestrator({"settings": {"auth": {"enabled": True}}, "models": {"chat-b": fake_model()}}, state_dir=state_b)
    with b.client() as client:
        made = client.post("/admin/keys", json={"name": "appliance-a", "role": "member", "models": ["chat-b"]},
                           headers={"Authorization": f"Bearer {admin_b['key']}"})
        assert made.status_code == 201, made.text
    peer_key = made.json()["key"]
    a = orchestrator({"models": {"chat": fake_model(replicas={
        "strategy": "round_robin",
        "peers": [{"name": "box-b", "url": b.url, "api_key": "${PEER_B_KEY}", "model": "chat-b"}]})}},
        extra_env={"PEER_B_KEY": peer_key})

    served = [ask(a.url).json()["model"] for _ in range(20)]
    assert sorted(set(served)) == ["chat", "chat-b"] and served.count("chat-b") == 10  # one each, in turn
    with httpx.stream("POST", a.url + "/v1/chat/completions", json={"model": "chat", **CHAT, "stream": True},
                      timeout=30) as streamed:  # streams pass through the peer as they come
        assert streamed.status_code == 200
        text = streamed.read().decode()
    assert text.endswith("data: [DONE]\n\n") and '"delta"' in text

    replicas = replicas_of(a.url)
    assert set(replicas) == {"local", "box-b"}
    assert replicas["box-b"]["kind"] == "peer" and replicas["box-b"]["healthy"] and replicas["box-b"]["breaker"] == \
        "closed" and replicas["box-b"]["latency_ewma_ms"] > 0
    # B counted A's requests under the key it gave A; A's log never shows that key.
    def counted() -> bool:  # the ledger is written every second
        usage = httpx.get(b.url + "/admin/usage", params={"group_by": "key"}, timeout=10,
                          headers={"Authorization": f"Bearer {admin_b['key']}"}).json()
        return any(row["key_name"] == "appliance-a" and row["requests"] >= 11 for row in usage["rows"])

    assert wait_until(counted, 10)
    assert peer_key not in a.log()


def test_a_killed_replica_is_routed_around_and_its_circuit_opens_then_closes(orchestrator,
                                                                             plain_peer: PlainPeer) -> None:
    peer = plain_peer
    a = orchestrator({"models": {"chat": fake_model(replicas={
        "strategy": "round_robin",
        "peers": [{"name": "plain", "url": peer.url, "model": "chat-p"}],
        # Checks rarely (after the first at start): the requests' own failures must take it out.
        "health": {"interval": 600, "timeout": 5},
        "breaker": {"failure_threshold": 2, "open_seconds": 1, "max_open_seconds": 2}})}})
    assert {ask(a.url).json()["model"] for _ in range(4)} == {"chat", "chat-p"}

    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            statuses.append(ask(a.url).status_code)

    runner = threading.Thread(target=traffic)
    runner.start()
    try:
        time.sleep(0.5)
        peer.kill()  # mid-run
        assert wait_until(lambda: replicas_of(a.url)["plain"]["breaker"] == "open", 10)
        time.sleep(1.0)
    finally:
        stop.set()
        runner.join(timeout=30)
    assert len(statuses) > 3 and set(statuses) == {200}, statuses  # failed tries went to the local replica
    assert "upstream_unreachable" in replicas_of(a.url)["plain"]["last_error"]  # the requests' own failures

    peer.start()  # back on the same port: checks pass, a probe request closes the circuit
    assert wait_until(lambda: ask(a.url).json()["model"] == "chat-p", 20)
    assert wait_until(lambda: replicas_of(a.url)["plain"]["breaker"] == "closed", 10)


def test_a_peer_failing_its_health_checks_is_taken_out_before_a_request_fails(orchestrator,
                                                                               plain_peer: PlainPeer) -> None:
    peer = plain_peer
    a = orchestrator({"models": {"chat": fake_model(replicas={
        "strategy": "round_robin", "peers": [{"name": "plain", "url": peer.url, "model": "chat-p"}],
        "health": {"interval": 1, "timeout": 1, "unhealthy_after": 2, "healthy_after": 1}})}})
    assert wait_until(lambda: replicas_of(a.url)["plain"]["last_check_at"] is not None, 5)
    peer.kill()
    assert wait_until(lambda: not replicas_of(a.url)["plain"]["healthy"], 10)
    assert {ask(a.url).json()["model"] for _ in range(6)} == {"chat"}
    assert replicas_of(a.url)["plain"]["breaker_failures"] == 0  # no request was sent its way
    peer.start()
    assert wait_until(lambda: replicas_of(a.url)["plain"]["healthy"], 10)
    assert "chat-p" in {ask(a.url).json()["model"] for _ in range(4)}


def test_a_peer_refusing_our_key_is_our_502_not_the_clients_401(orchestrator, tmp_path: Path) -> None:
    state_b = tmp_path / "b-state"
    create_key(state_b, "--role", "admin")
    b = orchestrator({"settings": {"auth": {"enabled": True}}, "models": {"chat": fake_model()}}, state_dir=state_b)
    a = orchestrator({"models": {"chat": fake_model(replicas={
        "local": False, "peers": [{"name": "b", "url": b.url, "api_key": "my-000000000000-wrong"}]})}})
    body = assert_error(ask(a.url), 502, None, "peer_refused")
    assert "replicas.peers[].api_key" in body["message"]
    assert "my-000000000000-wrong" not in a.log()


def test_appliances_that_list_each_other_never_pass_a_request_back(orchestrator) -> None:
    """A fleet: A and B each list the other as a peer. A request forwarded by one is served by the other
    itself, never sent on again."""
    b = orchestrator({"models": {"chat": fake_model(served_name="chat-at-b")}})
    a = orchestrator({"models": {"chat": fake_model(served_name="chat-at-a", replicas={
        "strategy": "round_robin", "peers": [{"name": "b", "url": b.url, "model": "chat"}]})}})
    b.config_path.write_text(yaml.safe_dump({"models": {"chat": fake_model(served_name="chat-at-b", replicas={
        "strategy": "round_robin", "peers": [{"name": "a", "url": a.url, "model": "chat"}]})}}))
    assert httpx.post(b.url + "/admin/reload", timeout=30).status_code == 200
    served = [ask(a.url).json()["model"] for _ in range(10)]
    assert served.count("chat-at-b") == 5 and served.count("chat-at-a") == 5
    assert replicas_of(b.url)["a"]["latency_ewma_ms"] is None  # B never sent one of them on to A


def test_with_no_healthy_replica_the_answer_is_503(orchestrator) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    a = orchestrator({"models": {"chat": fake_model(replicas={
        "local": False, "peers": [{"name": "gone", "url": nowhere}],
        "breaker": {"failure_threshold": 1, "open_seconds": 60}})}})
    first = ask(a.url)  # the only replica, tried: its own failure goes back as it is
    assert_error(first, 502, None, "upstream_unreachable")
    refused = ask(a.url)  # its circuit is open now
    assert_error(refused, 503, None, "no_healthy_replica")
    assert refused.headers["retry-after"] == "5"
    assert replicas_of(a.url)["gone"]["breaker"] == "open"


def test_bad_replica_settings_are_refused_with_the_field_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  chat:\n    engine: command\n    cmd: x ${PORT}\n    replicas:\n      local: false\n"
                   "      peers: [{name: b, url: 'http://h:9000/v1'}, {name: c, url: 'http://u:p@h:9000'}]\n"
                   "      strategy: fastest\n      breaker: {open_seconds: 600}\n")
    done = subprocess.run([sys.executable, "-m", "orchestrator", "--config", str(bad), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ})
    assert done.returncode != 0
    assert "replicas.peers.0.url" in done.stderr and "without /v1" in done.stderr
    assert "replicas.strategy" in done.stderr
    assert "replicas.peers.1.url" in done.stderr and "credentials" in done.stderr
    assert "replicas.breaker" in done.stderr and "max_open_seconds" in done.stderr
