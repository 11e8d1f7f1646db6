"""The worst scheduling bugs of modelyard's peers, as regression tests. Each
runs the whole app in-process against real service processes, with the
invariant checker watching every state change (tests/support/inprocess.py):
no pool over budget, legal transitions, never a second process of a model."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import yaml

from orchestrator.scheduler import State
from tests.support.inprocess import Harness, live_processes, serve_in_process

FAKE = "${PYTHON} tests/support/fake_service.py --port ${PORT}"
ONE_GPU = {"gpus": [{"name": "sim", "memory_gb": 24}], "gpu_reserve_gb": 0}


def model(flags: str = "", **fields: Any) -> dict[str, Any]:
    return {"engine": "command", "cmd": f"{FAKE} {flags}".strip(), **fields}


async def wait_for_state(harness: Harness, model_id: str, state: State, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while harness.scheduler.services[model_id].state is not state:
        assert time.monotonic() < deadline, f"{model_id} never became {state.value}"
        await asyncio.sleep(0.01)


def assert_clean(harness: Harness) -> None:
    assert not harness.checker.violations, harness.checker.violations


async def test_llama_swap_281_concurrent_first_requests_load_the_model_once(tmp_path):
    """llama-swap #281: requests racing to a cold model started it twice."""
    config = {"settings": ONE_GPU, "models": {"a": model("--startup-delay 1", memory_gb=16)}}
    async with serve_in_process(config, tmp_path) as harness:
        results = await asyncio.gather(*(harness.chat("a", stream=i % 2 == 0) for i in range(60)))
        assert [status for status, _ in results] == [200] * 60
        assert harness.checker.starts == {"a": 1}
        assert_clean(harness)


async def test_llama_swap_946_ttl_unload_racing_a_new_request(tmp_path):
    """llama-swap #946: a request arriving while the TTL unload ran failed.
    Here the service takes a second to die (it ignores SIGTERM), so requests
    surely arrive mid-unload; each must wait for it and get a fresh process."""
    config = {
        "settings": {"shutdown_grace": 1},
        "models": {"a": model("--ignore-sigterm", ttl=1)},
    }
    async with serve_in_process(config, tmp_path) as harness:
        assert (await harness.chat("a"))[0] == 200
        await wait_for_state(harness, "a", State.STOPPING, timeout=5)
        results = await asyncio.gather(*(harness.chat("a", stream=i % 2 == 0) for i in range(10)))
        assert [status for status, _ in results] == [200] * 10
        assert harness.checker.starts == {"a": 2}
        assert_clean(harness)


async def test_ollama_17408_a_pending_load_is_not_blocked_when_its_victim_gets_a_request(tmp_path):
    """Ollama #17408: B's load waited on evicting A; a new request for A then
    blocked B forever. Here A is slow to die, a request for A arrives during
    that, and both finish: B first, then A evicts B once B is idle."""
    config = {
        "settings": {**ONE_GPU, "shutdown_grace": 1, "eviction_wait": 20},
        "models": {"a": model("--ignore-sigterm", memory_gb=16), "b": model(memory_gb=16)},
    }
    async with serve_in_process(config, tmp_path) as harness:
        assert (await harness.chat("a"))[0] == 200
        for_b = asyncio.create_task(harness.chat("b", delay_ms=300))
        await wait_for_state(harness, "a", State.STOPPING)
        for_a = asyncio.create_task(harness.chat("a"))
        (status_b, _), (status_a, _) = await asyncio.wait_for(asyncio.gather(for_b, for_a), 30)
        assert (status_b, status_a) == (200, 200)
        assert harness.checker.starts == {"a": 2, "b": 1}
        assert_clean(harness)


async def test_ollama_18282_a_model_that_can_never_fit_evicts_nothing_and_fails_fast(tmp_path):
    """Ollama #18282: a model too big for the card evicted the others and
    reloaded in a loop. Here it fails at once with 507, and evicts nothing."""
    config = {"settings": ONE_GPU, "models": {"a": model(memory_gb=8), "huge": model(memory_gb=30)}}
    async with serve_in_process(config, tmp_path) as harness:
        assert (await harness.chat("a"))[0] == 200
        began = time.monotonic()
        results = await asyncio.gather(*(harness.chat("huge") for _ in range(20)))
        assert time.monotonic() - began < 5
        assert {status for status, _ in results} == {507}
        assert "cannot fit even after evicting every other model" in results[0][1]["error"]["message"]
        assert harness.checker.starts == {"a": 1}  # huge never started, a never evicted
        assert harness.scheduler.services["a"].state is State.READY
        assert_clean(harness)


async def test_llama_swap_612_interleaved_a_b_a_c_traffic_keeps_the_hot_model(tmp_path):
    """llama-swap #612: A B A C A B ... with room for two swapped on every
    request. The often used A must stay; only B and C take turns."""
    config = {"settings": ONE_GPU, "models": {name: model(memory_gb=12) for name in ("a", "b", "c")}}
    async with serve_in_process(config, tmp_path) as harness:
        sequence = ["a", "b", "a", "c"] * 5
        for name in sequence:
            assert (await harness.chat(name))[0] == 200
        starts = harness.checker.starts
        assert starts["a"] == 1, starts  # a naive swap would restart A for every other request
        # Room for two: B and C take turns beside A, one start per B or C request.
        assert starts["b"] + starts["c"] == 10, starts
        assert_clean(harness)


async def test_localai_10719_a_retry_storm_against_a_failing_model_is_debounced(tmp_path):
    """LocalAI #10719: each client retry of a model that failed to load
    started it again, leaking GPU memory each time. Here retries within the
    backoff get 503 with Retry-After and start nothing, and no process leaks."""
    config = {"settings": ONE_GPU, "models": {"broken": model("--fail-load", memory_gb=8)}}
    async with serve_in_process(config, tmp_path) as harness:
        began = time.monotonic()
        statuses = []
        while time.monotonic() - began < 3.5:
            results = await asyncio.gather(*(harness.chat("broken") for _ in range(10)))
            statuses += [status for status, _ in results]
            await asyncio.sleep(0.1)
        assert set(statuses) == {503} and len(statuses) >= 100
        # Tries at 0 s, then after 1 s and 2 s of backoff: 3 in 3.5 s.
        assert harness.checker.starts["broken"] <= 3, harness.checker.starts
        assert harness.scheduler.services["broken"].reserved_gb == 0  # its memory was given back
        assert_clean(harness)


async def test_a_request_queued_on_a_model_being_reloaded_never_revives_the_old_version(tmp_path):
    """Found in review: a request waiting for a concurrency slot when a reload
    drained its model restarted the old version, outside the scheduler's
    books. It must go to the new version, and nothing may be left running."""
    fake = model(max_concurrency=1)
    config = {"settings": {"shutdown_grace": 1}, "models": {"m": fake}}
    async with serve_in_process(config, tmp_path) as harness:
        assert (await harness.chat("m"))[0] == 200
        old = harness.scheduler.services["m"]
        holding = asyncio.create_task(harness.chat("m", delay_ms=3000))
        await asyncio.sleep(0.3)
        queued = asyncio.create_task(harness.chat("m"))
        await asyncio.sleep(0.3)
        assert old.queued == 1
        harness.config_path.write_text(yaml.safe_dump({**config, "models": {"m": model("--chunks 3", max_concurrency=1)}}))
        status, report = await harness.admin("POST", "/reload?drain=0.5")
        assert status == 200 and report["changed"] == ["m"]
        assert (await holding)[0] == 502  # cut after the drain
        status, body = await queued
        assert status == 200, body
        new = harness.scheduler.services["m"]
        assert new is not old and new.state is State.READY and old.state is State.STOPPED
        assert [p.pid for p in live_processes(harness.instance, "m")] == [new.process.pid]
        assert_clean(harness)


async def test_a_popular_model_cannot_starve_a_waiting_load(tmp_path):
    """Requests for loaded models go first, but not forever: A never goes
    idle (three clients keep it busy), so B's load waits; after fair_wait,
    A stops taking new requests, drains, is swapped for B, and A's held
    requests get A back afterwards. Nobody gets an error."""
    config = {
        "settings": {**ONE_GPU, "fair_wait": 1, "eviction_wait": 30},
        "models": {"a": model(memory_gb=16), "b": model(memory_gb=16)},
    }
    async with serve_in_process(config, tmp_path) as harness:
        assert (await harness.chat("a"))[0] == 200
        stop = asyncio.Event()
        statuses: list[int] = []

        async def keep_a_busy() -> None:
            while not stop.is_set():
                statuses.append((await harness.chat("a", delay_ms=300))[0])

        clients = [asyncio.create_task(keep_a_busy()) for _ in range(3)]
        await asyncio.sleep(0.5)
        began = time.monotonic()
        status, body = await harness.chat("b")
        waited = time.monotonic() - began
        stop.set()
        await asyncio.gather(*clients)
        assert status == 200, body
        assert 1 <= waited < 10, waited  # after fair_wait, well before eviction_wait
        assert set(statuses) == {200}, statuses
        assert harness.checker.starts == {"a": 2, "b": 1}
        assert_clean(harness)
