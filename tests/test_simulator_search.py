"""The simulator's configuration search (models/simulator/search.py): the
exhaustive search is exact, the genetic search finds the same optimum on small
spaces for nearly every seed while evaluating each configuration at most once,
runs reproduce for a seed without touching the global random state, the stops
(patience, exhausted space) fire, and bad arguments get a precise ValueError.

The landscapes stand in for the real evaluation: deployments that do not fit
in memory are invalid, cost grows with the devices used, per-user throughput
saturates, and error_rate steps as targets are met or missed."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from models.simulator.search import (
    Evaluation,
    Gene,
    SearchResult,
    exhaustive_search,
    genetic_search,
    search,
    space_size,
)

Landscape = tuple[list[Gene], Callable[[dict[str, Any]], Evaluation | None]]

# name: (memory GB, USD per hour, relative memory bandwidth)
DEVICES = {"l4": (24, 0.8, 1.0), "a100": (80, 1.9, 2.6), "h100": (80, 3.2, 4.4)}
BYTES_PER_PARAM = {"fp16": 2.0, "fp8": 1.0, "int4": 0.5}
QUANT_SPEEDUP = {"fp16": 1.0, "fp8": 1.6, "int4": 2.1}


def deployment_landscape(params_b: float = 70.0, min_throughput: float = 25.0, max_ttft: float = 0.8) -> Landscape:
    """A 70B model on 1..16 devices: 3*4*2*6*3*2 = 864 configurations."""
    space = [
        Gene("device", ("l4", "a100", "h100")),
        Gene("tp", (1, 2, 4, 8)),
        Gene("pp", (1, 2)),
        Gene("batch", (8, 16, 32, 64, 128, 256)),
        Gene("quant", ("fp16", "fp8", "int4")),
        Gene("prefix_cache", (False, True)),
    ]

    def evaluate(config: dict[str, Any]) -> Evaluation | None:
        memory, price, bandwidth = DEVICES[config["device"]]
        devices = config["tp"] * config["pp"]
        weights = params_b * BYTES_PER_PARAM[config["quant"]]
        kv = 0.05 * config["batch"] * (1.3 if config["prefix_cache"] else 1.0)
        if (weights + kv) / devices > 0.9 * memory:
            return None
        saturation = 1 - math.exp(-config["tp"] / 2.5)
        per_user = 40 * bandwidth * QUANT_SPEEDUP[config["quant"]] * saturation / (1 + config["batch"] / 96)
        per_user *= 0.85 if config["pp"] == 2 else 1.0
        ttft = (0.15 * config["pp"] + config["batch"] / (120 * bandwidth)) * (0.7 if config["prefix_cache"] else 1.0)
        cost = devices * price * 1e6 / (3600 * per_user * config["batch"])
        missed = (per_user < min_throughput) + (ttft > max_ttft) + (config["quant"] == "int4")
        return Evaluation(config, missed / 3, cost, per_user, {"ttft": ttft})

    return space, evaluate


def serving_landscape() -> Landscape:
    """Replicas of a 13B model on one device type: 4*6*7*4*2 = 1344 configurations."""
    space = [
        Gene("tp", (1, 2, 4, 8)),
        Gene("replicas", (1, 2, 3, 4, 5, 6)),
        Gene("max_num_seqs", (4, 8, 16, 32, 64, 128, 256)),
        Gene("chunk", (256, 512, 1024, 2048)),
        Gene("spec_decode", (False, True)),
    ]

    def evaluate(config: dict[str, Any]) -> Evaluation | None:
        tp, replicas, seqs = config["tp"], config["replicas"], config["max_num_seqs"]
        if tp * replicas > 16:
            return None  # more devices than the host has
        if 26 / tp + 0.04 * seqs * (1.2 if config["spec_decode"] else 1.0) > 40:
            return None  # does not fit in 40 GB
        per_user = 90 * (1 - math.exp(-tp / 1.8)) / (1 + seqs / 48) * (1.35 if config["spec_decode"] else 1.0)
        per_user *= 1 - 0.02 * math.log2(config["chunk"] / 256)
        total = per_user * seqs * replicas
        ttft = 0.08 + config["chunk"] / 4096 + 2.0 / (replicas * math.sqrt(seqs))
        cost = tp * replicas * 2.1 * 1e6 / (3600 * total)
        missed = (per_user < 30) + (ttft > 0.5) + (total < 2500)
        return Evaluation(config, missed / 3, cost, per_user)

    return space, evaluate


def random_landscape(seed: int) -> Landscape:
    """A random space of 4-6 integer genes and 300-1500 configurations, with a
    landscape of the same shape: a memory-like constraint makes some
    configurations invalid, cost grows with a resource mix, throughput
    saturates, and three targets make error_rate step."""
    rng = np.random.default_rng(seed)
    while True:
        radices = [int(r) for r in rng.integers(2, 9, size=int(rng.integers(4, 7)))]
        if 300 <= math.prod(radices) <= 1500:
            break
    n = len(radices)
    space = [Gene(f"g{i}", tuple(range(radix))) for i, radix in enumerate(radices)]
    resource, memory, speed, latency = (rng.uniform(0, 1, n) for _ in range(4))
    memory_sign = rng.choice([-1.0, 1.0], n)
    interaction = rng.uniform(-0.3, 0.3, (n, n))
    ruggedness = rng.uniform(0.97, 1.03, size=radices)  # per-configuration noise on the cost

    def features(config: dict[str, Any]) -> np.ndarray:
        return np.array([config[f"g{i}"] / (radix - 1) for i, radix in enumerate(radices)])

    def raw(config: dict[str, Any]) -> tuple[float, float, float, float]:
        x = features(config)
        fit = float(memory_sign @ (memory * x))
        throughput = 100 * (1 - math.exp(-2.0 * float(speed @ x) / speed.sum() - 0.1))
        cost = math.exp(1.5 * float(resource @ x) + float(x @ interaction @ x)) / throughput * 1000
        cost *= float(ruggedness[tuple(config[f"g{i}"] for i in range(n))])
        return fit, throughput, cost, float(latency @ x)

    names = [gene.name for gene in space]
    every = [raw(dict(zip(names, values, strict=True))) for values in itertools.product(*(g.values for g in space))]
    fit_cut = float(np.quantile([r[0] for r in every], 0.75))  # about a quarter invalid
    throughput_cut, latency_cut = (float(np.quantile([r[i] for r in every], q)) for i, q in ((1, 0.4), (3, 0.6)))
    cost_cut = float(np.quantile([r[2] for r in every], 0.7))

    def evaluate(config: dict[str, Any]) -> Evaluation | None:
        fit, throughput, cost, latency_value = raw(config)
        if fit > fit_cut:
            return None
        missed = (throughput < throughput_cut) + (latency_value > latency_cut) + (cost > cost_cut)
        return Evaluation(config, missed / 3, cost, throughput)

    return space, evaluate


def all_evaluations(space: list[Gene], evaluate: Callable[[dict[str, Any]], Evaluation | None]) -> list:
    """Every valid configuration as (key, position, evaluation), sorted best first."""
    names = [gene.name for gene in space]
    rows = []
    for position, values in enumerate(itertools.product(*(gene.values for gene in space))):
        evaluation = evaluate(dict(zip(names, values, strict=True)))
        if evaluation is not None:
            rows.append((evaluation.key(), position, evaluation))
    return sorted(rows, key=lambda row: (row[0], row[1]))


class Counting:
    """An evaluate wrapper that records each configuration it is called with."""

    def __init__(self, evaluate: Callable[[dict[str, Any]], Evaluation | None]) -> None:
        self.evaluate = evaluate
        self.calls: list[tuple] = []

    def __call__(self, config: dict[str, Any]) -> Evaluation | None:
        self.calls.append(tuple(sorted(config.items())))
        return self.evaluate(config)


LANDSCAPES = [deployment_landscape(), serving_landscape()] + [random_landscape(seed) for seed in (1, 2, 3)]


def test_landscapes_are_shaped_like_the_real_problem() -> None:
    for space, evaluate in LANDSCAPES:
        assert 300 <= space_size(space) <= 1500
        assert 4 <= len(space) <= 6
        rows = all_evaluations(space, evaluate)
        assert 0 < len(rows) < space_size(space), "some, not all, configurations are invalid"
        assert len({row[2].error_rate for row in rows}) >= 2, "error_rate steps"
        assert rows[0][0][0] == 0.0, "some configuration meets every target"


def test_genetic_finds_the_exhaustive_optimum_for_nearly_every_seed() -> None:
    optimum = [exhaustive_search(space, evaluate, top_k=1).best[0].key() for space, evaluate in LANDSCAPES]
    hits = []
    for seed in range(100):
        index = seed % len(LANDSCAPES)
        space, evaluate = LANDSCAPES[index]
        result = genetic_search(space, evaluate, top_k=1, seed=seed)
        hits.append(bool(result.best) and result.best[0].key() == optimum[index])
    rate = sum(hits) / len(hits)
    print(f"genetic search hit rate: {rate:.2f} ({sum(hits)}/{len(hits)})")
    assert rate >= 0.95


@pytest.mark.parametrize("index", range(len(LANDSCAPES)))
def test_exhaustive_returns_the_true_top_k_in_order(index: int) -> None:
    space, evaluate = LANDSCAPES[index]
    rows = all_evaluations(space, evaluate)
    counted = Counting(evaluate)
    result = exhaustive_search(space, counted, top_k=7)
    assert result.method == "exhaustive"
    assert result.generations == 0
    assert result.space_size == space_size(space) == math.prod(len(gene.values) for gene in space)
    assert result.evaluations == result.space_size == len(counted.calls) == len(set(counted.calls))
    assert result.invalid == result.space_size - len(rows)
    assert [e.config for e in result.best] == [row[2].config for row in rows[:7]]
    assert [e.key() for e in result.best] == sorted(e.key() for e in result.best)
    again = exhaustive_search(space, evaluate, top_k=7)
    assert [e.config for e in again.best] == [e.config for e in result.best]


def test_ties_are_broken_by_position_in_the_space() -> None:
    space = [Gene("a", (0, 1, 2)), Gene("b", (False, True))]

    def flat(config: dict[str, Any]) -> Evaluation:
        return Evaluation(config, 0.0, 1.0, 10.0)

    expected = [{"a": 0, "b": False}, {"a": 0, "b": True}, {"a": 1, "b": False}]
    assert [e.config for e in exhaustive_search(space, flat, top_k=3).best] == expected
    assert [e.config for e in genetic_search(space, flat, top_k=3, seed=4).best] == expected


def test_key_orders_error_then_cost_then_throughput() -> None:
    config: dict[str, Any] = {}
    ranked = [
        Evaluation(config, 0.0, 5.0, 10.0),
        Evaluation(config, 0.0, 5.0, 9.0),
        Evaluation(config, 0.0, 6.0, 99.0),
        Evaluation(config, 1 / 3, 0.1, 99.0),
    ]
    assert sorted(reversed(ranked), key=Evaluation.key) == ranked
    assert Evaluation(config, 0.1, 1.0, 2.0).key() == Evaluation(config, 0.1 + 1e-12, 1.0, 2.0 - 1e-12).key()


def test_detail_passes_through_untouched() -> None:
    space, evaluate = deployment_landscape()
    best = search(space, evaluate, top_k=1).best[0]
    assert set(best.detail) == {"ttft"}


def test_genetic_is_reproducible_for_a_seed_and_varies_across_seeds() -> None:
    space, evaluate = LANDSCAPES[2]

    def trace(seed: int) -> tuple:
        counted = Counting(evaluate)
        result = genetic_search(space, counted, top_k=5, seed=seed, patience=100, generations=5)
        return tuple(counted.calls), [e.config for e in result.best], result.generations

    assert trace(11) == trace(11)
    assert trace(11)[0] != trace(12)[0]


def test_genetic_does_not_change_the_global_random_state() -> None:
    space, evaluate = LANDSCAPES[0]
    random.seed(1234)
    state = random.getstate()
    genetic_search(space, evaluate, seed=3)
    assert random.getstate() == state
    genetic_search(space, evaluate, seed=None)
    assert random.getstate() == state

    def failing(config: dict[str, Any]) -> Evaluation | None:
        raise RuntimeError("predictor crashed")

    with pytest.raises(RuntimeError, match="predictor crashed"):
        genetic_search(space, failing, seed=3)
    assert random.getstate() == state


def test_global_random_state_does_not_change_the_result() -> None:
    space, evaluate = LANDSCAPES[3]
    random.seed(1)
    first = genetic_search(space, evaluate, seed=5, generations=4, patience=100)
    random.seed(2)
    second = genetic_search(space, evaluate, seed=5, generations=4, patience=100)
    assert [e.config for e in first.best] == [e.config for e in second.best]
    assert first.evaluations == second.evaluations


@pytest.mark.parametrize("index", range(len(LANDSCAPES)))
def test_genetic_evaluates_each_configuration_at_most_once(index: int) -> None:
    space, evaluate = LANDSCAPES[index]
    counted = Counting(evaluate)
    result = genetic_search(space, counted, top_k=20, elite_ratio=0.1, seed=index, patience=30, generations=30)
    assert len(counted.calls) == len(set(counted.calls)) == result.evaluations
    assert result.generations > 1
    evaluated = [evaluate(dict(call)) for call in counted.calls]
    assert result.invalid == sum(e is None for e in evaluated)
    # The best are the best of everything evaluated, not of the last population
    # (which, with 5 elites, cannot hold the 20 best).
    keys = sorted(e.key() for e in evaluated if e is not None)
    assert [e.key() for e in result.best] == keys[:20]
    assert len({tuple(e.config.items()) for e in result.best}) == 20


def test_genetic_stops_when_patience_runs_out() -> None:
    space = [Gene(f"g{i}", tuple(range(10))) for i in range(5)]  # 100000 configurations

    def plateau(config: dict[str, Any]) -> Evaluation:
        return Evaluation(config, 0.0, 1.0, 1.0)  # nothing ever improves

    result = genetic_search(space, plateau, seed=0, generations=30, patience=4)
    assert result.generations == 4
    assert result.evaluations < result.space_size

    def improving(config: dict[str, Any]) -> Evaluation:
        return Evaluation(config, 0.0, float(sum(config.values())), 1.0)

    longer = genetic_search(space, improving, seed=0, generations=30, patience=4)
    assert longer.generations > 4


def test_genetic_stops_when_the_space_is_exhausted() -> None:
    space = [Gene("a", (1, 2, 3)), Gene("b", (False, True)), Gene("c", ("x", "y"))]  # 12 configurations
    counted = Counting(lambda config: Evaluation(config, 0.0, float(config["a"]), 1.0))
    result = genetic_search(space, counted, population=8, generations=50, patience=50, seed=1)
    assert result.evaluations == result.space_size == 12 == len(counted.calls)
    assert result.generations < 50
    assert result.best[0].config["a"] == 1

    tiny = genetic_search(space, counted, population=20, seed=1)
    assert tiny.generations == 0 and tiny.evaluations == 12


def test_invalid_configurations_die_out_without_crashing() -> None:
    space, evaluate = deployment_landscape()
    result = genetic_search(space, evaluate, seed=2)
    assert result.invalid > 0
    assert all(e is not None and e.error_rate <= 1 for e in result.best)


def test_nothing_valid_gives_an_empty_best() -> None:
    space = [Gene("a", (1, 2, 3)), Gene("b", (1, 2))]
    for method in ("exhaustive", "genetic"):
        result = search(space, lambda config: None, method=method, seed=0)
        assert result.best == []
        assert result.invalid == result.evaluations == 6


def test_auto_picks_exhaustive_for_small_spaces_and_genetic_for_large() -> None:
    small = [Gene("a", tuple(range(10))), Gene("b", tuple(range(10)))]
    large = [Gene(f"g{i}", tuple(range(10))) for i in range(4)]

    def cost(config: dict[str, Any]) -> Evaluation:
        return Evaluation(config, 0.0, float(sum(config.values())), 1.0)

    assert search(small, cost).method == "exhaustive"
    assert search(small, cost, exhaustive_limit=99).method == "genetic"
    assert search(small, cost, exhaustive_limit=100).method == "exhaustive"
    found = search(large, cost, seed=0, population=20)
    assert found.method == "genetic"
    assert isinstance(found, SearchResult) and found.evaluations < 10_000
    assert search(large, cost, method="exhaustive").evaluations == 10_000
    assert search(small, cost, method="genetic", seed=1).method == "genetic"


def test_search_passes_options_to_the_genetic_search() -> None:
    space, evaluate = LANDSCAPES[1]
    direct = genetic_search(space, evaluate, seed=7, population=12, generations=3, patience=50)
    through = search(space, evaluate, method="genetic", seed=7, population=12, generations=3, patience=50)
    assert through == direct
    assert through.generations == 3


GOOD = [Gene("a", (1, 2)), Gene("b", (1, 2, 3))]


def ok(config: dict[str, Any]) -> Evaluation:
    return Evaluation(config, 0.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: exhaustive_search([], ok), "no genes"),
        (lambda: genetic_search([], ok), "no genes"),
        (lambda: Gene("a", ()), "gene 'a' has no values"),
        (lambda: Gene("", (1,)), "non-empty string"),
        (lambda: Gene("a", (1, 2, 1)), "gene 'a' lists the value 1 twice"),
        (lambda: space_size([Gene("a", (1,)), Gene("a", (2,))]), "gene name 'a' appears twice"),
        (lambda: space_size(["a"]), "must hold Gene objects"),
        (lambda: exhaustive_search(GOOD, ok, top_k=0), "top_k must be at least 1"),
        (lambda: genetic_search(GOOD, ok, top_k=0), "top_k must be at least 1"),
        (lambda: genetic_search(GOOD, ok, population=1), "population must be at least 2"),
        (lambda: genetic_search(GOOD, ok, patience=0), "patience must be at least 1"),
        (lambda: genetic_search(GOOD, ok, generations=-1), "generations must be at least 0"),
        (lambda: genetic_search(GOOD, ok, crossover=1.5), r"crossover must be a probability in \[0, 1\]"),
        (lambda: genetic_search(GOOD, ok, mutation=-0.1), r"mutation must be a probability in \[0, 1\]"),
        (lambda: genetic_search(GOOD, ok, elite_ratio=2), r"elite_ratio must be a probability in \[0, 1\]"),
        (lambda: genetic_search(GOOD, ok, seed="x"), "seed must be an int or None"),
        (lambda: search(GOOD, ok, method="random"), "unknown search method 'random'"),
        (lambda: search(GOOD, ok, populaton=10), "unknown genetic search option"),
        (lambda: search(GOOD, ok, method="exhaustive", population=10), "given to an exhaustive search"),
        (lambda: search(GOOD, ok, exhaustive_limit=-1), "exhaustive_limit must be at least 0"),
    ],
)
def test_bad_arguments_raise_value_error(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_bad_evaluations_are_reported() -> None:
    with pytest.raises(ValueError, match="cost_per_million_tokens=nan"):
        exhaustive_search(GOOD, lambda config: Evaluation(config, 0.0, math.nan, 1.0))
    with pytest.raises(TypeError, match="evaluate returned dict"):
        genetic_search(GOOD, lambda config: {"error_rate": 0.0}, seed=0)
