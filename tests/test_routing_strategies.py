"""Replica balancing (orchestrator/routing/strategies.py): pure and
synchronous, so every strategy is driven here directly, with seeded rngs."""

from __future__ import annotations

import collections
import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.routing import strategies
from orchestrator.routing.strategies import STRATEGIES, Endpoint, NoEndpoint, make_strategy


def endpoints(*ids: str, **weights: float) -> list[Endpoint]:
    return [Endpoint(id_, weights.get(id_, 1.0)) for id_ in ids]


def shares(picks: list[str]) -> dict[str, float]:
    return {id_: count / len(picks) for id_, count in collections.Counter(picks).items()}


def longest_run(picks: list[str], id_: str) -> int:
    return max((len(list(run)) for key, run in itertools.groupby(picks) if key == id_), default=0)


# weighted


def test_weighted_shares_follow_the_weights():
    pool = endpoints("a", "b", "c", a=5, b=3, c=2)
    strategy = make_strategy("weighted")
    picks = [strategy.pick(pool).id for _ in range(10_000)]
    got = shares(picks)
    for id_, want in {"a": 0.5, "b": 0.3, "c": 0.2}.items():
        assert abs(got[id_] - want) <= 0.01
    # Smooth WRR is exact: every full cycle of sum(weights) picks holds each endpoint weight times.
    for start in range(0, 10_000, 10):
        assert collections.Counter(picks[start : start + 10]) == {"a": 5, "b": 3, "c": 2}


def test_weighted_interleaves_the_heavy_endpoint():
    pool = endpoints("a", "b", "c", a=5, b=3, c=2)
    strategy = make_strategy("weighted")
    picks = [strategy.pick(pool).id for _ in range(1_000)]
    assert longest_run(picks, "a") <= math.ceil(5 / (3 + 2)) + 1
    assert picks[:10].count("a") == 5 and picks[:5].count("a") <= 3  # spread over the cycle, not front-loaded


def test_weighted_skips_a_removed_endpoint_and_resumes_it():
    a, b, c = endpoints("a", "b", "c", a=5, b=3, c=2)
    strategy = make_strategy("weighted")
    for _ in range(7):  # mid-cycle
        strategy.pick([a, b, c])
    without_b = [strategy.pick([a, c]).id for _ in range(700)]
    assert "b" not in without_b
    assert abs(shares(without_b)["a"] - 5 / 7) <= 0.01
    back = [strategy.pick([a, b, c]).id for _ in range(1_000)]
    assert "b" in back[:10]
    assert abs(shares(back)["b"] - 0.3) <= 0.01


@pytest.mark.parametrize("weight", [0, -1, float("nan"), float("inf")])
def test_a_weight_that_is_not_positive_and_finite_is_refused_at_creation(weight):
    with pytest.raises(ValueError, match="weight"):
        Endpoint("a", weight)


# round_robin


def test_round_robin_gives_exactly_equal_shares():
    strategy = make_strategy("round_robin")
    pool = endpoints("a", "b", "c")
    picks = collections.Counter(strategy.pick(pool).id for _ in range(9_999))
    assert picks == {"a": 3_333, "b": 3_333, "c": 3_333}


def test_round_robin_cycles_in_id_order_whatever_the_given_order():
    strategy = make_strategy("round_robin")
    pool = endpoints("c", "a", "b")
    rng = random.Random(1)
    picks = []
    for _ in range(9):
        rng.shuffle(pool)  # the router may list the healthy set in any order
        picks.append(strategy.pick(pool).id)
    assert picks == ["a", "b", "c"] * 3


def test_round_robin_skips_a_removed_endpoint_and_gives_one_added_back_its_turn():
    a, b, c = endpoints("a", "b", "c")
    strategy = make_strategy("round_robin")
    assert strategy.pick([a, b, c]) is a
    assert [strategy.pick([a, c]).id for _ in range(3)] == ["c", "a", "c"]
    fresh_b = Endpoint("b")  # a new object for the same replica: the answer is the one given now
    assert strategy.pick([a, fresh_b, c]) is a
    assert strategy.pick([a, fresh_b, c]) is fresh_b


# least_outstanding


def test_least_outstanding_always_picks_a_minimum_as_loads_change():
    rng = random.Random(7)
    pool = endpoints("a", "b", "c", "d")
    strategy = make_strategy("least_outstanding", rng=random.Random(1))
    for _ in range(2_000):
        chosen = strategy.pick(pool)
        assert chosen.outstanding == min(e.outstanding for e in pool)
        chosen.begin()
        for endpoint in pool:  # requests finish at random
            if rng.random() < 0.3:
                endpoint.end()


def test_least_outstanding_shares_evenly_among_equals():
    pool = endpoints("a", "b", "c", "d")
    strategy = make_strategy("least_outstanding", rng=random.Random(2))
    got = shares([strategy.pick(pool).id for _ in range(10_000)])
    assert set(got) == {"a", "b", "c", "d"}
    assert all(abs(share - 0.25) <= 0.03 for share in got.values())


# least_latency


def test_least_latency_probes_an_unmeasured_endpoint_first():
    fast, fresh = Endpoint("fast", latency_ewma=0.01), Endpoint("fresh")
    strategy = make_strategy("least_latency", rng=random.Random(0))
    assert strategy.pick([fast, fresh]) is fresh
    fresh.begin()  # its probe is in flight: the next request is not piled onto it
    assert strategy.pick([fast, fresh]) is fast


def test_least_latency_prefers_the_lower_ewma_and_moves_when_it_slows():
    a, b = Endpoint("a"), Endpoint("b")
    a.observe_latency(0.1)
    b.observe_latency(0.5)
    strategy = make_strategy("least_latency", rng=random.Random(0))
    assert {strategy.pick([a, b]).id for _ in range(100)} == {"a"}
    for _ in range(10):
        a.observe_latency(2.0)
    assert a.latency_ewma is not None and a.latency_ewma > 0.5
    assert {strategy.pick([a, b]).id for _ in range(100)} == {"b"}


def test_least_latency_weighs_the_queue_so_the_fast_endpoint_is_not_swamped():
    fast, slow = Endpoint("fast", latency_ewma=0.1), Endpoint("slow", latency_ewma=0.3)
    strategy = make_strategy("least_latency", rng=random.Random(0))
    for _ in range(40):  # 40 concurrent requests, none finished yet
        strategy.pick([fast, slow]).begin()
    # Split in proportion to speed (3:1), not all on the fast one.
    assert fast.outstanding == 30 and slow.outstanding == 10


def test_latency_ewma_folds_observations():
    endpoint = Endpoint("a")
    endpoint.observe_latency(1.0)
    assert endpoint.latency_ewma == 1.0  # the first observation sets it
    endpoint.observe_latency(2.0, alpha=0.5)
    assert endpoint.latency_ewma == pytest.approx(1.5)
    with pytest.raises(ValueError):
        endpoint.observe_latency(-1.0)


def test_end_never_takes_outstanding_below_zero():
    endpoint = Endpoint("a")
    endpoint.begin()
    endpoint.end()
    endpoint.end()
    assert endpoint.outstanding == 0


# consistent_hash

REPLICAS = ("smollm2#local0", "smollm2#local1", "smollm2#peer-b", "smollm2#peer-c")


def test_consistent_hash_sticks_a_key_to_one_endpoint():
    pool = endpoints(*REPLICAS)
    strategy = make_strategy("consistent_hash", rng=random.Random(0))
    for key in ("alice", "bob", "session-42"):
        assert len({strategy.pick(pool, key=key).id for _ in range(1_000)}) == 1


def test_consistent_hash_spreads_distinct_keys_evenly():
    pool = endpoints(*REPLICAS)
    strategy = make_strategy("consistent_hash")
    got = shares([strategy.pick(pool, key=f"user-{i}").id for i in range(10_000)])
    assert set(got) == set(REPLICAS)
    assert all(abs(share - 0.25) <= 0.05 for share in got.values())


def test_consistent_hash_moves_only_the_keys_of_a_removed_endpoint():
    pool = endpoints(*REPLICAS)
    strategy = make_strategy("consistent_hash")
    keys = [f"user-{i}" for i in range(10_000)]
    before = {key: strategy.pick(pool, key=key).id for key in keys}
    gone = "smollm2#peer-b"
    after = {key: strategy.pick([e for e in pool if e.id != gone], key=key).id for key in keys}
    assert all(after[key] == before[key] for key in keys if before[key] != gone)
    assert gone not in after.values()
    # Back again: every key returns to where it was.
    assert {key: strategy.pick(pool, key=key).id for key in keys} == before


def test_consistent_hash_bounds_the_load_of_a_hot_key():
    pool = endpoints(*REPLICAS)
    strategy = make_strategy("consistent_hash", rng=random.Random(0))
    home = strategy.pick(pool, key="hot-user")
    for _ in range(200):  # 200 concurrent requests of one user, none finished
        chosen = strategy.pick(pool, key="hot-user")
        total = sum(e.outstanding for e in pool)
        assert chosen.outstanding + 1 <= math.ceil(1.25 * (total + 1) / len(pool))
        chosen.begin()
        total += 1
        assert all(e.outstanding <= math.ceil(1.25 * total / len(pool)) for e in pool)
    assert home.outstanding == math.ceil(1.25 * 200 / 4)  # the home endpoint is filled to the bound
    assert sum(1 for e in pool if e.outstanding > 0) >= 2  # and the overflow went elsewhere


def test_consistent_hash_bound_holds_as_requests_come_and_go():
    rng = random.Random(3)
    pool = endpoints(*REPLICAS)
    strategy = make_strategy("consistent_hash", rng=random.Random(0), load_factor=1.5)
    in_flight: list[Endpoint] = []
    for _ in range(3_000):
        key = "hot" if rng.random() < 0.6 else f"user-{rng.randrange(50)}"  # skewed: one key takes 60%
        chosen = strategy.pick(pool, key=key)
        total = sum(e.outstanding for e in pool)
        assert chosen.outstanding + 1 <= math.ceil(1.5 * (total + 1) / len(pool))
        chosen.begin()
        in_flight.append(chosen)
        while in_flight and rng.random() < 0.45:
            in_flight.pop(rng.randrange(len(in_flight))).end()


def test_consistent_hash_without_a_key_picks_the_least_outstanding():
    pool = endpoints(*REPLICAS)
    pool[0].outstanding, pool[1].outstanding, pool[2].outstanding = 3, 1, 2
    strategy = make_strategy("consistent_hash", rng=random.Random(0))
    assert strategy.pick(pool, key=None) is pool[3]
    pool[3].outstanding = 1
    assert {strategy.pick(pool).id for _ in range(200)} == {pool[1].id, pool[3].id}


def test_consistent_hash_builds_a_ring_only_when_the_set_changes(monkeypatch):
    built: list[frozenset[str]] = []
    real = strategies._build_ring

    def counting(ids, vnodes):
        built.append(ids)
        return real(ids, vnodes)

    monkeypatch.setattr(strategies, "_build_ring", counting)
    pool = endpoints(*REPLICAS)
    strategy = make_strategy("consistent_hash")
    for i in range(100):
        pool[0].outstanding = i % 3  # loads change, the set does not
        strategy.pick(list(reversed(pool)) if i % 2 else pool, key=f"k{i}")
    assert len(built) == 1
    strategy.pick(pool[1:], key="k")
    strategy.pick(pool, key="k")  # a flapping replica: both rings stay cached
    strategy.pick(pool[1:], key="k")
    assert len(built) == 2


@pytest.mark.parametrize("load_factor", [0.5, 0.99])
def test_consistent_hash_refuses_a_load_factor_below_one(load_factor):
    with pytest.raises(ValueError, match="load_factor"):
        make_strategy("consistent_hash", load_factor=load_factor)


# all strategies


def test_an_unknown_strategy_is_refused_naming_the_choices():
    with pytest.raises(ValueError) as caught:
        make_strategy("fastest")
    assert "fastest" in str(caught.value)
    assert all(name in str(caught.value) for name in STRATEGIES)


def test_an_option_a_strategy_does_not_take_is_refused():
    with pytest.raises(TypeError):
        make_strategy("round_robin", load_factor=2)


@pytest.mark.parametrize("name", STRATEGIES)
def test_no_healthy_endpoint_raises_no_endpoint(name):
    strategy = make_strategy(name, rng=random.Random(0))
    with pytest.raises(NoEndpoint):
        strategy.pick([])
    with pytest.raises(NoEndpoint):
        strategy.pick([], key="alice")


@pytest.mark.parametrize("name", STRATEGIES)
def test_duplicate_endpoint_ids_are_refused(name):
    with pytest.raises(ValueError, match="duplicate"):
        make_strategy(name).pick([Endpoint("a"), Endpoint("a")], key="alice")


@pytest.mark.parametrize("name", STRATEGIES)
def test_each_strategy_names_itself(name):
    assert make_strategy(name).name == name


IDS = ("a", "b", "c", "d", "e", "f")
operation = st.one_of(
    st.tuples(st.just("pick"), st.one_of(st.none(), st.sampled_from(["alice", "bob", "carol", "dave"]))),
    st.tuples(st.just("begin"), st.sampled_from(IDS)),
    st.tuples(st.just("end"), st.sampled_from(IDS)),
    st.tuples(st.just("observe"), st.sampled_from(IDS), st.floats(0, 10)),
    st.tuples(st.just("toggle"), st.sampled_from(IDS)),  # the replica turns unhealthy, or healthy again
)


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(STRATEGIES),
    weights=st.lists(st.floats(0.01, 100), min_size=len(IDS), max_size=len(IDS)),
    healthy=st.sets(st.sampled_from(IDS)),
    operations=st.lists(operation, max_size=60),
    seed=st.integers(0, 2**16),
)
def test_every_pick_is_a_member_of_the_given_set(name, weights, healthy, operations, seed):
    strategy = make_strategy(name, rng=random.Random(seed))
    order = random.Random(seed)
    healthy = set(healthy)
    known = {id_: Endpoint(id_, weight) for id_, weight in zip(IDS, weights, strict=True)}
    for op, *args in operations:
        current = [known[id_] for id_ in sorted(healthy)]
        order.shuffle(current)
        if op == "pick":
            if not current:
                with pytest.raises(NoEndpoint):
                    strategy.pick(current, key=args[0])
                continue
            chosen = strategy.pick(current, key=args[0])
            assert any(chosen is endpoint for endpoint in current)
            chosen.begin()
        elif op == "begin":
            known[args[0]].begin()
        elif op == "end":
            known[args[0]].end()
        elif op == "observe":
            known[args[0]].observe_latency(args[1])
        elif args[0] in healthy:
            healthy.discard(args[0])
        else:
            # Added back as a new object: a strategy must not answer with the old one.
            old = known[args[0]]
            known[args[0]] = Endpoint(old.id, old.weight, old.outstanding, old.latency_ewma)
            healthy.add(args[0])
        assert all(endpoint.outstanding >= 0 for endpoint in known.values())
