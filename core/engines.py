"""How each engine is started: its interpreter, its command line, its environment.

Engines with a server of our own (models/<engine>/server.py) run with the
interpreter of their own virtual environment, <envs>/<engine>/bin/python,
because engines pin conflicting library versions. The `command` engine runs
whatever OpenAI-compatible server models.yaml names.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from core.config import ROOT_DIR, Config, ModelConfig, expand
from core.errors import ServiceError
from core.process import INSTANCE_ENV, PARENT_ENV, SERVICE_ID_ENV, LaunchSpec


@dataclass(frozen=True)
class GpuAssignment:
    """The GPUs a service was placed on, and the share of each card's memory
    reserved for it. No GPU indices: it runs on the CPU, and sees no GPU."""

    indices: tuple[int, ...] = ()
    memory_fraction: float = 0.0

    def placeholders(self) -> dict[str, str]:
        return {
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, self.indices)),
            "GPU_COUNT": str(len(self.indices)),
            "GPU_MEMORY_FRACTION": f"{self.memory_fraction:.3f}",
        }


def engine_python(engine: str, envs_dir: Path) -> Path:
    return envs_dir / engine / "bin" / "python"


def install_hint(engine: str) -> str:
    return f"./scripts/install.sh --engine {engine}"


# Launchers that hand the engine's arguments on unread take them after `--`,
# so that none of them can be mistaken for the launcher's own.
LAUNCHER_SEPARATOR = {"vllm": ("--",)}

# Engines serving more than one task are told which one the model's `type` asks
# for; they check it against the model they load (a `service` decides by itself).
ENGINE_TASKS = {"onnx": {"embedding": "embedding", "classification": "image-classification"}}

# Engines whose switches come in pairs (--enforce-eager / --no-enforce-eager):
# false in models.yaml then says --no-..., overriding the engine's default.
NEGATABLE_FLAGS = {"vllm"}


def engine_args(args: dict[str, str | int | float | bool], negatable: bool = False) -> list[str]:
    """models.yaml `args` as command-line flags: {max_len: 2048} -> --max-len 2048.
    false omits the flag, or with negatable gives --no-<flag>."""
    argv: list[str] = []
    for key, value in args.items():
        name = key.replace("_", "-")
        if value is True:
            argv.append("--" + name)
        elif value is False:
            if negatable:
                argv.append("--no-" + name)
        else:
            argv += ["--" + name, str(value)]
    return argv


def task_args(model: ModelConfig) -> list[str]:
    task = ENGINE_TASKS.get(model.engine, {}).get(model.type)
    return ["--task", task] if task else []


def lora_args(model: ModelConfig) -> dict[str, str | int | float | bool]:
    """vLLM's LoRA switches for a model with `lora` (its own `args` may override them)."""
    if model.lora is None:
        return {}
    args: dict[str, str | int | float | bool] = {
        "enable_lora": True,
        "max_lora_rank": model.lora.max_rank,
        "max_loras": model.lora.max_loras,
    }
    if model.lora.max_cpu_loras is not None:
        args["max_cpu_loras"] = model.lora.max_cpu_loras
    return args


def placeholder_values(
    model_id: str, model: ModelConfig, port: int, config: Config, gpus: GpuAssignment | None = None,
    service_id: str | None = None,
) -> dict[str, str]:
    values = {
        "PORT": str(port),
        "MODEL_ID": model_id,
        "SERVICE_ID": service_id or model_id,
        "STATE_DIR": str(config.state_path()),
        "ROOT": str(ROOT_DIR),
        "PYTHON": sys.executable,
        **(gpus or GpuAssignment()).placeholders(),
    }
    values["MODEL_PATH"] = expand(model.model or "", values)
    return values


def launch_spec(
    model_id: str,
    model: ModelConfig,
    port: int,
    config: Config,
    instance: str,
    gpus: GpuAssignment | None = None,
    service_id: str | None = None,
) -> LaunchSpec:
    """The command line and environment that start model_id on port, on the
    GPUs it was placed on (gpus None: the host has no GPU inventory, so the
    environment's CUDA_VISIBLE_DEVICES is left as it is). service_id: the
    scheduler's name for it when that is not model_id (a further local
    replica, chat~2): its log file is named after it.

    Raises ServiceError(503) naming the fix when the engine's environment or
    the model's files are missing, before anything is spawned.
    """
    values = placeholder_values(model_id, model, port, config, gpus, service_id)
    env = dict(os.environ)
    env.update({key: expand(value, values) for key, value in model.env.items()})
    # Set below from the placement, never inherited or configured.
    for name in ("MODELYARD_SLEEP", "MODELYARD_GPU_MEMORY_FRACTION"):
        env.pop(name, None)
    if gpus is not None:
        # Set after the model's own env: memory accounting depends on the
        # service using exactly the GPUs it was given (and none when on CPU).
        env["CUDA_VISIBLE_DEVICES"] = values["CUDA_VISIBLE_DEVICES"]
        # CUDA numbers GPUs fastest first unless told otherwise; NVML's indices
        # (the inventory's) follow the PCI bus.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["MODELYARD_GPU_MEMORY_FRACTION"] = values["GPU_MEMORY_FRACTION"]
        if model.sleep is not None and gpus.indices:
            env["MODELYARD_SLEEP"] = "1"  # the scheduler will sleep it: the engine must be able to
    env.update(
        {
            "PORT": str(port),
            "MODEL_ID": model_id,
            SERVICE_ID_ENV: service_id or model_id,  # chat~2 for a further local replica of chat
            # Where generated files go; the orchestrator serves them under signed URLs.
            "MODELYARD_FILES_DIR": str(config.state_path() / "files"),
            INSTANCE_ENV: instance,
            PARENT_ENV: str(os.getpid()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    log_path = service_log_path(config, service_id or model_id)
    grace = str(config.settings.shutdown_grace)

    if model.engine == "command":
        assert model.cmd is not None  # the schema requires it
        argv = shlex.split(expand(model.cmd, values))
        return LaunchSpec(argv=argv, env=env, log_path=log_path, cwd=ROOT_DIR)

    python = engine_python(model.engine, config.envs_path())
    if not python.exists():
        raise ServiceError(
            503,
            f"model '{model_id}' needs the {model.engine} engine, whose environment is missing "
            f"({python.parent.parent}); install it with {install_hint(model.engine)}",
            code="engine_not_installed",
        )
    model_path = values["MODEL_PATH"]
    if model_path and "://" not in model_path and not Path(model_path).exists():
        raise ServiceError(
            503,
            f"model '{model_id}': weights not found at {model_path}; prepare them with ./scripts/install.sh "
            "(or fix `model` in models.yaml)",
            code="model_files_missing",
        )
    server = ROOT_DIR / "models" / model.engine / "server.py"
    argv = [
        str(python),
        str(server),
        "--port",
        str(port),
        "--model-path",
        model_path,
        "--model-id",
        model_id,
        "--shutdown-grace",
        grace,
        *task_args(model),
        *LAUNCHER_SEPARATOR.get(model.engine, ()),
        *engine_args(
            {**lora_args(model), **{k: expand(v, values) if isinstance(v, str) else v for k, v in model.args.items()}},
            negatable=model.engine in NEGATABLE_FLAGS,
        ),
    ]
    return LaunchSpec(argv=argv, env=env, log_path=log_path, cwd=ROOT_DIR)


def service_log_path(config: Config, model_id: str) -> Path:
    """Where a service's output goes (rotated as .log.1, .log.2 ...); model_id: its service id (chat~2)."""
    safe = "".join(c if c.isalnum() or c in "._-~" else "_" for c in model_id)
    return config.state_path() / "logs" / f"{safe}.log"


# The secret the orchestrator gives the drift service, which it then requires on
# the request feed (models/drift/request_source.py reads the same name).
FEED_TOKEN_ENV = "MODELYARD_DRIFT_FEED_TOKEN"
# Where the simulator's benchmark job reaches the orchestrator, and the per-start
# credential it sends there (models/simulator/server.py reads the same names).
ORCHESTRATOR_URL_ENV = "MODELYARD_ORCHESTRATOR_URL"
SIMULATOR_TOKEN_ENV = "MODELYARD_SIMULATOR_TOKEN"


def sibling_launch_spec(name: str, port: int, config: Config, instance: str,
                        extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> LaunchSpec:
    """The command line of a sibling service (models/<name>/server.py: drift, simulator):
    its engine's interpreter, the state directory, no GPU. Raises
    ServiceError(503) naming the install command when its environment is missing."""
    python = engine_python(name, config.envs_path())
    if not python.exists():
        raise ServiceError(
            503,
            f"the {name} service's environment is missing ({python.parent.parent}); install it with "
            f"{install_hint(name)}",
            code="engine_not_installed",
        )
    extra = env or {}
    env = dict(os.environ)
    env.update({
        **extra,
        "PORT": str(port),
        "CUDA_VISIBLE_DEVICES": "",  # statistics only: it must never take GPU memory from the models
        "MODELYARD_STATE_DIR": str(config.state_path()),
        INSTANCE_ENV: instance,
        PARENT_ENV: str(os.getpid()),
        "PYTHONUNBUFFERED": "1",
    })
    argv = [str(python), str(ROOT_DIR / "models" / name / "server.py"), "--port", str(port),
            "--state-dir", str(config.state_path()), "--shutdown-grace", str(config.settings.shutdown_grace),
            *extra_args]
    # Named apart from the models' logs: a model may be called "drift" too.
    return LaunchSpec(argv=argv, env=env, log_path=service_log_path(config, f"{name}.sibling"), cwd=ROOT_DIR)
