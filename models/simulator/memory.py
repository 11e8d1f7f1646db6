"""How much memory a deployment needs on each device, and whether it fits.

Per device: weights (split by tensor and pipeline parallelism), the KV cache
of the sequences it runs at once, activations of one prefill step, and the
runtime's own overhead. The fit check is the seed's: a safety buffer of
1 GB (2 GB above 10 GB of need) off the device, then 95% of the rest.

"GB" is GiB here, as in core.gpu. The catalog's memory figures are the marketed
sizes taken as GiB (an H100's "80 GB" is 79.6 GiB as NVML reports it): a catalog
device is assumed a little larger than it is; this host's GPUs use NVML's figure.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from core.memory_estimate import DTYPE_BYTES
from models.simulator.deployment import Deployment, Topology, Workload
from models.simulator.model_spec import ModelSpec

GIB = 1024**3
HEADROOM = 0.95  # the seed's share of usable memory a deployment may plan on
SEQUENCE_SLACK = 1.1  # the seed sizes the cache for 10% more tokens than input + output
CHUNK_TOKENS = 2048  # vLLM's token budget per step with chunked prefill
# The runtime's own memory: a CUDA context, graphs and the allocator's slack on a
# GPU (more with NCCL buffers for tensor parallelism); the Python runtime on a CPU.
OVERHEAD_GB = {"gpu": 0.75, "cpu": 0.25}
TP_BUFFERS_GB = 0.25


@dataclass(frozen=True)
class MemoryBreakdown:
    weights_gb: float
    kv_cache_gb: float
    activations_gb: float
    overhead_gb: float
    available_gb: float  # one device's memory
    buffer_gb: float
    sequences: int  # sequences one replica runs at once
    tokens_per_sequence: int  # their KV-cache size in tokens (block-rounded)
    kv_per_token_bytes: int  # on one device
    max_sequences: int  # per replica, that would fit beside the weights
    fits: bool
    reason: str | None

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.kv_cache_gb + self.activations_gb + self.overhead_gb

    @property
    def usable_gb(self) -> float:
        return max(self.available_gb - self.buffer_gb, 0.0) * HEADROOM

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_gb": self.total_gb, "usable_gb": self.usable_gb}


def sequences_per_replica(workload: Workload, deployment: Deployment) -> int:
    """Sequences one replica runs at once: its share of the users, at most max_num_seqs."""
    return min(math.ceil(workload.concurrency / deployment.replicas), deployment.max_num_seqs)


def memory_breakdown(model: ModelSpec, topology: Topology, deployment: Deployment,
                     workload: Workload) -> MemoryBreakdown:
    tp, pp = deployment.tensor_parallel, deployment.pipeline_parallel
    dtype_bytes = DTYPE_BYTES[model.dtype]
    weights = model.params * model.bytes_per_param(deployment.quantization) / (tp * pp)

    # Fewer KV heads than devices: vLLM keeps one head per device (replicated).
    kv_heads_per_device = max(model.kv_heads / tp, 1)
    layers_per_device = math.ceil(model.layers / pp)
    kv_per_token = int(2 * layers_per_device * kv_heads_per_device * model.head_dim * dtype_bytes)
    block = deployment.block_size
    tokens = math.ceil(int((workload.input_tokens + workload.output_tokens) * SEQUENCE_SLACK) / block) * block
    sequences = sequences_per_replica(workload, deployment)
    kv_cache = sequences * tokens * kv_per_token

    # One prefill step's activations: the hidden states and the MLP's widest tensors for the
    # tokens of the step, plus the float32 logits of the sequences sampled.
    width = 4 * model.hidden + 2 * model.intermediate * model.experts_per_token / tp

    def activations_for(n: int) -> float:
        step_tokens = min(n * workload.input_tokens, CHUNK_TOKENS) if deployment.chunked_prefill \
            else n * workload.input_tokens
        return step_tokens * width * dtype_bytes + n * model.vocab * 4

    kind = topology.device.kind
    overhead = (OVERHEAD_GB.get(kind, OVERHEAD_GB["gpu"]) + (TP_BUFFERS_GB if tp > 1 else 0.0)) * GIB
    available = topology.device.memory_gb

    def need_for(n: int) -> float:
        return weights + n * tokens * kv_per_token + activations_for(n) + overhead

    def usable_for(need: float) -> tuple[float, float]:
        """The seed's rule: the buffer (1 GB up to 10 GB of need, else 2 GB), then 95% of the rest."""
        buffer_gb = 1.0 if need <= 10 * GIB else 2.0
        return buffer_gb, max(available - buffer_gb, 0.0) * HEADROOM * GIB

    def fits_with(n: int) -> bool:
        need = need_for(n)
        return need < usable_for(need)[1]

    activations = activations_for(sequences)
    need = need_for(sequences)
    buffer_gb, usable = usable_for(need)
    # The most sequences that fit by the same rule: the need grows with them (KV cache, logits,
    # prefill tokens) and may cross 10 GB into the larger buffer, so search rather than divide.
    # `high` never fits: its KV cache and logits alone are more than the device.
    per_sequence = tokens * kv_per_token + model.vocab * 4
    max_sequences = 0
    if per_sequence > 0 and fits_with(0):
        low, high = 0, int(available * GIB // per_sequence) + 1
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits_with(middle) else (low, middle)
        max_sequences = low
    fits = need < usable
    reason = None
    if not fits:
        reason = (f"needs {need / GIB:.2f} GB per {topology.device.name} of {usable / GIB:.2f} GB usable "
                  f"({available:g} GB less a {buffer_gb:g} GB buffer, {HEADROOM:.0%} of the rest): weights "
                  f"{weights / GIB:.2f} GB, KV cache {kv_cache / GIB:.2f} GB for {sequences} sequences of "
                  f"{tokens} tokens, activations {activations / GIB:.2f} GB, runtime {overhead / GIB:.2f} GB")
    return MemoryBreakdown(
        weights_gb=weights / GIB, kv_cache_gb=kv_cache / GIB, activations_gb=activations / GIB,
        overhead_gb=overhead / GIB, available_gb=available, buffer_gb=buffer_gb, sequences=sequences,
        tokens_per_sequence=tokens, kv_per_token_bytes=kv_per_token, max_sequences=max_sequences, fits=fits,
        reason=reason,
    )
