"""Placement decisions (orchestrator/placement.py): pure functions, so every
rule is checked here directly, over host memory and simulated GPUs."""

from __future__ import annotations

import pytest

from orchestrator.placement import HOST, Holder, Need, Pool, Unplaceable, place


def gpus(*budgets: float) -> list[Pool]:
    pools = [Pool(HOST, 64.0, 64.0)]
    pools += [Pool(f"gpu{i}", b, b, i, "sim") for i, b in enumerate(budgets)]
    return pools


def held(id_: str, cost: float = 1.0, evictable: bool = True, pinned: bool = False, **pools: float) -> Holder:
    return Holder(id_, pools, evictable=evictable and not pinned, pinned=pinned, cost=cost)


def test_a_cpu_service_goes_in_host_memory():
    plan = place(Need("m", 8, 0), gpus(80, 80), [])
    assert plan is not None and plan.pools == (HOST,) and plan.reservation == {HOST: 8} and plan.victims == ()


def test_best_fit_picks_the_gpu_left_fullest():
    # gpu0 has 60 free, gpu1 20 free: a 16 GB model goes to gpu1, keeping gpu0's hole for a big model.
    plan = place(Need("m", 16, 1), gpus(80, 80), [held("a", gpu0=20), held("b", gpu1=60)])
    assert plan is not None and plan.pools == ("gpu1",) and plan.victims == ()


def test_a_model_of_unknown_size_goes_where_most_is_free():
    plan = place(Need("m", 0, 1), gpus(80, 80), [held("a", gpu0=20), held("b", gpu1=60)])
    assert plan is not None and plan.pools == ("gpu0",)


def test_tensor_parallel_gets_distinct_gpus_and_an_even_split():
    plan = place(Need("big", 100, 2), gpus(80, 80, 80, 80), [held("a", gpu1=70)])
    assert plan is not None and len(set(plan.pools)) == 2 and "gpu1" not in plan.pools
    assert plan.reservation == {name: 50 for name in plan.pools}


def test_more_gpus_than_the_host_has_can_never_fit():
    with pytest.raises(Unplaceable, match=r"model 'big' needs 4 GPUs; this host has 2"):
        place(Need("big", 10, 4), gpus(80, 80), [])
    with pytest.raises(Unplaceable, match=r"needs 1 GPU; this host has none"):
        place(Need("m", 10, 1), [Pool(HOST, 64, 64)], [])


def test_too_big_for_any_gpu_names_the_budgets():
    with pytest.raises(Unplaceable) as caught:
        place(Need("huge", 90, 1), gpus(79.5, 23.5), [])
    message = str(caught.value)
    assert "needs 90 GB on one GPU" in message and "cannot fit even after evicting every other model" in message
    assert "GPU 0 (sim) budget 79.5 GB" in message and "GPU 1 (sim) budget 23.5 GB" in message


def test_pinned_models_count_as_never_free():
    with pytest.raises(Unplaceable, match=r"pinned models hold 50 GB"):
        place(Need("m", 40, 1), gpus(80), [held("pin", pinned=True, gpu0=50)])


def test_evicts_the_cheapest_idle_set_that_makes_room():
    holders = [held("dear", cost=50, gpu0=30), held("cheap1", cost=1, gpu0=20), held("cheap2", cost=2, gpu0=20)]
    plan = place(Need("m", 40, 1), gpus(80), holders)
    assert plan is not None and set(plan.victims) == {"cheap1", "cheap2"} and plan.cost == 3


def test_does_not_evict_more_than_needed():
    # Greedy by cost would take 'tiny' then 'large'; 'large' alone is enough, so 'tiny' stays.
    holders = [held("tiny", cost=1, gpu0=5), held("large", cost=2, gpu0=40), held("busy", evictable=False, gpu0=30)]
    plan = place(Need("m", 40, 1), gpus(80), holders)
    assert plan is not None and plan.victims == ("large",)


def test_prefers_a_gpu_with_room_to_evicting():
    plan = place(Need("m", 30, 1), gpus(80, 80), [held("a", gpu0=70), held("b", gpu1=20)])
    assert plan is not None and plan.pools == ("gpu1",) and plan.victims == ()


def test_evicts_on_the_gpu_where_that_is_cheapest():
    holders = [held("hot", cost=10, gpu0=70), held("cold", cost=1, gpu1=70)]
    plan = place(Need("m", 30, 1), gpus(80, 80), holders)
    assert plan is not None and plan.pools == ("gpu1",) and plan.victims == ("cold",)


def test_a_tensor_parallel_victim_frees_room_on_both_gpus():
    holders = [held("tp", cost=1, gpu0=60, gpu1=60)]
    plan = place(Need("m", 80, 2), gpus(80, 80), holders)
    assert plan is not None and plan.victims == ("tp",) and plan.reservation == {"gpu0": 40, "gpu1": 40}


def test_waits_when_only_busy_services_could_make_room():
    assert place(Need("m", 40, 1), gpus(80), [held("busy", evictable=False, gpu0=60)]) is None


def test_exact_fit_is_a_fit_despite_float_sums():
    holders = [held(f"s{i}", gpu0=0.1) for i in range(3)]  # 0.30000000000000004 GB
    plan = place(Need("m", 0.7, 1), gpus(1.0), holders)
    assert plan is not None and plan.victims == ()


def test_no_limit_on_the_host_always_fits():
    plan = place(Need("m", 10_000, 0), [Pool(HOST, None)], [held("a", **{HOST: 500})])
    assert plan is not None and plan.victims == ()


def test_one_large_cheap_victim_beats_two_small_ones_costing_more():
    # Greedy by cost alone would take a (1) then b (1.5): 2.5; c alone costs 2.
    holders = [held("a", cost=1, gpu0=16), held("b", cost=1.5, gpu0=16), held("c", cost=2, gpu0=30),
               held("busy", evictable=False, gpu0=10)]
    plan = place(Need("m", 38, 1), gpus(80), holders)
    assert plan is not None and plan.victims == ("c",) and plan.cost == 2


def test_a_need_bound_to_its_pools_goes_there_or_evicts_there():
    holders = [held("a", cost=1, gpu1=70)]
    plan = place(Need("m", 30, 1, only=("gpu1",)), gpus(80, 80), holders)  # gpu0 is free, but not allowed
    assert plan is not None and plan.pools == ("gpu1",) and plan.victims == ("a",)


def test_a_replica_avoids_its_siblings_gpus_even_where_it_would_fit_best():
    holders = [held("chat", evictable=False, gpu0=10)]
    # Best fit alone would put it beside its sibling on gpu0 (70 GB left there): avoided.
    plan = place(Need("chat~2", 10, 1, avoid=frozenset({"gpu0"})), gpus(80, 80), holders)
    assert plan is not None and plan.pools == ("gpu1",)


def test_a_replica_evicts_on_another_gpu_than_its_siblings():
    holders = [held("chat", evictable=False, gpu0=10), held("other", cost=1, gpu1=75)]
    plan = place(Need("chat~2", 10, 1, avoid=frozenset({"gpu0"})), gpus(80, 80), holders)
    assert plan is not None and plan.pools == ("gpu1",) and plan.victims == ("other",)


def test_a_tensor_parallel_replica_takes_the_gpus_its_siblings_left():
    holders = [held("tp", evictable=False, gpu0=20, gpu1=20)]
    plan = place(Need("tp~2", 40, 2, avoid=frozenset({"gpu0", "gpu1"})), gpus(80, 80, 80, 80), holders)
    assert plan is not None and sorted(plan.pools) == ["gpu2", "gpu3"] and plan.reservation == {"gpu2": 20, "gpu3": 20}
