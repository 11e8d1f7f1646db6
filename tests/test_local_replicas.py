"""Local replicas as users run them (models.yaml `replicas: {local: N}`):
one service of a model per GPU of a simulated inventory, requests spread
over them by the router, a further replica started in the background only
when the running ones are busy, a replica killed mid-run while requests
keep succeeding through the other, more replicas than GPUs (or than host
memory), reloads changing the count, swap groups, and a peer's forwarded
requests served by every local replica."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import fake_model, wait_until
from tests.support.api_errors import assert_error
from tests.support.inprocess import serve_in_process

TWO_GPUS = {"gpus": [{"name": "L4 (simulated)", "memory_gb": 24}] * 2, "gpu_reserve_gb": 0}
VLLM_LIKE = "--gpu-memory-utilization ${GPU_MEMORY_FRACTION}"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def ask(url: str, model: str = "chat", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"model": model, **CHAT}, headers=headers, timeout=30)


def served(orch: Any, service_id: str) -> int:
    """Requests the service's own process answered (the fake service counts them)."""
    return httpx.get(orch.service_url(service_id) + "/stats", timeout=5).json()["requests"]


def all_ready(orch: Any, *service_ids: str) -> bool:
    services = orch.services()
    return all(services[s]["state"] == "ready" for s in service_ids)


def replicas_of(url: str, model: str = "chat") -> dict[str, dict[str, Any]]:
    listed = httpx.get(url + "/admin/replicas", timeout=10).json()["data"]
    return {r["name"]: r for r in next(m for m in listed if m["model"] == model)["replicas"]}


def test_two_local_replicas_take_a_gpu_each_and_share_the_requests(orchestrator):
    # 6 GB each: both would fit on one 24 GB card, where best fit alone would pack them.
    orch = orchestrator({"settings": TWO_GPUS, "models": {
        "chat": fake_model(VLLM_LIKE, memory_gb=6, preload=True, replicas={"local": 2, "strategy": "round_robin"})}})
    assert wait_until(lambda: all_ready(orch, "chat", "chat~2"), 20)
    answers = [ask(orch.url) for _ in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    assert {a.json()["model"] for a in answers} == {"chat"}  # both serve the model's own name

    services = orch.services()
    assert set(services) == {"chat", "chat~2"}
    assert services["chat~2"]["model"] == "chat" and services["chat"]["model"] == "chat"
    assert {services["chat"]["state"], services["chat~2"]["state"]} == {"ready"}
    assert sorted([*services["chat"]["pools"], *services["chat~2"]["pools"]]) == ["gpu0", "gpu1"]
    for service_id in ("chat", "chat~2"):
        health = httpx.get(orch.service_url(service_id) + "/health", timeout=5).json()
        assert health["cuda_visible_devices"] == services[service_id]["pools"][0].removeprefix("gpu")
        assert health["gpu_memory_utilization"] == 0.25  # 6 of 24 GB
    assert served(orch, "chat") == served(orch, "chat~2") == 5  # round robin: one each, in turn

    replicas = replicas_of(orch.url)
    assert {name: r["service"] for name, r in replicas.items()} == {"local": "chat", "local-2": "chat~2"}
    assert all(r["kind"] == "local" and r["breaker"] == "closed" for r in replicas.values())
    # Each replica has its own log file, its own metrics, and /v1/models still lists the one model.
    assert (orch.state_dir / "logs" / "chat~2.log").exists()
    metrics = httpx.get(orch.url + "/metrics", timeout=10).text
    assert 'modelyard_service_state{model="chat~2",state="ready"} 1.0' in metrics
    assert [m["id"] for m in httpx.get(orch.url + "/v1/models", timeout=10).json()["data"]] == ["chat"]
    page = httpx.get(orch.url + "/ui/services/chat~2", timeout=10)  # auth off: the dashboard is open
    assert page.status_code == 200 and 'data-part="/ui/part/requests?model=chat"' in page.text  # its model's


def test_a_further_replica_starts_in_the_background_once_the_running_one_is_busy(orchestrator):
    orch = orchestrator({"settings": TWO_GPUS, "models": {"chat": fake_model(memory_gb=6, replicas={"local": 2})}})
    assert [ask(orch.url).status_code for _ in range(6)] == [200] * 6  # one at a time: one service is enough
    services = orch.services()
    assert services["chat"]["state"] == "ready" and services["chat~2"]["starts"] == 0

    answers: list[httpx.Response] = []

    def slow() -> None:
        answers.append(httpx.post(orch.url + "/v1/chat/completions", timeout=30,
                                  json={"model": "chat", **CHAT, "fake_delay_ms": 400}))

    busy = [threading.Thread(target=slow) for _ in range(4)]
    for runner in busy:
        runner.start()
    for runner in busy:
        runner.join(timeout=30)
    assert [a.status_code for a in answers] == [200] * 4
    # None of them waited for a load: chat~2 started beside them, for the next ones.
    assert all(float(a.headers["x-modelyard-load-ms"]) < 100 for a in answers), [a.headers for a in answers]
    assert wait_until(lambda: all_ready(orch, "chat", "chat~2"), 20)
    assert '"msg": "local replica started for the load", "model": "chat", "replica": "chat~2"' in orch.log()
    before = served(orch, "chat~2")
    threads = [threading.Thread(target=slow) for _ in range(4)]
    for runner in threads:
        runner.start()
    for runner in threads:
        runner.join(timeout=30)
    assert served(orch, "chat~2") > before  # now it takes its share


def test_a_killed_local_replica_is_routed_around_its_circuit_opens_then_closes(orchestrator):
    orch = orchestrator({"settings": TWO_GPUS, "models": {"chat": fake_model(memory_gb=6, preload=True, replicas={
        "local": 2, "strategy": "round_robin", "breaker": {"failure_threshold": 1, "open_seconds": 3}})}})
    assert wait_until(lambda: all_ready(orch, "chat", "chat~2"), 20)
    assert all(ask(orch.url).status_code == 200 for _ in range(4))
    victim = orch.services()["chat~2"]["pid"]

    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            statuses.append(ask(orch.url).status_code)

    def slow() -> None:  # round robin: one of two lands on each replica, and is in flight at the kill
        statuses.append(httpx.post(orch.url + "/v1/chat/completions", timeout=30,
                                   json={"model": "chat", **CHAT, "fake_delay_ms": 1500}).status_code)

    # The two slow ones first: round robin's next two picks are one replica each.
    runners = [threading.Thread(target=slow) for _ in range(2)] + [threading.Thread(target=traffic)]
    for runner in runners:
        runner.start()
        time.sleep(0.1)
    try:
        time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)  # mid-run, with a request on it
        assert wait_until(lambda: replicas_of(orch.url)["local-2"]["breaker"] == "open", 5)
    finally:
        stop.set()
        for runner in runners:
            runner.join(timeout=30)
    # Its request failed before any answer: retried on the other, like every request meanwhile.
    assert len(statuses) > 5 and set(statuses) == {200}, statuses
    assert "upstream_unreachable" in replicas_of(orch.url)["local-2"]["last_error"]
    # Once the running one is busy again it is restarted in the background, on its own GPU again,
    # and after open_seconds a request to it closes the circuit.
    def busy_then_closed() -> bool:
        runners = [threading.Thread(target=slow) for _ in range(2)]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join(timeout=30)
        return replicas_of(orch.url)["local-2"]["breaker"] == "closed"

    assert wait_until(busy_then_closed, 30, interval=0.5)
    assert set(statuses) == {200}, statuses
    services = orch.services()
    assert services["chat~2"]["state"] == "ready" and services["chat~2"]["starts"] == 2
    assert services["chat~2"]["pid"] != victim and services["chat~2"]["pools"] != services["chat"]["pools"]
    before = served(orch, "chat~2")
    assert all(ask(orch.url).status_code == 200 for _ in range(6))
    assert served(orch, "chat~2") > before


def test_more_replicas_than_gpus_serve_on_those_that_fit_and_say_why_the_rest_cannot(orchestrator):
    orch = orchestrator({"settings": TWO_GPUS, "models": {
        "chat": fake_model(memory_gb=6, preload=True, replicas={"local": 3, "strategy": "round_robin"}),
        "solo": fake_model(memory_gb=6, gpus=2)}})  # no replicas: never warned about
    assert wait_until(lambda: all_ready(orch, "chat", "chat~2"), 20)
    assert all(ask(orch.url).status_code == 200 for _ in range(9))
    assert "model 'chat' asks for 3 local replicas of 1 GPU each; this host has 2 GPUs, so 1 of them can never " \
        "start" in orch.log()
    assert orch.log().count('"msg": "too many local replicas"') == 1
    services = orch.services()
    assert services["chat~3"]["state"] == "stopped" and services["chat~3"]["starts"] == 0
    with orch.client() as client:
        body = assert_error(client.post("/admin/services/chat~3/load"), 503, None, "no_room_for_replica")
    assert "they hold gpu0, gpu1 of this host's 2" in body["message"]


def test_replicas_in_host_memory_never_evict_each_other():
    # On the CPU, room for one replica of 6 GB: the second must not stop the first to start (and back again).
    config = {"settings": {"memory_budget_gb": 10},
              "models": {"chat": fake_model(memory_gb=6, replicas={"local": 2, "strategy": "round_robin"})}}

    async def scenario(state: Any) -> None:
        async with serve_in_process(config, state) as harness:
            statuses = [(await harness.chat("chat"))[0] for _ in range(6)]
            status, body = await harness.admin("POST", "/services/chat~2/load")
            services = harness.scheduler.services
            assert statuses == [200] * 6
            assert (services["chat"].state.value, services["chat"].starts) == ("ready", 1)
            assert status == 503 and body["error"]["code"] == "no_room_for_replica", body
            assert "does not fit beside them" in body["error"]["message"]
            assert services["chat"].state.value == "ready" and services["chat~2"].starts == 0
            assert not harness.checker.violations, harness.checker.violations

    with tempfile.TemporaryDirectory() as state:
        asyncio.run(scenario(Path(state)))


def test_a_request_queued_on_a_replica_a_reload_removes_is_served_by_the_first():
    config = {"models": {"chat": fake_model(max_concurrency=1, preload=True, replicas={
        "local": 2, "strategy": "round_robin", "attempts": 1})}}

    async def scenario(state: Any) -> None:
        async with serve_in_process(config, state) as harness:
            services = harness.scheduler.services
            for _ in range(200):
                if services["chat"].state.value == services["chat~2"].state.value == "ready":
                    break
                await asyncio.sleep(0.05)
            # Round robin from here: chat, chat~2, chat, chat~2.
            first = asyncio.create_task(harness.chat("chat", delay_ms=100))
            await asyncio.sleep(0.05)
            running = asyncio.create_task(harness.chat("chat", delay_ms=3000))  # on chat~2
            await asyncio.sleep(0.2)
            third = asyncio.create_task(harness.chat("chat", delay_ms=100))
            await asyncio.sleep(0.05)
            queued = asyncio.create_task(harness.chat("chat"))  # on chat~2, behind `running`
            await asyncio.sleep(0.3)
            assert services["chat~2"].queued == 1
            config["models"]["chat"]["replicas"]["local"] = 1
            harness.config_path.write_text(yaml.safe_dump(config))
            assert (await harness.admin("POST", "/reload?drain=1"))[0] == 200
            status, body = await queued
            assert status == 200, body  # not a 404 naming chat~2: the model is still there
            assert (await first)[0] == (await third)[0] == 200
            await running  # cut by the drain (502) or done: either is the documented drain

    with tempfile.TemporaryDirectory() as state:
        asyncio.run(scenario(Path(state)))


def test_a_reload_adds_and_removes_local_replicas(orchestrator):
    config = {"settings": TWO_GPUS, "models": {"chat": fake_model(memory_gb=6, replicas={"local": 2})}}
    orch = orchestrator(config)
    with orch.client() as client:
        assert client.post("/admin/services/chat~2/load").status_code == 200
        pid = orch.services()["chat~2"]["pid"]

        config["models"]["chat"]["replicas"]["local"] = 1
        orch.config_path.write_text(yaml.safe_dump(config))
        report = client.post("/admin/reload?drain=5")
        assert report.status_code == 200 and report.json()["updated"] == ["chat"], report.text
        assert "chat~2" not in orch.services() and not _alive(pid)  # stopped with its process group
        assert set(replicas_of(orch.url)) == {"local"}
        assert all(ask(orch.url).status_code == 200 for _ in range(3))

        config["models"]["chat"]["replicas"]["local"] = 2
        orch.config_path.write_text(yaml.safe_dump(config))
        assert client.post("/admin/reload").status_code == 200
        assert orch.services()["chat~2"]["state"] == "stopped"  # started by its first request
        assert set(replicas_of(orch.url)) == {"local", "local-2"}


def test_replicas_are_one_member_of_a_swap_group(orchestrator):
    orch = orchestrator({"models": {"chat": fake_model(preload=True, replicas={"local": 2}),
                                    "other": fake_model()},
                         "groups": {"g": {"members": ["chat", "other"], "swap": True}}})
    assert wait_until(lambda: all_ready(orch, "chat", "chat~2"), 20)
    states = {sid: s["state"] for sid, s in orch.services().items()}
    assert states == {"chat": "ready", "chat~2": "ready", "other": "stopped"}  # siblings do not swap each other
    assert ask(orch.url, "other").status_code == 200
    states = {sid: s["state"] for sid, s in orch.services().items()}
    assert states == {"chat": "stopped", "chat~2": "stopped", "other": "ready"}  # the whole member swapped out


def test_a_model_with_replicas_is_not_benchmarked_through_them(orchestrator):
    orch = orchestrator({"settings": {"simulator": {"enabled": True}},
                         "models": {"chat": fake_model(replicas={"local": 2})}})
    answer = httpx.post(orch.url + "/simulator/benchmarks", json={"model": "chat"}, timeout=30)
    body = assert_error(answer, 409, "model", "model_has_replicas")
    assert "measure them together" in body["message"]


def test_a_peers_forwarded_requests_use_every_local_replica_and_no_peer(orchestrator):
    # On the CPU (no inventory): both replicas in host memory. The peer is never reachable.
    orch = orchestrator({"models": {"chat": fake_model(preload=True, replicas={
        "local": 2, "strategy": "round_robin", "health": {"interval": 600, "timeout": 1},
        "peers": [{"name": "gone", "url": "http://127.0.0.1:9"}]})}})
    assert wait_until(lambda: all_ready(orch, "chat", "chat~2"), 20)
    hop = {"x-modelyard-hop": "1"}
    assert [ask(orch.url, headers=hop).status_code for _ in range(8)] == [200] * 8
    services = orch.services()
    assert services["chat"]["pools"] == services["chat~2"]["pools"] == ["host"]
    assert served(orch, "chat") == served(orch, "chat~2") == 4
    assert replicas_of(orch.url)["gone"]["breaker_failures"] == 0  # never tried


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
