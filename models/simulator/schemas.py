"""The simulator API's request bodies (pydantic): strict, extra fields
refused, every number bounded, so a mistake is a 400 naming the field."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Quantization = Literal["none", "fp8", "int8", "int4"]
MAX_DEVICES = 4096  # per device entry: the search space and its memory stay bounded
# Bounded per item, so that a bad value is reported with its index (param "max_num_seqs.1").
MaxNumSeqs = Annotated[int, Field(ge=1, le=4096)]
Concurrency = Annotated[int, Field(ge=1, le=1024)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceChoice(_Body):
    name: str = Field(min_length=1, max_length=200, description="A hardware catalog entry (GET /simulator/hardware) "
                      "or one of this host's devices (host-cpu, or a GPU's catalog name).")
    count: int = Field(1, ge=1, le=1024, description="Devices per node.")
    nodes: int = Field(1, ge=1, le=1024)

    @model_validator(mode="after")
    def _size(self) -> DeviceChoice:
        if self.count * self.nodes > MAX_DEVICES:
            raise ValueError(f"count x nodes is at most {MAX_DEVICES} devices")
        return self


class ModelRef(_Body):
    model: str | None = Field(None, max_length=300, description="A model id of models.yaml whose path holds a "
                              "config.json.")
    model_path: str | None = Field(None, max_length=4096, validate_default=True,
                                   description="A local directory holding a Hugging Face config.json (or the file "
                                   "itself).")

    # On the field, not the model, so that the error names a field (param "model_path"); validate_default
    # runs it when model_path is absent too.
    @field_validator("model_path")
    @classmethod
    def _one_model(cls, model_path: str | None, info: ValidationInfo) -> str | None:
        if "model" in info.data and (info.data["model"] is None) == (model_path is None):
            raise ValueError("give exactly one of model (a models.yaml id) and model_path (a local config.json)")
        return model_path


class WorkloadFields(ModelRef):
    input_tokens: int = Field(ge=1, le=1_000_000)
    output_tokens: int = Field(ge=1, le=1_000_000)
    concurrency: int = Field(1, ge=1, le=100_000)
    target_ttft_ms: float | None = Field(None, gt=0)
    target_throughput_per_user: float | None = Field(None, gt=0, description="tokens/s per user")
    target_e2e_latency_s: float | None = Field(None, gt=0)
    devices: list[DeviceChoice] | None = Field(None, min_length=1, max_length=32,
                                               description="Devices to consider; default: this host's.")


class RunRequest(WorkloadFields):
    method: Literal["heuristic", "regressor"] = "regressor"
    search: Literal["auto", "genetic", "exhaustive"] = "auto"
    top_k: int = Field(5, ge=1, le=50)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    population: int = Field(50, ge=2, le=500)
    generations: int = Field(30, ge=1, le=200)
    quantizations: list[Quantization] = Field(default_factory=lambda: ["none"], min_length=1, max_length=4)
    max_num_seqs: list[MaxNumSeqs] | None = Field(None, min_length=1, max_length=16)
    max_replicas: int | None = Field(None, ge=1, le=1024)


class NodeConfigurationsRequest(WorkloadFields):
    quantization: Quantization = "none"


class BenchmarkConfigRequest(WorkloadFields):
    method: Literal["heuristic", "regressor"] = "regressor"
    tensor_parallel: int = Field(1, ge=1, le=1024)
    pipeline_parallel: int = Field(1, ge=1, le=1024)
    replicas: int = Field(1, ge=1, le=1024)
    max_num_seqs: int = Field(256, ge=1, le=4096)
    block_size: int | None = Field(None, description="KV-cache block size; default: vLLM's for the device "
                                   "(16 on a GPU, 128 on a CPU, whose backend needs a multiple of 32).")
    chunked_prefill: bool = True
    prefix_caching: bool = False
    quantization: Quantization = "none"


class Feedback(_Body):
    config_id: int = Field(ge=1)
    failed: bool
    reason: str | None = Field(None, max_length=500)


class ConfigurationsRequest(_Body):
    workflow_id: str = Field(min_length=1, max_length=100)
    device: str | None = Field(None, max_length=200)
    concurrency: int | None = Field(None, ge=1)
    error_rate_threshold: float = Field(0.5, ge=0, le=1)
    feedback: list[Feedback] = Field(default_factory=list, max_length=1000)


class Lengths(_Body):
    input_tokens: int = Field(ge=1, le=100_000)
    output_tokens: int = Field(ge=1, le=100_000)


class BenchmarkRequest(_Body):
    model: str = Field(min_length=1, max_length=300, description="A text model of models.yaml served by vLLM.")
    concurrency: list[Concurrency] = Field(default_factory=lambda: [1, 4, 16], min_length=1, max_length=16)
    lengths: list[Lengths] = Field(default_factory=lambda: [Lengths(input_tokens=128, output_tokens=64)],
                                   min_length=1, max_length=16)
    requests_per_point: int | None = Field(None, ge=1, le=10_000)
    retrain: bool = True

    @model_validator(mode="after")
    def _sizes(self) -> BenchmarkRequest:
        if len(self.concurrency) * len(self.lengths) > 64:
            raise ValueError("at most 64 points (concurrency values x lengths) per job")
        return self
