"""One simulation: a model, a workload and candidate devices in, the best
deployments per device out. It ties the parts together: the search space
(what may vary), the evaluation of one configuration (parallelism rules,
memory, then the heuristic or regressor prediction, then the seed's fitness)
and the search (search.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from models.simulator.deployment import BLOCK_SIZES, Deployment, Topology, Workload, validate_parallelism
from models.simulator.heuristic import Prediction, predict
from models.simulator.memory import memory_breakdown
from models.simulator.model_spec import ModelSpec
from models.simulator.search import Evaluation, Gene, SearchResult, search, space_size

MAX_NUM_SEQS = (8, 16, 32, 64, 128, 256)
MAX_EXHAUSTIVE = 200_000  # configurations an exhaustive search may evaluate (about 10 s of heuristic)
Predictor = Callable[[ModelSpec, Topology, Deployment, Workload, Prediction], Prediction]


@dataclass(frozen=True)
class SpaceLimits:
    """What the user lets the search vary (None: everything sensible)."""

    max_num_seqs: tuple[int, ...] = MAX_NUM_SEQS
    quantizations: tuple[str | None, ...] = (None,)
    max_replicas: int | None = None
    block_sizes: tuple[int, ...] | None = None  # None: (8, 16, 32) on a GPU, (32, 64, 128) on a CPU


def powers_of_two(limit: int) -> tuple[int, ...]:
    values, value = [], 1
    while value <= limit:
        values.append(value)
        value *= 2
    return tuple(values)


def build_space(model: ModelSpec, topology: Topology, limits: SpaceLimits) -> list[Gene]:
    """The genes for this model on this topology; invalid mixes are left to the evaluation."""
    devices = topology.devices
    default_blocks = tuple(b for b in BLOCK_SIZES if (b >= 32 if topology.device.kind == "cpu" else b <= 32))
    tp = tuple(v for v in powers_of_two(topology.devices_per_node) if model.heads % v == 0) or (1,)
    pp = tuple(v for v in powers_of_two(min(devices, model.layers)))
    # Powers of two up to the limit, and the limit itself: a replica per device would make the
    # gene as long as a large cluster.
    most = max(min(devices, limits.max_replicas or devices), 1)
    replicas = tuple(sorted({*powers_of_two(most), most}))
    return [
        Gene("tensor_parallel", tp),
        Gene("pipeline_parallel", pp),
        Gene("replicas", replicas),
        Gene("max_num_seqs", tuple(sorted(set(limits.max_num_seqs)))),
        Gene("block_size", tuple(sorted(set(limits.block_sizes or default_blocks)))),
        Gene("chunked_prefill", (False, True)),
        Gene("prefix_caching", (False, True)),
        Gene("quantization", tuple(dict.fromkeys(limits.quantizations))),
    ]


def cost_per_million(topology: Topology, deployment: Deployment, total_throughput: float) -> float:
    """Device hours per million output tokens at the predicted total throughput (0 for a box you own)."""
    per_hour = topology.device.cost_per_hour * deployment.devices
    return per_hour / (total_throughput * 3600) * 1e6 if total_throughput > 0 else float("inf")


def evaluator(model: ModelSpec, topology: Topology, workload: Workload, predictor: Predictor | None,
              rejected: dict[str, str] | None = None) -> Callable[[dict[str, Any]], Evaluation | None]:
    """The search's evaluate(): None for a configuration that cannot run (the reason goes to `rejected`)."""

    def evaluate(config: dict[str, Any]) -> Evaluation | None:
        deployment = Deployment(**config)
        reasons = validate_parallelism(model, topology, deployment)
        memory = memory_breakdown(model, topology, deployment, workload) if not reasons else None
        if memory is not None and not memory.fits:
            reasons = [memory.reason or "does not fit in memory"]
        if reasons:
            if rejected is not None and len(rejected) < 50:
                rejected[_describe(config)] = "; ".join(reasons)
            return None
        assert memory is not None
        prediction = predict(model, topology, deployment, workload, memory=memory)
        if predictor is not None:
            prediction = predictor(model, topology, deployment, workload, prediction)
        return Evaluation(
            config=config,
            error_rate=workload.targets_missed(prediction.ttft_ms, prediction.throughput_per_user,
                                               prediction.e2e_latency_s),
            cost_per_million_tokens=cost_per_million(topology, deployment, prediction.total_throughput),
            throughput_per_user=prediction.throughput_per_user,
            detail={"prediction": prediction},
        )

    return evaluate


def _describe(config: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in config.items())


def metrics_of(evaluation: Evaluation) -> dict[str, Any]:
    prediction: Prediction = evaluation.detail["prediction"]
    return {
        "ttft_ms": prediction.ttft_ms,
        "tpot_ms": prediction.tpot_ms,
        "e2e_latency_s": prediction.e2e_latency_s,
        "throughput_per_user": prediction.throughput_per_user,
        "total_throughput": prediction.total_throughput,
        "max_concurrency": prediction.max_concurrency,
        "error_rate": evaluation.error_rate,
        "cost_per_million_tokens": evaluation.cost_per_million_tokens,
        "memory_gb_per_device": prediction.memory.total_gb,
        "memory": prediction.memory.as_dict(),
        "method": prediction.method,
    }


@dataclass(frozen=True)
class DeviceOutcome:
    topology: Topology
    result: SearchResult
    rejected: dict[str, str]  # a sample of impossible configurations and why
    seconds: float


def simulate(model: ModelSpec, topologies: Sequence[Topology], workload: Workload, *, limits: SpaceLimits,
             predictor: Predictor | None, method: str = "auto", top_k: int = 5, seed: int | None = None,
             exclude: Callable[[Topology, dict[str, Any]], bool] | None = None,
             **ga: Any) -> list[DeviceOutcome]:
    """The search on each topology. exclude(topology, config) drops configurations
    feedback said failed before (the blacklist)."""
    outcomes = []
    for topology in topologies:
        began = time.perf_counter()
        rejected: dict[str, str] = {}
        evaluate = evaluator(model, topology, workload, predictor, rejected)
        if exclude is not None:
            inner = evaluate

            def evaluate(config: dict[str, Any], inner=inner, topology=topology,
                         rejected=rejected) -> Evaluation | None:
                if exclude(topology, config):
                    rejected[_describe(config)] = "failed before (feedback)"
                    return None
                return inner(config)

        space = build_space(model, topology, limits)
        if method == "exhaustive" and (size := space_size(space)) > MAX_EXHAUSTIVE:
            raise ValueError(f"an exhaustive search of {size} configurations on {topology.device.name} is too "
                             f"long (at most {MAX_EXHAUSTIVE}); use search: genetic or auto")
        result = search(space, evaluate, method=method, top_k=top_k, seed=seed, **ga)
        outcomes.append(DeviceOutcome(topology, result, rejected, time.perf_counter() - began))
    return outcomes
