"""The three things a simulation is about, and the rules that make a
deployment possible at all.

- Workload: what users send (lengths, how many at once) and what they want
  (TTFT, per-user throughput, end-to-end latency targets).
- Topology: the devices one deployment may use (a device kind, how many per
  node, how many nodes; this appliance is one node, the rules still speak of
  more for the node-configuration API).
- Deployment: the engine configuration searched over (vLLM's arguments).

validate_parallelism gives every reason a deployment is impossible, in words a
user can act on; memory is checked apart (memory.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from models.simulator.hardware import Device
from models.simulator.model_spec import ModelSpec

QUANTIZATIONS = (None, "fp8", "int8", "int4")  # weight quantizations a deployment may choose
BLOCK_SIZES = (8, 16, 32, 64, 128)  # vLLM's KV-cache block sizes (tokens per block)


@dataclass(frozen=True)
class Workload:
    input_tokens: int
    output_tokens: int
    concurrency: int = 1
    target_ttft_ms: float | None = None
    target_throughput_per_user: float | None = None  # tokens/s
    target_e2e_latency_s: float | None = None

    def targets_missed(self, ttft_ms: float, throughput_per_user: float, e2e_latency_s: float) -> float:
        """The share of the given targets a prediction misses (0 when none is given): the seed's error rate."""
        checks = [
            (self.target_ttft_ms, ttft_ms > (self.target_ttft_ms or 0)),
            (self.target_throughput_per_user, throughput_per_user < (self.target_throughput_per_user or 0)),
            (self.target_e2e_latency_s, e2e_latency_s > (self.target_e2e_latency_s or 0)),
        ]
        given = [missed for target, missed in checks if target is not None]
        return sum(given) / len(given) if given else 0.0


@dataclass(frozen=True)
class Topology:
    device: Device
    devices_per_node: int = 1
    nodes: int = 1

    @property
    def devices(self) -> int:
        return self.devices_per_node * self.nodes


@dataclass(frozen=True)
class Deployment:
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    replicas: int = 1
    max_num_seqs: int = 256
    block_size: int = 16
    chunked_prefill: bool = True
    prefix_caching: bool = False
    quantization: str | None = None  # None: the checkpoint as it is

    @property
    def devices_per_replica(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def devices(self) -> int:
        return self.devices_per_replica * self.replicas

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def engine_args(self) -> dict[str, Any]:
        """The vLLM command-line arguments this deployment means (one replica's)."""
        args: dict[str, Any] = {
            "tensor-parallel-size": self.tensor_parallel,
            "pipeline-parallel-size": self.pipeline_parallel,
            "max-num-seqs": self.max_num_seqs,
            "block-size": self.block_size,
            "enable-chunked-prefill": self.chunked_prefill,
            "enable-prefix-caching": self.prefix_caching,
        }
        if self.quantization:
            args["quantization"] = self.quantization
        return args


def engine_defaults(kind: str) -> Deployment:
    """vLLM's own defaults (0.32, OpenAI server) where models.yaml says nothing: on a CPU
    128 sequences in 128-token blocks, on a GPU 256 in 16-token blocks; chunked prefill
    and prefix caching on."""
    if kind == "cpu":
        return Deployment(max_num_seqs=128, block_size=128, chunked_prefill=True, prefix_caching=True)
    return Deployment(max_num_seqs=256, block_size=16, chunked_prefill=True, prefix_caching=True)


def deployment_from_args(args: dict[str, Any], kind: str) -> Deployment:
    """The deployment a models.yaml entry's vLLM args describe on a device of this kind."""
    default = engine_defaults(kind)

    def arg(name: str, fallback: Any) -> Any:
        return args.get(name, args.get(name.replace("_", "-"), fallback))

    def flag(name: str, fallback: bool) -> bool:
        value = arg(name, fallback)  # models.yaml may say "false" as well as false
        return value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)

    quantization = arg("quantization", None)
    return Deployment(
        tensor_parallel=int(arg("tensor_parallel_size", 1)), pipeline_parallel=int(arg("pipeline_parallel_size", 1)),
        max_num_seqs=int(arg("max_num_seqs", default.max_num_seqs)),
        block_size=int(arg("block_size", default.block_size)),
        chunked_prefill=flag("enable_chunked_prefill", default.chunked_prefill),
        prefix_caching=flag("enable_prefix_caching", default.prefix_caching),
        quantization=quantization if quantization in QUANTIZATIONS else None)


def validate_parallelism(model: ModelSpec, topology: Topology, deployment: Deployment) -> list[str]:
    """Every reason the deployment cannot run on the topology (empty: it can, memory aside)."""
    tp, pp, replicas = deployment.tensor_parallel, deployment.pipeline_parallel, deployment.replicas
    reasons = []
    for name, value in (("tensor_parallel", tp), ("pipeline_parallel", pp), ("replicas", replicas),
                        ("max_num_seqs", deployment.max_num_seqs)):
        if value < 1:
            reasons.append(f"{name} must be at least 1, got {value}")
    if reasons:
        return reasons
    if deployment.block_size not in BLOCK_SIZES:
        reasons.append(f"block_size {deployment.block_size} is not one of {', '.join(map(str, BLOCK_SIZES))}")
    elif topology.device.kind == "cpu" and deployment.block_size % 32:
        reasons.append(f"block_size {deployment.block_size}: vLLM's CPU backend needs a multiple of 32")
    if deployment.quantization not in QUANTIZATIONS:
        reasons.append(f"quantization {deployment.quantization!r} is not one of fp8, int8, int4 or none")
    # Tensor parallelism splits heads across devices joined by the node's fast links.
    if tp > topology.devices_per_node:
        reasons.append(f"tensor parallel {tp} exceeds the {topology.devices_per_node} {topology.device.name} "
                       "devices of one node")
    if model.heads % tp:
        reasons.append(f"the model's {model.heads} attention heads do not split evenly over tensor parallel {tp}")
    if model.kv_heads % tp and tp % model.kv_heads:
        # vLLM shards KV heads, or replicates them when there are fewer than devices
        reasons.append(f"the model's {model.kv_heads} KV heads neither divide nor are divided by tensor "
                       f"parallel {tp}")
    if pp > model.layers:
        reasons.append(f"pipeline parallel {pp} exceeds the model's {model.layers} layers")
    if deployment.devices > topology.devices:
        reasons.append(f"{replicas} replica(s) x tensor parallel {tp} x pipeline parallel {pp} need "
                       f"{deployment.devices} devices; {topology.devices} are available")
    elif tp <= topology.devices_per_node:
        # Each pipeline stage is one tensor-parallel group inside one node.
        groups = (topology.devices_per_node // tp) * topology.nodes
        if groups < pp * replicas:
            reasons.append(f"{pp * replicas} groups of {tp} devices do not fit in {topology.nodes} node(s) of "
                           f"{topology.devices_per_node} devices (a tensor-parallel group cannot span nodes)")
    return reasons
