"""The sleep tier: a service that can sleep (models.yaml `sleep`) is put to
sleep instead of stopped while host memory allows; asleep it holds host
memory only, and its next request wakes it on the GPUs it slept on, in the
same process. Exercised with test services that implement POST /sleep and
POST /wake, on a simulated GPU, against the real scheduler."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from orchestrator.scheduler import State
from tests.support.inprocess import Harness, serve_in_process

FAKE = "${PYTHON} tests/support/fake_service.py --port ${PORT}"
ONE_GPU = {"gpus": [{"name": "sim", "memory_gb": 24}], "gpu_reserve_gb": 0}


def sleeper(flags: str = "", **fields: Any) -> dict[str, Any]:
    return {"engine": "command", "cmd": f"{FAKE} {flags}".strip(), "memory_gb": 16, "sleep": {}, **fields}


def host_reserved(harness: Harness) -> float:
    return sum(s.placement.reservation.get("host", 0.0) for s in harness.scheduler.memory_holders() if s.placement)


async def test_an_evicted_model_sleeps_and_wakes_in_the_same_process(tmp_path):
    config = {"settings": {**ONE_GPU, "memory_budget_gb": 40}, "models": {"a": sleeper(), "b": sleeper()}}
    async with serve_in_process(config, tmp_path) as harness:
        services = harness.scheduler.services
        assert (await harness.chat("a"))[0] == 200
        pid_a = services["a"].process.pid
        assert (await harness.chat("b"))[0] == 200
        a = services["a"]
        assert a.state is State.ASLEEP and a.process.pid == pid_a  # asleep, not stopped
        assert a.placement.reservation == {"host": 16} and a.home.pools == ("gpu0",)
        assert host_reserved(harness) == 16
        status, body = await harness.chat("a", stream=True)  # wakes a; b goes to sleep
        assert status == 200 and body[-1] == "[DONE]"
        assert services["a"].process.pid == pid_a and services["a"].state is State.READY
        assert services["b"].state is State.ASLEEP
        assert (services["a"].sleeps, services["a"].wakes) == (1, 1)
        assert harness.checker.starts == {"a": 1, "b": 1}  # two swaps, no reload
        metrics = await (await harness.session.get(harness.url + "/metrics")).text()
        assert 'modelyard_service_sleeps_total{model="a",outcome="asleep"} 1.0' in metrics
        assert 'modelyard_service_wake_seconds_count{model="a"} 1.0' in metrics
        assert not harness.checker.violations, harness.checker.violations


async def test_without_host_memory_to_sleep_in_it_is_stopped(tmp_path):
    config = {"settings": {**ONE_GPU, "memory_budget_gb": 10}, "models": {"a": sleeper(), "b": sleeper()}}
    async with serve_in_process(config, tmp_path) as harness:
        assert (await harness.chat("a"))[0] == 200
        assert (await harness.chat("b"))[0] == 200
        assert harness.scheduler.services["a"].state is State.STOPPED
        assert host_reserved(harness) == 0
        assert not harness.checker.violations, harness.checker.violations


async def test_asleep_models_are_stopped_when_host_memory_is_needed(tmp_path):
    config = {
        "settings": {**ONE_GPU, "memory_budget_gb": 20},
        "models": {"a": sleeper(), "b": sleeper(), "cpu": {"engine": "command", "cmd": FAKE, "memory_gb": 10, "gpus": 0}},
    }
    async with serve_in_process(config, tmp_path) as harness:
        assert (await harness.chat("a"))[0] == 200
        assert (await harness.chat("b"))[0] == 200  # a asleep: 16 of the host's 20 GB
        assert (await harness.chat("cpu"))[0] == 200  # needs 10: a must go
        services = harness.scheduler.services
        assert services["a"].state is State.STOPPED and services["cpu"].state is State.READY
        assert not harness.checker.violations, harness.checker.violations


async def test_a_model_that_fails_to_sleep_is_stopped_instead(tmp_path):
    config = {"settings": {**ONE_GPU, "memory_budget_gb": 40}, "models": {"a": sleeper("--fail-sleep"), "b": sleeper()}}
    async with serve_in_process(config, tmp_path) as harness:
        assert (await harness.chat("a"))[0] == 200
        assert (await harness.chat("b"))[0] == 200
        a = harness.scheduler.services["a"]
        assert a.state is State.STOPPED and "failed to go to sleep" in (a.last_error or "")
        assert (await harness.chat("a"))[0] == 200  # a fresh start, no backoff: nothing failed to load
        await harness.chat("b")  # a is evicted again (stopped), b runs; now ask for a sleep by hand
        assert (await harness.chat("a"))[0] == 200
        status, body = await harness.admin("POST", "/services/a/sleep")
        assert status == 502 and body["error"]["code"] == "sleep_failed"
        assert "failed to go to sleep" in body["error"]["message"]
        assert harness.scheduler.services["a"].state is State.STOPPED
        assert not harness.checker.violations, harness.checker.violations


async def test_a_failed_wake_is_a_503_then_a_fresh_start(tmp_path):
    config = {"settings": {**ONE_GPU, "memory_budget_gb": 40}, "models": {"a": sleeper("--fail-wake"), "b": sleeper()}}
    async with serve_in_process(config, tmp_path) as harness:
        assert (await harness.chat("a"))[0] == 200
        assert (await harness.chat("b"))[0] == 200
        status, body = await harness.chat("a")
        assert status == 503 and "failed to wake" in body["error"]["message"]
        a = harness.scheduler.services["a"]
        assert a.state is State.FAILED and a.process is None
        await asyncio.sleep(1.1)  # the backoff after one failure
        assert (await harness.chat("a"))[0] == 200
        assert harness.checker.starts["a"] == 2
        assert not harness.checker.violations, harness.checker.violations


async def test_a_model_killed_in_its_sleep_restarts_on_its_next_request(tmp_path):
    config = {"settings": {**ONE_GPU, "memory_budget_gb": 40}, "models": {"a": sleeper(), "b": sleeper()}}
    async with serve_in_process(config, tmp_path) as harness:
        assert (await harness.chat("a"))[0] == 200
        assert (await harness.chat("b"))[0] == 200
        a = harness.scheduler.services["a"]
        os.kill(a.process.pid, signal.SIGKILL)
        for _ in range(100):
            if a.state is State.FAILED:
                break
            await asyncio.sleep(0.02)
        assert a.state is State.FAILED and host_reserved(harness) == 0  # its host memory is free again
        assert (await harness.chat("a"))[0] == 200
        assert harness.checker.starts["a"] == 2
        assert not harness.checker.violations, harness.checker.violations


async def test_the_admin_api_puts_a_model_to_sleep_and_a_request_wakes_it(tmp_path):
    config = {"settings": {**ONE_GPU, "memory_budget_gb": 40}, "models": {"a": sleeper(), "cpu": {"engine": "command", "cmd": FAKE, "gpus": 0}}}
    async with serve_in_process(config, tmp_path) as harness:
        assert (await harness.chat("a"))[0] == 200
        status, body = await harness.admin("POST", "/services/a/sleep")
        assert status == 200 and body["state"] == "asleep" and body["pools"] == ["host"]
        status, body = await harness.admin("POST", "/services/a/sleep")
        assert status == 409 and body["error"]["code"] == "not_idle"
        assert (await harness.chat("a"))[0] == 200
        assert harness.scheduler.services["a"].wakes == 1
        assert (await harness.chat("cpu"))[0] == 200
        status, body = await harness.admin("POST", "/services/cpu/sleep")
        assert status == 409 and body["error"]["code"] == "cannot_sleep"
