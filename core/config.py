"""models.yaml: the schema (pydantic) and a loader whose errors name the file,
the model id, the field and the reason.

`python -m core.config --schema` prints the JSON Schema generated from these
models (configs/models.schema.json is that output, for editors).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.replica_config import ReplicasConfig

MODEL_TYPES = ("text", "embedding", "image", "audio", "vision", "classification", "service")
# The types an engine can serve (any engine may also be a `service`, reachable on every route).
ENGINE_TYPES = {
    "diffusers": ("image",),
    "musicgen": ("audio",),
    "embeddings": ("embedding",),
    "onnx": ("embedding", "classification"),
}

# Placeholders every string field may use; ${NAME} of any other name must be an
# environment variable, so a typo is caught at start-up rather than at load.
BUILTIN_PLACEHOLDERS = (
    "PORT",
    "MODEL_ID",
    "SERVICE_ID",  # MODEL_ID, or chat~2 for a further local replica (replicas.local): paths of its own
    "MODEL_PATH",
    "STATE_DIR",
    "ROOT",
    "PYTHON",
    # Set from the service's placement: its GPUs, how many, and the share of
    # each card reserved for it (vLLM's --gpu-memory-utilization).
    "CUDA_VISIBLE_DEVICES",
    "GPU_COUNT",
    "GPU_MEMORY_FRACTION",
)
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")

HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")

ROOT_DIR = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """models.yaml cannot be used; str(error) lists every problem, one a line."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SleepConfig(_Strict):
    """How a service sleeps: its weights leave the GPU for host memory and come
    back in a fraction of a reload's time (vLLM's sleep mode; our transformers
    engine). The scheduler puts it to sleep instead of stopping it while host
    memory allows."""

    sleep_path: str | None = Field(
        None,
        description="POST here puts it to sleep. Unset: /sleep?level=1 for engine vllm (its sleep mode, which "
        "the launcher enables), else /sleep.",
    )
    wake_path: str | None = Field(None, description="POST here wakes it. Unset: /wake_up for engine vllm, else /wake.")
    host_memory_gb: float | None = Field(
        None, ge=0, description="Host memory it holds asleep; unset: as much as it reserves on its GPUs."
    )
    timeout: float = Field(60.0, gt=0, description="Seconds a sleep or wake call may take before it counts as failed.")

    @field_validator("sleep_path", "wake_path")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith("/"):
            raise ValueError("must start with '/'")
        return path


# vLLM's --max-lora-rank choices.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class LoraConfig(_Strict):
    """Multi-tenant LoRA (engine vllm): adapters of this base model, each
    addressed by clients as a model name of its own, loaded into the running
    base service on first use; more can be registered at runtime through
    POST /admin/adapters."""

    max_rank: int = Field(16, description=f"Largest adapter rank accepted, one of {', '.join(map(str, LORA_RANKS))}.")
    max_loras: int = Field(4, ge=1, le=256, description="Adapters that can serve in one batch.")
    max_cpu_loras: int | None = Field(
        None, ge=1, description="Adapters kept loaded in host memory (least recently used ones are dropped "
        "and reloaded on demand); unset: vLLM's default, max_loras."
    )
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="Adapter name -> local directory of a PEFT LoRA adapter (adapter_config.json and weights); "
        "${STATE_DIR} and ${ROOT} may be used.",
    )

    @field_validator("max_rank")
    @classmethod
    def _rank(cls, rank: int) -> int:
        if rank not in LORA_RANKS:
            raise ValueError(f"must be one of {', '.join(map(str, LORA_RANKS))}")
        return rank

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, adapters: dict[str, str]) -> dict[str, str]:
        for name in adapters:
            if not MODEL_NAME.match(name):
                raise ValueError(f"adapter name {name!r} must match {MODEL_NAME.pattern}")
        return adapters

    @model_validator(mode="after")
    def _cpu_cache_holds_a_batch(self) -> "LoraConfig":
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be at least max_loras ({self.max_loras})")
        return self

    def settings(self) -> dict[str, Any]:
        """What the base service must be started with (adapters come and go without a restart)."""
        return self.model_dump(exclude={"adapters"})


class Prices(_Strict):
    """`prices:` of a model: what its use costs, for cost tracking per key and model
    (orchestrator/accounting.py). Amounts in settings.currency; all add up."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    per_1k_prompt_tokens: float = Field(0.0, ge=0, description="Per 1,000 tokens of input (prompt, embeddings).")
    per_1k_completion_tokens: float = Field(0.0, ge=0, description="Per 1,000 tokens generated.")
    per_image: float = Field(0.0, ge=0, description="Per image generated or classified.")
    per_audio_second: float = Field(0.0, ge=0, description="Per second of audio generated.")
    per_gpu_second: float = Field(0.0, ge=0, description="Per second a request held the model's service, "
                                  "times the GPUs the service runs on (0 on the CPU).")
    per_request: float = Field(0.0, ge=0, description="Per request answered.")


class ModelConfig(_Strict):
    """One entry under `models:`. The key in the mapping is the model id."""

    type: Literal["text", "embedding", "image", "audio", "vision", "classification", "service"] = Field(
        "text", description="What the model serves; decides which routes reach it."
    )
    engine: Literal["vllm", "transformers", "embeddings", "onnx", "diffusers", "musicgen", "command"] = Field(
        description="Which engine starts it: a models/<engine>/ launcher, or `command` "
        "for any OpenAI-compatible server given as `cmd`."
    )
    model: str | None = Field(
        None, description="Local path (or URI) of the weights, passed to the engine as MODEL_PATH."
    )
    source: str | None = Field(
        None,
        description="The Hugging Face repo the weights come from (org/name, or org/name@revision); "
        "scripts/download-models.sh fetches it into `model`.",
    )
    cmd: str | None = Field(
        None,
        description="engine=command only: the command line, with ${PORT} where the server "
        "must listen. Split like a shell would, never run through a shell.",
    )
    args: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Engine arguments, passed as --key value (true: --key; false: omitted).",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    aliases: list[str] = Field(default_factory=list, description="Other names clients may use.")
    served_name: str | None = Field(
        None,
        description="The name the upstream server knows the model by, if not the id "
        "(the `model` field is rewritten to it).",
    )
    startup_timeout: float = Field(
        120.0, gt=0, description="Seconds to wait for the health check to pass before giving up."
    )
    health_path: str = Field("/health", description="Path that answers 200 once the service is ready.")
    memory_gb: float | None = Field(
        None,
        ge=0,
        description="Memory the service needs (GPU memory when it runs on GPUs, split evenly across them; "
        "else host memory). Unset: measured from its last run, else estimated from the model's config.json, "
        "else 0 (unknown).",
    )
    gpus: int | None = Field(
        None,
        ge=0,
        le=64,
        description="GPUs the service needs (tensor parallel size); 0 runs it on the CPU in host memory. "
        "Unset: 1 on a host with GPUs (0 for type 'service'), else 0.",
    )
    priority: int = Field(
        0,
        ge=0,
        le=100,
        description="Eviction priority: when room must be made, services of lower priority are stopped first.",
    )
    ttl: float | None = Field(
        None, ge=0, description="Seconds idle before the service is stopped; 0 keeps it running. "
        "Unset: settings.ttl."
    )
    preload: bool = Field(False, description="Start it when the orchestrator starts, not on its first request.")
    sleep: SleepConfig | None = Field(
        None,
        description="The service can sleep (weights to host memory) and wake: evicting it then costs a "
        "wake-up instead of a reload. Only for services on GPUs.",
    )
    max_concurrency: int = Field(
        0, ge=0, description="Requests forwarded at once; 0 means no limit. Others wait in a queue."
    )
    max_queue: int = Field(
        256, ge=0, description="Requests allowed to wait for a concurrency slot; beyond it, 429."
    )
    pinned: bool = Field(False, description="Never evicted to make room for another model.")
    rpm: float | None = Field(
        None, gt=0, description="Requests per minute this model accepts from all clients together (a token bucket "
        "holding one second's worth); beyond it, 429 rate_limited. Null: no limit."
    )
    tpm: float | None = Field(
        None, gt=0, description="Tokens per minute (prompt and completion) this model accepts from all clients "
        "together. A request is admitted while the bucket holds a token; its tokens are taken when its answer "
        "is known, so a large answer delays the next ones. Null: no limit."
    )
    prices: Prices = Field(default_factory=Prices, description="What its use costs (cost tracking).")  # type: ignore[arg-type]
    lora: LoraConfig | None = Field(
        None, description="Engine vllm: serve LoRA adapters of this model, each under a model name of its own."
    )
    replicas: ReplicasConfig | None = Field(
        None, description="Serve this model from several places: the local service and peers (other appliances "
        "or OpenAI-compatible servers), picked per request by a strategy, with health checks, circuit breakers "
        "and retries before the first byte (docs/ROUTING.md)."
    )

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, aliases: list[str]) -> list[str]:
        for alias in aliases:
            if not MODEL_NAME.match(alias):
                raise ValueError(f"alias {alias!r} must match {MODEL_NAME.pattern}")
        return aliases

    @field_validator("source")
    @classmethod
    def _repo_name(cls, source: str | None) -> str | None:
        if source is not None and not HF_REPO.match(source):
            raise ValueError("must be a Hugging Face repo id, org/name or org/name@revision")
        return source

    @field_validator("health_path")
    @classmethod
    def _absolute_path(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError("must start with '/'")
        return path

    @model_validator(mode="after")
    def _engine_fields(self) -> "ModelConfig":
        if self.engine == "command":
            if not self.cmd:
                raise ValueError("engine 'command' needs `cmd`, a command line containing ${PORT}")
            if "${PORT}" not in self.cmd:
                raise ValueError("`cmd` must contain ${PORT}: the server has to listen where it is told")
            try:
                shlex.split(self.cmd)
            except ValueError as exc:
                raise ValueError(f"`cmd` cannot be split into arguments: {exc}") from None
        elif self.cmd:
            raise ValueError(f"`cmd` is only for engine 'command', not {self.engine!r}")
        elif self.served_name:
            raise ValueError(f"`served_name` is only for engine 'command': engine {self.engine!r} serves the model id")
        served = ENGINE_TYPES.get(self.engine)
        if served is not None and self.type not in (*served, "service"):
            choices = " or ".join(f"`type: {t}`" for t in served)
            raise ValueError(f"engine {self.engine!r} does not serve type {self.type!r}: set {choices}")
        if self.lora is not None and self.engine != "vllm":
            raise ValueError(f"`lora` needs engine 'vllm', not {self.engine!r}")
        if self.sleep is not None:
            vllm = self.engine == "vllm"
            self.sleep.sleep_path = self.sleep.sleep_path or ("/sleep?level=1" if vllm else "/sleep")
            self.sleep.wake_path = self.sleep.wake_path or ("/wake_up" if vllm else "/wake")
        if self.engine != "command" and not self.model:
            raise ValueError(f"engine {self.engine!r} needs `model`, the path of a local model directory")
        return self


class SimulatedGPU(_Strict):
    """One GPU of a simulated inventory (settings.gpus)."""

    name: str = Field(min_length=1, description="Shown in /admin/gpus, e.g. 'H100 80GB (simulated)'.")
    memory_gb: float = Field(gt=0, description="Memory of the simulated card.")


class JwtSettings(_Strict):
    """`settings.auth.jwt`: bearer tokens from an identity provider, besides API keys
    (orchestrator/jwt_auth.py). Exactly one of secret_env (HS256) and jwks_file
    (RS256, ES256)."""

    audience: str = Field(min_length=1, description="The `aud` every token must carry.")
    issuer: str | None = Field(None, description="The `iss` every token must carry; null: not checked.")
    secret_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the HS256 shared secret (the secret stays out of this file).",
    )
    jwks_file: str | None = Field(None, description="JWKS file with the public keys of RS256/ES256 tokens (by kid).")
    role_claim: str = Field("role", description="Claim naming the role: viewer, member or admin.")
    default_role: Literal["viewer", "member", "admin"] = Field(
        "viewer", description="Role of a token without the role claim."
    )
    scopes_claim: str = Field("scope", description="Claim with extra scopes (space-separated, or a list).")
    models_claim: str = Field("models", description="Claim listing the models the token may use; absent: all.")
    tenant_claim: str = Field("tenant", description="Claim naming the tenant (kept with the request).")
    leeway: float = Field(30.0, ge=0, le=600, description="Seconds of clock skew allowed on exp and nbf.")

    @model_validator(mode="after")
    def _one_key_source(self) -> "JwtSettings":
        if (self.secret_env is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of secret_env (HS256) and jwks_file (RS256, ES256)")
        return self


class CaptureSettings(_Strict):
    """`settings.capture`: keep request and response bodies, encrypted at rest
    (orchestrator/capture.py, docs/SECURITY.md), for debugging and drift.
    The master key comes from key_file or key_env: 64 hex characters or the
    base64 of 32 bytes (`python -m orchestrator.capture_cli new-key`)."""

    enabled: bool = Field(False, description="Keep the bodies of requests to the models (and their answers).")
    key_file: str | None = Field(None, description="File holding the current master key.")
    key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                description="Environment variable holding the current master key.")
    old_key_files: list[str] = Field(default_factory=list, description="Earlier master keys still needed to "
                                     "read older records, until `capture_cli rotate` re-wraps them.")
    old_key_envs: list[str] = Field(default_factory=list, description="The same, from environment variables.")
    max_body_mb: float = Field(8.0, gt=0, le=1024, description="Each body is kept up to this size (cut beyond).")
    retention_days: float = Field(30.0, gt=0, description="Records older than this are deleted.")

    @model_validator(mode="after")
    def _one_key_source(self) -> "CaptureSettings":
        if self.enabled and (self.key_file is None) == (self.key_env is None):
            raise ValueError("capture is enabled: give exactly one of key_file and key_env (the master key)")
        return self


class TracingSettings(_Strict):
    """`settings.tracing`: OpenTelemetry spans of the model routes, sent over
    OTLP/HTTP (orchestrator/tracing.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(False, description="Send a trace of every request to a model (default off).")
    endpoint: str = Field("http://127.0.0.1:4318/v1/traces", pattern=r"^https?://",
                          description="The collector's OTLP/HTTP traces URL.")
    headers: dict[str, str] = Field(default_factory=dict, description="Headers for the collector (e.g. its "
                                    "API key; use ${ENV} references to keep secrets out of this file).")
    service_name: str = Field("modelyard", min_length=1, description="service.name of the spans.")
    sample_ratio: float = Field(1.0, ge=0, le=1, description="Share of traces kept (a client's sampled "
                                "traceparent is followed either way).")
    export_interval: float = Field(2.0, gt=0, le=60, description="Seconds between batches sent.")

    def resolved_headers(self) -> dict[str, str]:
        """headers with each ${NAME} replaced by that environment variable (ValueError naming one unset)."""
        def value_of(match: re.Match[str]) -> str:
            if match.group(1) not in os.environ:
                raise ValueError(f"settings.tracing.headers: ${{{match.group(1)}}} is not set in the environment")
            return os.environ[match.group(1)]

        headers = {name: _PLACEHOLDER.sub(value_of, value) for name, value in self.headers.items()}
        for name, value in headers.items():
            if any(c in name + value for c in "\r\n\0") or not name.strip():
                raise ValueError(f"settings.tracing.headers: {name!r} is not a usable header (empty, or a line break "
                                 "in its name or value)")
        return headers


class SimulatorSettings(_Strict):
    """`settings.simulator`: the performance simulator (models/simulator/), a
    sibling service the orchestrator starts, restarts and routes /simulator/*
    to: predictions and configuration search for the LLMs here, and the
    benchmark job that measures them through this orchestrator."""

    enabled: bool = Field(False, description="Run the simulator (needs ./scripts/install.sh --engine simulator) "
                          "and serve its API under /simulator/.")
    startup_timeout: float = Field(120.0, gt=0, description="Seconds the simulator may take to become healthy "
                                   "(its first start measures this host's CPU and trains the regressor).")


class DriftSettings(_Strict):
    """`settings.drift`: the drift monitor (models/drift/), a sibling service the
    orchestrator starts, restarts and routes /drift/* to, and the feed of every
    completed request's features into it (orchestrator/drift_feed.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(False, description="Run the drift service (needs ./scripts/install.sh --engine drift) "
                          "and serve its API under /drift/.")
    feed_requests: bool = Field(True, description="Send each completed request's features (latency, tokens, "
                                "status, ...) to monitors with `source: requests`.")
    prompt_embeddings: str | None = Field(None, description="An embedding model's id: the prompts of chat and "
                                          "completion requests are embedded with it, as the feature "
                                          "prompt_embedding; it is loaded through the scheduler like any model, "
                                          "taking its memory (null: no embeddings).")
    max_pending: int = Field(1_000_000, ge=1000, le=100_000_000, description="Request events kept waiting while "
                             "the drift service is down; beyond it the oldest are dropped (and counted).")
    batch_size: int = Field(1000, ge=1, le=10_000, description="Events sent to the drift service per call.")
    startup_timeout: float = Field(60.0, gt=0, description="Seconds the drift service may take to become healthy.")


class AuthSettings(_Strict):
    """`settings.auth`: who may use the endpoint (orchestrator/auth.py, docs/SECURITY.md)."""

    enabled: bool = Field(
        False, description="Every request but /health, /ready, signed file URLs and the API docs needs an API "
        "key (Authorization: Bearer, or x-api-key) or a JWT. Off: whoever reaches the port may do anything."
    )
    insecure_public: bool = Field(
        False, description="Listen on an address other than loopback with auth off. Without this the "
        "orchestrator refuses to start that way."
    )
    jwt: JwtSettings | None = Field(None, description="Also accept JWT bearer tokens (null: API keys only).")


class Settings(_Strict):
    """The `settings:` section: how the orchestrator itself runs."""

    host: str = Field("127.0.0.1", description="Address the orchestrator listens on.")
    port: int = Field(9000, ge=1, le=65535, description="Port of the one OpenAI-compatible endpoint.")
    memory_budget_gb: float | None = Field(
        None,
        gt=0,
        description="Host memory (RAM) that services running on the CPU may hold together; "
        "null: 90% of the host's RAM.",
    )
    gpu_reserve_gb: float = Field(
        0.5,
        ge=0,
        description="Memory kept free on each GPU (driver, CUDA contexts, other programs); "
        "services may reserve the rest.",
    )
    gpus: list[SimulatedGPU] | None = Field(
        None,
        description="A simulated GPU inventory, used instead of NVML (for CPU hosts and tests); "
        "null: discover the host's NVIDIA GPUs.",
    )
    ttl: float = Field(
        0.0, ge=0, description="Seconds idle before a service is stopped, for models with no `ttl` of their own; "
        "0 keeps them running."
    )
    keep_alive_min: float = Field(
        0.0, ge=0, description="Least a request's keep_alive may ask for, in seconds (shorter ones are raised to it)."
    )
    keep_alive_max: float | None = Field(
        None, ge=0, description="Most a request's keep_alive may ask for, in seconds (longer ones, and 'forever', "
        "are cut to it); null: no limit."
    )
    max_request_mb: float = Field(16.0, gt=0, description="Largest request body accepted (413 above it).")
    upstream_timeout: float = Field(
        600.0, gt=0, description="Seconds a service may take to answer (between stream chunks too)."
    )
    eviction_wait: float = Field(
        30.0, ge=0, description="Seconds a load waits for busy services to go idle before answering 503."
    )
    fair_wait: float = Field(
        10.0,
        ge=0,
        description="Seconds a load waits for busy services before they stop taking new requests "
        "(held until the load got their memory), so that a popular model cannot starve the others. "
        "At most half of eviction_wait is used.",
    )
    load_progress: bool = Field(
        False,
        description="A streamed request that waits for its model to load gets its stream at once, with an SSE "
        "comment every second until the model answers (errors then arrive as a final error event).",
    )
    shutdown_grace: float = Field(
        10.0, ge=0, description="Seconds a service gets between SIGTERM and SIGKILL."
    )
    file_ttl: float = Field(
        3600.0, gt=0, description="Seconds the signed URLs of generated files (images) stay valid; "
        "the files are deleted after it."
    )
    public_url: str | None = Field(
        None, description="The base URL clients reach the orchestrator at, for generated files' URLs "
        "(behind a reverse proxy, say https://models.example.com); null: the request's Host header."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins a browser may call the endpoint from (CORS), e.g. "
        "https://app.example.com, or '*' for any; empty: no CORS headers."
    )
    idempotency_ttl: float = Field(
        86400.0, gt=0, description="Seconds the answer to a request with an Idempotency-Key is kept for its retries."
    )
    auth: AuthSettings = Field(default_factory=AuthSettings)  # type: ignore[arg-type]
    audit_requests: bool = Field(True, description="Write every request to a model in the audit log (who, which "
                                 "model, status), not only admin actions.")
    capture: CaptureSettings = Field(default_factory=CaptureSettings)  # type: ignore[arg-type]
    tracing: TracingSettings = Field(default_factory=TracingSettings)  # type: ignore[arg-type]
    drift: DriftSettings = Field(default_factory=DriftSettings)  # type: ignore[arg-type]
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)  # type: ignore[arg-type]
    currency: str = Field("USD", min_length=1, max_length=12, description="What models' prices are in "
                          "(a label for usage reports).")


class GroupConfig(_Strict):
    """A group of models with llama-swap's rules, for users who want explicit
    control on top of memory-based placement."""

    members: list[str] = Field(min_length=1, description="Model ids in the group (each in one group at most).")
    swap: bool = Field(True, description="At most one member runs at a time: loading one evicts the others.")
    exclusive: bool = Field(
        False, description="Loading a member evicts every model outside the group (except persistent groups' "
        "and pinned models)."
    )
    persistent: bool = Field(False, description="Other groups' exclusive loads never evict this group's members.")


class Config(_Strict):
    settings: Settings = Field(default_factory=Settings)  # type: ignore[arg-type]
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    groups: dict[str, GroupConfig] = Field(default_factory=dict)

    def group_of(self, model_id: str) -> tuple[str, GroupConfig] | None:
        for name, group in self.groups.items():
            if model_id in group.members:
                return name, group
        return None

    @model_validator(mode="after")
    def _unique_names(self) -> "Config":
        owner: dict[str, str] = {}
        for model_id in self.models:
            if not MODEL_NAME.match(model_id):
                raise ValueError(f"model id {model_id!r} must match {MODEL_NAME.pattern}")
            owner[model_id] = model_id
        for model_id, model in self.models.items():
            for alias in model.aliases:
                if alias in owner:
                    raise ValueError(
                        f"model {model_id!r}: alias {alias!r} is already the name of model {owner[alias]!r}"
                    )
                owner[alias] = model_id
        for model_id, model in self.models.items():
            for adapter in model.lora.adapters if model.lora else {}:
                if adapter in owner:
                    raise ValueError(
                        f"model {model_id!r}: adapter {adapter!r} is already the name of model {owner[adapter]!r}"
                    )
                owner[adapter] = model_id
        member_of: dict[str, str] = {}
        for name, group in self.groups.items():
            for member in group.members:
                if member not in self.models:
                    raise ValueError(f"group {name!r}: member {member!r} is not a model in `models`")
                if member in member_of:
                    raise ValueError(f"group {name!r}: model {member!r} is already in group {member_of[member]!r}")
                member_of[member] = name
        return self

    @model_validator(mode="after")
    def _drift_embedding_model(self) -> "Config":
        wanted = self.settings.drift.prompt_embeddings
        if wanted is not None:
            if wanted not in self.models:
                raise ValueError(f"settings.drift.prompt_embeddings: {wanted!r} is not a model id in `models`")
            if self.models[wanted].type != "embedding":
                raise ValueError(f"settings.drift.prompt_embeddings: model {wanted!r} is of type "
                                 f"{self.models[wanted].type!r}, not embedding")
        return self

    # Where state lives is a property of the installation, not of models.yaml:
    # the scripts and the orchestrator read the same two variables.
    def state_path(self) -> Path:
        """MODELYARD_STATE_DIR (the orchestrator's --state-dir sets it), else <checkout>/state."""
        raw = os.environ.get("MODELYARD_STATE_DIR")
        return Path(raw).expanduser().resolve() if raw else ROOT_DIR / "state"

    def envs_path(self) -> Path:
        """MODELYARD_ENVS_DIR, else <state dir>/envs."""
        raw = os.environ.get("MODELYARD_ENVS_DIR")
        return Path(raw).expanduser().resolve() if raw else self.state_path() / "envs"


def _describe(error: dict[str, Any]) -> str:
    """One line for one pydantic error: 'model X, field Y: reason (got Z)'."""
    loc = [str(part) for part in error["loc"]]
    msg = error["msg"].removeprefix("Value error, ")
    got = ""
    if error["type"] not in ("missing", "value_error") and "input" in error:
        got = f" (got {error['input']!r})"
    if len(loc) >= 2 and loc[0] == "models":
        field = ".".join(loc[2:])
        if not field:  # a rule about the entry as a whole
            return f"model '{loc[1]}': {msg}"
        return f"model '{loc[1]}', field '{field}': {msg}{got}"
    if loc:
        return f"field '{'.'.join(loc)}': {msg}{got}"
    return msg + got


def _unknown_placeholders(config: Config) -> list[str]:
    problems = []
    for model_id, model in config.models.items():
        texts = [model.model or "", model.cmd or "", *map(str, model.args.values()), *model.env.values(),
                 *(peer.api_key or "" for peer in (model.replicas.peers if model.replicas else []))]
        for text in texts:
            for name in _PLACEHOLDER.findall(text):
                if name not in BUILTIN_PLACEHOLDERS and name not in os.environ:
                    problems.append(
                        f"model '{model_id}': ${{{name}}} is neither a built-in placeholder "
                        f"({', '.join(BUILTIN_PLACEHOLDERS)}) nor a set environment variable"
                    )
    return problems


def parse_config(data: Any, path: str = "<config>") -> Config:
    """Validate already-parsed YAML; raise ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, [f"the top level must be a mapping with `models:`, not {type(data).__name__}"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, [_describe(e) for e in exc.errors()]) from None
    problems = _unknown_placeholders(config)
    if problems:
        raise ConfigError(path, problems)
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a models.yaml file."""
    name = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(name, [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(name, [f"{where}invalid YAML: {problem}"]) from None
    return parse_config(data, name)


def expand(text: str, values: dict[str, str]) -> str:
    """Replace ${NAME} by values[NAME], else by the environment variable NAME."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in values:
            return values[name]
        return os.environ.get(name, match.group(0))

    return _PLACEHOLDER.sub(replace, text)


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    schema["title"] = "modelyard models.yaml"
    return schema


if __name__ == "__main__":
    import json

    if sys.argv[1:] == ["--schema"]:
        print(json.dumps(json_schema(), indent=2))
    elif len(sys.argv) == 3 and sys.argv[1] == "--check":
        try:
            load_config(sys.argv[2])
        except ConfigError as err:
            print(err, file=sys.stderr)
            sys.exit(1)
        print(f"{sys.argv[2]}: ok")
    else:
        print("usage: python -m core.config --schema | --check FILE", file=sys.stderr)
        sys.exit(2)
