"""Service lifecycle through the real orchestrator and real service processes:
single-flight loads, eviction, load failures, crashes, cancellation, cleanup."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil

from tests.conftest import fake_model, instance_processes, wait_until

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def chat(client: httpx.Client, model: str, **extra: object) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": model, **CHAT, **extra})


def test_fifty_concurrent_first_requests_start_one_process(orchestrator):
    orch = orchestrator({"models": {"m": fake_model("--startup-delay 1.0")}})

    def one(_: int) -> int:
        with orch.client() as client:
            return chat(client, "m").status_code

    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(one, range(50)))
    assert statuses == [200] * 50
    service = orch.services()["m"]
    assert service["starts"] == 1
    assert len(instance_processes(orch.state_dir)) == 1
    stats = httpx.get(orch.service_url("m") + "/stats").json()
    assert stats["completed"] == 50


def test_least_recently_used_idle_service_is_evicted(orchestrator):
    models = {name: fake_model(memory_gb=4) for name in ("a", "b", "c")}
    orch = orchestrator({"settings": {"memory_budget_gb": 10}, "models": models})
    with orch.client() as client:
        assert chat(client, "a").status_code == 200
        assert chat(client, "b").status_code == 200
        assert chat(client, "a").status_code == 200  # a is now more recent than b
        assert chat(client, "c").status_code == 200
    states = {k: v["state"] for k, v in orch.services().items()}
    assert states == {"a": "ready", "b": "stopped", "c": "ready"}
    assert '"msg": "evicting", "model": "b", "for_model": "c"' in orch.log()


def test_model_that_cannot_fit_fails_at_once_with_507(orchestrator):
    orch = orchestrator(
        {
            "settings": {"memory_budget_gb": 10},
            "models": {"small": fake_model(memory_gb=4, pinned=True), "huge": fake_model(memory_gb=8)},
        }
    )
    with orch.client() as client:
        assert chat(client, "small").status_code == 200
        began = time.monotonic()
        response = chat(client, "huge")
        assert time.monotonic() - began < 10  # not after settings.eviction_wait (30 s)
    assert response.status_code == 507
    error = response.json()["error"]
    assert error["code"] == "insufficient_memory"
    assert "needs 8 GB" in error["message"] and "pinned" in error["message"]
    assert orch.services()["small"]["state"] == "ready"  # nothing evicted for nothing


def test_service_that_never_becomes_healthy_times_out_and_backs_off(orchestrator):
    orch = orchestrator({"models": {"stuck": fake_model("--never-ready", startup_timeout=1.5)}})
    with orch.client() as client:
        first = chat(client, "stuck")
        second = chat(client, "stuck")  # refused without starting another process
    assert first.status_code == 503
    assert "did not become healthy within 1.5 s" in first.json()["error"]["message"]
    assert wait_until(lambda: not instance_processes(orch.state_dir), 5)
    assert second.status_code == 503
    assert int(second.headers["retry-after"]) >= 1
    assert orch.services()["stuck"]["starts"] == 1


def test_load_failure_reason_reaches_the_client(orchestrator):
    orch = orchestrator({"models": {"broken": fake_model("--fail-load")}})
    with orch.client() as client:
        response = chat(client, "broken")
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "exited with code 3" in message
    assert "weights are corrupt" in message


def test_missing_command_is_a_clear_load_error(orchestrator):
    orch = orchestrator({"models": {"m": {"engine": "command", "cmd": "/nonexistent/server --port ${PORT}"}}})
    with orch.client() as client:
        response = chat(client, "m")
    assert response.status_code == 503
    assert "cannot execute '/nonexistent/server'" in response.json()["error"]["message"]


def test_crash_mid_stream_ends_with_error_event_and_next_request_restarts(orchestrator):
    orch = orchestrator({"models": {"m": fake_model("--chunks 8 --crash-after-chunks 2")}})
    with orch.client() as client:
        with client.stream("POST", "/v1/chat/completions", json={"model": "m", "stream": True, **CHAT}) as stream:
            assert stream.status_code == 200
            body = "".join(stream.iter_text())
        assert body.count('"chat.completion.chunk"') == 2
        assert '"upstream_failed"' in body and "failed mid-stream" in body
        assert wait_until(lambda: orch.services()["m"]["state"] == "failed", 5)
        assert "exited unexpectedly" in orch.services()["m"]["last_error"]
        # Non-streamed answers do not crash this fake: the restart serves it.
        response = chat(client, "m")
    assert response.status_code == 200
    assert orch.services()["m"]["starts"] == 2


def test_client_disconnect_cancels_the_upstream_request(orchestrator):
    orch = orchestrator({"models": {"m": fake_model("--chunks 40 --chunk-delay-ms 50")}})
    with orch.client() as client:
        with client.stream("POST", "/v1/chat/completions", json={"model": "m", "stream": True, **CHAT}) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")
        # leaving the block closes the connection after one chunk
    service = orch.service_url("m")
    assert wait_until(lambda: httpx.get(service + "/stats").json()["cancelled"] == 1, 5)
    assert httpx.get(service + "/stats").json()["completed"] == 0
    assert wait_until(lambda: orch.services()["m"]["in_flight"] == 0, 5)


def test_unload_stops_the_whole_process_group_even_when_sigterm_is_ignored(orchestrator):
    orch = orchestrator(
        {"settings": {"shutdown_grace": 1}, "models": {"m": fake_model("--ignore-sigterm --spawn-child")}}
    )
    with orch.client() as client:
        assert chat(client, "m").status_code == 200
        health = httpx.get(orch.service_url("m") + "/health").json()
        pids = [health["pid"], health["child_pid"]]
        assert all(psutil.pid_exists(pid) for pid in pids)
        response = client.post("/admin/services/m/unload")
    assert response.status_code == 200 and response.json()["state"] == "stopped"
    assert wait_until(lambda: not any(_alive(pid) for pid in pids), 5)
    assert instance_processes(orch.state_dir) == []


def test_sigkilled_orchestrator_leaves_no_service_running(orchestrator):
    orch = orchestrator({"models": {"a": fake_model("--spawn-child"), "b": fake_model()}})
    with orch.client() as client:
        assert chat(client, "a").status_code == 200
        assert chat(client, "b").status_code == 200
    assert len(instance_processes(orch.state_dir)) == 3  # a, its child, b
    os.kill(orch.process.pid, signal.SIGKILL)
    orch.process.wait()
    assert wait_until(lambda: not instance_processes(orch.state_dir), 5), [
        p.cmdline() for p in instance_processes(orch.state_dir)
    ]


def test_restarted_orchestrator_reaps_what_its_predecessor_left(orchestrator):
    config = {"settings": {"shutdown_grace": 1}, "models": {"m": fake_model("--ignore-sigterm --spawn-child")}}
    first = orchestrator(config)
    with first.client() as client:
        assert chat(client, "m").status_code == 200
    # The worst case: the orchestrator and its reaper sidecar both die at once,
    # and the service ignores the SIGTERM the kernel sends it.
    for proc in psutil.Process(first.process.pid).children():
        if "core.reaper" in " ".join(proc.cmdline()):
            proc.kill()
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    time.sleep(1.0)
    assert instance_processes(first.state_dir), "the leftover should still be running here"
    # A new orchestrator on the same state directory cleans up before serving.
    second = orchestrator(config, state_dir=first.state_dir)
    assert wait_until(lambda: not instance_processes(first.state_dir), 10)
    assert "reaped" in second.log()


def test_idle_service_is_unloaded_after_its_ttl(orchestrator):
    orch = orchestrator({"models": {"m": fake_model(ttl=1)}})
    with orch.client() as client:
        assert chat(client, "m").status_code == 200
    assert wait_until(lambda: orch.services()["m"]["state"] == "stopped", 5)
    assert instance_processes(orch.state_dir) == []


def test_concurrency_limit_queues_then_rejects_with_429(orchestrator):
    orch = orchestrator(
        {"models": {"m": fake_model("--response-delay-ms 3000", max_concurrency=1, max_queue=2)}}
    )
    with orch.client() as client:
        assert client.post("/admin/services/m/load").status_code == 200
    barrier = threading.Barrier(6)

    def one(_: int) -> httpx.Response:
        with orch.client() as client:
            barrier.wait()  # all six arrive within the 3 s the first one takes
            return chat(client, "m")

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(one, range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 3  # one running, two queued
    assert statuses.count(429) == 3
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.json()["error"]["code"] == "queue_full" and "retry-after" in rejected.headers


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_unload_during_startup_answers_waiting_requests_with_503(orchestrator):
    orch = orchestrator({"models": {"slow": fake_model("--startup-delay 3")}})
    with ThreadPoolExecutor(3) as pool, orch.client() as client:
        waiting = [pool.submit(lambda: chat(orch.client(), "slow")) for _ in range(3)]
        assert wait_until(lambda: orch.services()["slow"]["in_flight"] == 3, 5)
        assert orch.services()["slow"]["state"] == "starting"
        assert client.post("/admin/services/slow/unload").json()["state"] == "stopped"
        responses = [f.result(timeout=10) for f in waiting]
    for response in responses:
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "model_unloaded"
    assert instance_processes(orch.state_dir) == []
    with orch.client() as client:  # no backoff after a deliberate unload
        assert chat(client, "slow").status_code == 200


def test_unload_lets_in_flight_requests_finish(orchestrator):
    orch = orchestrator({"models": {"m": fake_model("--response-delay-ms 1500")}})
    with orch.client() as client:
        assert client.post("/admin/services/m/load").status_code == 200
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: chat(orch.client(), "m"))
        assert wait_until(lambda: orch.services()["m"]["in_flight"] == 1, 5)
        with orch.client() as client:
            unloaded = client.post("/admin/services/m/unload?drain=10")
        assert running.result(timeout=10).status_code == 200
    assert unloaded.json()["state"] == "stopped"


def test_client_leaving_a_non_streamed_request_cancels_the_upstream_work(orchestrator):
    orch = orchestrator({"models": {"m": fake_model("--response-delay-ms 5000")}})
    with orch.client() as client:
        assert client.post("/admin/services/m/load").status_code == 200
    with orch.client(timeout=0.5) as client:
        try:
            chat(client, "m")
            raise AssertionError("the request should have timed out on the client's side")
        except httpx.ReadTimeout:
            pass  # the client gives up and closes its connection
    service = orch.service_url("m")
    assert wait_until(lambda: httpx.get(service + "/stats").json()["cancelled"] == 1, 3)
    assert httpx.get(service + "/stats").json()["completed"] == 0
    assert wait_until(lambda: orch.services()["m"]["in_flight"] == 0, 3)


def test_client_leaving_during_a_cold_start_does_not_disturb_the_load(orchestrator):
    orch = orchestrator({"models": {"m": fake_model("--startup-delay 1.5")}})
    with orch.client(timeout=0.3) as client:
        try:
            chat(client, "m")
        except httpx.ReadTimeout:
            pass
    assert wait_until(lambda: orch.services()["m"]["state"] == "ready", 10)
    assert orch.services()["m"]["in_flight"] == 0
    with orch.client() as client:
        assert chat(client, "m").status_code == 200
    assert orch.services()["m"]["starts"] == 1


def test_a_crash_stops_the_services_children_too(orchestrator):
    orch = orchestrator({"models": {"m": fake_model("--spawn-child --chunks 8 --crash-after-chunks 1")}})
    with orch.client() as client:
        assert client.post("/admin/services/m/load").status_code == 200
        child = httpx.get(orch.service_url("m") + "/health").json()["child_pid"]
        client.post("/v1/chat/completions", json={"model": "m", "stream": True, **CHAT})
    assert wait_until(lambda: orch.services()["m"]["state"] == "failed", 5)
    assert wait_until(lambda: not _alive(child), 5)
    assert instance_processes(orch.state_dir) == []


def test_repeated_crashes_back_off(orchestrator):
    orch = orchestrator({"models": {"m": fake_model("--chunks 8 --crash-after-chunks 1")}})
    stream = {"model": "m", "stream": True, **CHAT}
    with orch.client() as client:
        client.post("/v1/chat/completions", json=stream)  # crash 1: restart allowed at once
        assert wait_until(lambda: orch.services()["m"]["state"] == "failed", 5)
        client.post("/v1/chat/completions", json=stream)  # restarts, crash 2
        assert wait_until(lambda: orch.services()["m"]["state"] == "failed", 5)
        refused = chat(client, "m")
    assert orch.services()["m"]["starts"] == 2
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_unavailable"
    assert "exited unexpectedly" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 1


def test_a_command_that_breaks_at_launch_is_a_503_and_leaves_no_stuck_state(orchestrator):
    # Passes validation, breaks only when ${ODD} is expanded at launch: an unclosed quote.
    orch = orchestrator(
        {"models": {"m": {"engine": "command", "cmd": "${PYTHON} x.py --port ${PORT} ${ODD}"}}},
        extra_env={"ODD": 'say "unclosed'},
    )
    with orch.client() as client:
        response = chat(client, "m")
        assert response.status_code == 503
        assert "closing quotation" in response.json()["error"]["message"]
        assert orch.services()["m"]["state"] == "failed"
        assert client.post("/admin/services/m/unload").json()["state"] == "stopped"


def test_concurrent_unloads_during_startup_leave_a_clean_stopped_service(orchestrator):
    orch = orchestrator(
        {"settings": {"shutdown_grace": 1}, "models": {"m": fake_model("--startup-delay 3 --ignore-sigterm")}}
    )
    with ThreadPoolExecutor(4) as pool:
        pool.submit(lambda: chat(orch.client(), "m"))
        assert wait_until(lambda: orch.services()["m"]["state"] == "starting", 5)
        unloads = [pool.submit(lambda: orch.client().post("/admin/services/m/unload")) for _ in range(3)]
        states = [u.result(timeout=15).json()["state"] for u in unloads]
    assert states == ["stopped"] * 3
    assert wait_until(lambda: not instance_processes(orch.state_dir), 5)


def test_a_load_waiting_for_busy_memory_does_not_block_other_loads(orchestrator):
    orch = orchestrator(
        {
            "settings": {"memory_budget_gb": 10, "eviction_wait": 5},
            "models": {
                "busy": fake_model("--response-delay-ms 8000", memory_gb=6),
                "big": fake_model(memory_gb=6),
                "small": fake_model(memory_gb=2),
            },
        }
    )
    with orch.client() as client:
        assert client.post("/admin/services/busy/load").status_code == 200
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(lambda: chat(orch.client(), "busy"))
        assert wait_until(lambda: orch.services()["busy"]["in_flight"] == 1, 5)
        big = pool.submit(lambda: chat(orch.client(), "big"))  # must wait for busy to go idle
        began = time.monotonic()
        with orch.client() as client:
            assert chat(client, "small").status_code == 200  # fits now: not stuck behind big
        small_took = time.monotonic() - began
        big_response = big.result(timeout=20)
        assert running.result(timeout=20).status_code == 200
    assert small_took < 4.5  # it did not wait out big's 5 s eviction wait
    assert big_response.status_code == 503 and big_response.json()["error"]["code"] == "memory_busy"


def test_sigterm_answers_requests_waiting_on_a_load_with_503(orchestrator):
    orch = orchestrator({"settings": {"shutdown_grace": 1}, "models": {"m": fake_model("--startup-delay 20")}})
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(lambda: chat(orch.client(), "m"))
        assert wait_until(lambda: orch.services()["m"]["in_flight"] == 1, 5)
        orch.process.send_signal(signal.SIGTERM)
        response = waiting.result(timeout=20)
    assert response.status_code == 503
    assert response.json()["error"]["code"] in ("shutting_down", "model_unloaded")
    assert orch.process.wait(timeout=20) in (0, -signal.SIGTERM)
    assert "Traceback" not in orch.log()


def test_a_service_slower_than_upstream_timeout_gets_504(orchestrator):
    orch = orchestrator({"settings": {"upstream_timeout": 1}, "models": {"m": fake_model("--response-delay-ms 4000")}})
    with orch.client() as client:
        assert client.post("/admin/services/m/load").status_code == 200
        response = chat(client, "m")
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "upstream_timeout" and "stayed silent for 1 s" in error["message"]
    assert wait_until(lambda: orch.services()["m"]["in_flight"] == 0, 5)
