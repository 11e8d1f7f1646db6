"""The vllm engine on GPUs, end to end with what cannot exist here simulated:
a simulated GPU inventory feeds the real scheduler, which starts the real
launcher (models/vllm/server.py) through an engine environment whose `vllm`
is a stand-in for the CUDA build (tests/support/fake_vllm). What vLLM is told
(its GPUs, its share of them, tensor parallelism, sleep mode) and how the
scheduler puts it to sleep and wakes it (vLLM's /sleep?level=1 and /wake_up)
are checked; vLLM's own sleep mode itself was not run (ENVIRONMENT.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.scheduler import State
from tests.support.inprocess import Harness, serve_in_process


def vllm_model(weights: Path, **fields: Any) -> dict[str, Any]:
    return {"engine": "vllm", "model": str(weights), "memory_gb": 16, "startup_timeout": 30, **fields}


async def told(harness: Harness, model_id: str) -> dict[str, Any]:
    """What the stand-in vLLM was started with, and the sleep calls it got."""
    service = harness.scheduler.services[model_id]
    async with harness.session.get(service.url + "/health") as response:
        return await response.json()


def option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


async def test_a_vllm_that_can_sleep_is_put_to_sleep_and_woken_through_vllms_endpoints(tmp_path, fake_cuda_vllm):
    models = {
        "a": vllm_model(fake_cuda_vllm, sleep={}, args={"enforce_eager": False}),
        "b": vllm_model(fake_cuda_vllm),
    }
    settings = {"gpus": [{"name": "H100 (simulated)", "memory_gb": 24}], "gpu_reserve_gb": 0, "memory_budget_gb": 40}
    async with serve_in_process({"settings": settings, "models": models}, tmp_path / "state") as harness:
        assert (await harness.chat("a"))[0] == 200
        started = await told(harness, "a")
        argv, env = started["argv"], started["env"]
        assert option(argv, "--served-model-name") == "a"
        assert option(argv, "--gpu-memory-utilization") == "0.666"  # 16 of the card's 24 GB, rounded down
        assert "--enable-sleep-mode" in argv and env["VLLM_SERVER_DEV_MODE"] == "1"
        assert "--no-enforce-eager" in argv  # `false` in models.yaml reaches vLLM
        assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["VLLM_NO_USAGE_STATS"] == "1"
        assert env["VLLM_CPU_KVCACHE_SPACE"] is None

        pid = harness.scheduler.services["a"].process.pid
        assert (await harness.chat("b"))[0] == 200  # one card: a must make room
        a = harness.scheduler.services["a"]
        assert a.state is State.ASLEEP and a.process.pid == pid
        assert (await told(harness, "a"))["sleep_levels"] == [1]
        # b has no `sleep`: no sleep mode, and evicting it means stopping it.
        b_started = await told(harness, "b")
        assert "--enable-sleep-mode" not in b_started["argv"] and b_started["env"]["VLLM_SERVER_DEV_MODE"] is None

        assert (await harness.chat("a"))[0] == 200  # woken in place through /wake_up
        assert harness.scheduler.services["a"].process.pid == pid
        assert (await told(harness, "a"))["wakes"] == 1
        assert harness.scheduler.services["b"].state is State.STOPPED
        assert not harness.checker.violations, harness.checker.violations


async def test_a_vllm_on_two_gpus_runs_tensor_parallel_on_both(tmp_path, fake_cuda_vllm):
    settings = {"gpus": [{"name": "L4 (simulated)", "memory_gb": 24}] * 2, "gpu_reserve_gb": 0}
    models = {"big": vllm_model(fake_cuda_vllm, gpus=2, memory_gb=30)}
    async with serve_in_process({"settings": settings, "models": models}, tmp_path / "state") as harness:
        assert (await harness.chat("big"))[0] == 200
        started = await told(harness, "big")
    assert option(started["argv"], "--tensor-parallel-size") == "2"
    assert option(started["argv"], "--gpu-memory-utilization") == "0.625"  # 15 of each card's 24 GB
    assert started["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"


async def test_the_cuda_build_placed_on_the_cpu_fails_its_load_with_the_fix(tmp_path, fake_cuda_vllm):
    settings = {"gpus": [{"name": "L4 (simulated)", "memory_gb": 24}], "gpu_reserve_gb": 0}
    models = {"m": vllm_model(fake_cuda_vllm, gpus=0, memory_gb=2)}
    async with serve_in_process({"settings": settings, "models": models}, tmp_path / "state") as harness:
        status, body = await harness.chat("m")
    assert status == 503
    assert "the CUDA build of vLLM needs a GPU" in body["error"]["message"]
