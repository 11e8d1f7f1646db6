"""Where a service goes and what must make room for it.

Pure functions over memory pools (the host's RAM and each GPU), so that a
decision is fast (it runs under the scheduler's placement lock), and testable
without processes. The scheduler turns a decision into actions: evict the
victims, then reserve the pools and start the service.

The rules, in order:
1. A service that needs N GPUs gets N distinct GPUs, its memory split evenly
   across them; a service that needs none goes in host memory. A model's
   local replicas never share a GPU (Need.avoid).
2. If some set of pools has room now, take the best fit: the one that leaves
   the least memory free, so large holes stay free for large models. A
   service of unknown size (0 GB) goes where the most memory is free.
3. Else evict idle, unpinned services: a set that makes room at a low total
   eviction cost (the scheduler prices each: priority, expected reload time,
   recent use), over every possible set of pools; see _cheapest_victims.
4. Else, if busy services will make room once they drain, wait (None).
5. Else it can never fit, even with every unpinned service gone: Unplaceable,
   so the caller fails fast (507) and evicts nothing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

HOST = "host"
EPSILON = 1e-9  # GB; sums of floats must not turn "exactly fits" into "does not"
EXACT_SETS = 6  # sets of pools priced exactly when nothing fits (see place())


@dataclass(frozen=True)
class Pool:
    """A memory pool: the host's RAM ("host") or one GPU ("gpu0", "gpu1" ...)."""

    name: str
    budget_gb: float | None  # what services may reserve here; None: no limit
    total_gb: float | None = None  # the physical size (a GPU's memory), for fractions
    gpu_index: int | None = None  # CUDA index, for CUDA_VISIBLE_DEVICES
    label: str = ""  # e.g. "NVIDIA H100 80GB HBM3", for messages


@dataclass(frozen=True)
class Holder:
    """A service that holds memory now."""

    id: str
    reservation: Mapping[str, float]  # pool name -> GB
    evictable: bool  # idle and unpinned: may be stopped at once
    pinned: bool = False  # never stopped to make room
    cost: float = 0.0  # what stopping it costs; lower is stopped first


@dataclass(frozen=True)
class Need:
    id: str
    memory_gb: float
    gpus: int  # 0: host memory, else that many GPUs (tensor parallel)
    only: tuple[str, ...] | None = None  # these pools and no others (a service waking where it slept)
    avoid: frozenset[str] = frozenset()  # GPUs it must not share (its model's other replicas are there)


@dataclass(frozen=True)
class Placement:
    pools: tuple[str, ...]
    reservation: dict[str, float] = field(hash=False)
    victims: tuple[str, ...] = ()
    cost: float = 0.0


class Unplaceable(Exception):
    """The service cannot fit even with every unpinned service stopped."""


def place(need: Need, pools: Sequence[Pool], holders: Iterable[Holder]) -> Placement | None:
    """The best placement for need (see the module's rules), or None to wait."""
    holders = list(holders)
    by_name = {pool.name: pool for pool in pools}
    used = _sum_reservations(holders)
    pinned = _sum_reservations(h for h in holders if h.pinned)
    share = need.memory_gb / max(need.gpus, 1)

    possible: list[tuple[str, ...]] = []  # sets it fits once everything unpinned is gone
    never: list[str] = []
    fits_now: list[tuple[float, Placement]] = []
    for names in _candidate_sets(need, pools):
        too_small = [n for n in names if not _room(by_name[n], pinned.get(n, 0.0), share)]
        if too_small:
            never.extend(too_small)
            continue
        possible.append(names)
        if all(_shortfall(by_name[n], used.get(n, 0.0), share) == 0.0 for n in names):
            leftover = sum(_free(by_name[n], used.get(n, 0.0)) - share for n in names)
            # Best fit: least left over; unknown size: most left over.
            fits_now.append((leftover if need.memory_gb > 0 else -leftover, Placement(names, {n: share for n in names})))
    if fits_now:
        return min(fits_now, key=lambda item: item[0])[1]
    if not possible:
        raise Unplaceable(_never_fits_message(need, by_name, pinned, never))

    # Nothing fits now: the cheapest eviction over the possible sets. With
    # many GPUs there are many sets (28 pairs of 8 GPUs): rank them by the sum
    # of what freeing each pool alone would cost, and price only the best few
    # exactly, so that a decision stays well under a millisecond.
    idle_on: dict[str, list[Holder]] = {}
    for holder in sorted((h for h in holders if h.evictable), key=lambda h: h.cost):
        for name, gb in holder.reservation.items():
            if gb > 0:
                idle_on.setdefault(name, []).append(holder)

    def shortfalls(names: tuple[str, ...]) -> dict[str, float]:
        return {n: _shortfall(by_name[n], used.get(n, 0.0), share) for n in names}

    if len(possible) > EXACT_SETS:
        alone: dict[str, float] = {}
        for name in {n for names in possible for n in names}:
            victims = _cheapest_victims(shortfalls((name,)), idle_on.get(name, []))
            alone[name] = math.inf if victims is None else sum(v.cost for v in victims)
        possible = sorted(possible, key=lambda names: sum(alone[n] for n in names))[:EXACT_SETS]

    best: tuple[float, int, float, Placement] | None = None
    for names in possible:
        short = shortfalls(names)
        relevant = {id(h): h for n in names if short[n] for h in idle_on.get(n, ())}
        victims = _cheapest_victims(short, sorted(relevant.values(), key=lambda h: h.cost))
        if victims is None:
            continue  # only busy services could make room here
        cost = sum(v.cost for v in victims)
        leftover = sum(_free(by_name[n], used.get(n, 0.0)) - share for n in names)
        key = (cost, len(victims), leftover)
        if best is None or key < best[:3]:
            best = (*key, Placement(names, {n: share for n in names}, tuple(v.id for v in victims), cost))
    return best[3] if best else None  # None: wait for busy ones


def _candidate_sets(need: Need, pools: Sequence[Pool]) -> Iterable[tuple[str, ...]]:
    if need.only is not None:
        return [need.only] if all(any(p.name == n for p in pools) for n in need.only) else []
    if need.gpus == 0:
        return [(HOST,)] if any(p.name == HOST for p in pools) else []
    gpus = [p.name for p in pools if p.gpu_index is not None and p.name not in need.avoid]
    return itertools.combinations(gpus, need.gpus)


def _sum_reservations(holders: Iterable[Holder]) -> dict[str, float]:
    total: dict[str, float] = {}
    for holder in holders:
        for name, gb in holder.reservation.items():
            total[name] = total.get(name, 0.0) + gb
    return total


def _free(pool: Pool, used: float) -> float:
    return float("inf") if pool.budget_gb is None else pool.budget_gb - used


def _room(pool: Pool, pinned: float, share: float) -> bool:
    """Whether share fits in pool once everything unpinned is gone."""
    return pool.budget_gb is None or share <= pool.budget_gb - pinned + EPSILON


def _shortfall(pool: Pool, used: float, share: float) -> float:
    missing = share - _free(pool, used)
    return missing if missing > EPSILON else 0.0


def _cheapest_victims(short: dict[str, float], idle: list[Holder]) -> list[Holder] | None:
    """A low-cost set of idle holders (sorted by cost) whose stopping covers
    every shortfall, or None if even all of them do not. Three cheap
    heuristics, each pruned of victims the others already cover, and the
    cheapest result wins: greedy by cost, greedy by cost per GB freed, and
    the cheapest single victim that is enough. Near-linear in the holders,
    where an exact search is exponential."""
    relevant = [h for h in idle if any(h.reservation.get(n, 0.0) > 0 for n in short)]
    if not _covered(short, _freed(relevant, short)):
        return None
    single = next(
        (h for h in relevant if all(h.reservation.get(n, 0.0) + EPSILON >= missing for n, missing in short.items())),
        None,
    )
    if single is not None and single is relevant[0]:
        return [single]  # the cheapest holder is enough alone: nothing can beat it
    candidates = [_greedy(short, relevant)]
    by_value = sorted(relevant, key=lambda h: h.cost / max(_useful_gb(h, short), EPSILON))
    if by_value != relevant:
        candidates.append(_greedy(short, by_value))
    if single is not None:
        candidates.append([single])
    return min(candidates, key=lambda victims: (sum(v.cost for v in victims), len(victims)))


def _greedy(short: dict[str, float], ordered: list[Holder]) -> list[Holder]:
    chosen: list[Holder] = []
    freed = dict.fromkeys(short, 0.0)
    for holder in ordered:
        if _covered(short, freed):
            break
        chosen.append(holder)
        for name in short:
            freed[name] += holder.reservation.get(name, 0.0)
    for holder in sorted(chosen, key=lambda h: -h.cost):  # drop the dearest ones not needed
        without = {n: freed[n] - holder.reservation.get(n, 0.0) for n in short}
        if _covered(short, without):
            chosen.remove(holder)
            freed = without
    return chosen


def _useful_gb(holder: Holder, short: dict[str, float]) -> float:
    return sum(min(holder.reservation.get(n, 0.0), missing) for n, missing in short.items())


def _freed(holders: list[Holder], short: dict[str, float]) -> dict[str, float]:
    return {n: sum(h.reservation.get(n, 0.0) for h in holders) for n in short}


def _covered(short: dict[str, float], freed: dict[str, float]) -> bool:
    return all(freed[name] + EPSILON >= missing for name, missing in short.items())


def _never_fits_message(need: Need, pools: dict[str, Pool], pinned: dict[str, float], too_small: list[str]) -> str:
    gpu_count = sum(1 for p in pools.values() if p.gpu_index is not None)
    if need.gpus > gpu_count:
        have = f"this host has {gpu_count}" if gpu_count else "this host has none"
        return f"model '{need.id}' needs {need.gpus} GPU{'s' if need.gpus > 1 else ''}; {have}"
    if need.gpus == 0:
        where = f"{need.memory_gb:g} GB of host memory"
    elif need.gpus == 1:
        where = f"{need.memory_gb:g} GB on one GPU"
    else:
        where = f"{need.memory_gb:g} GB over {need.gpus} GPUs ({need.memory_gb / need.gpus:g} GB each)"
    limits = []
    for name in dict.fromkeys(too_small):
        pool = pools[name]
        text = f"{_title(pool)} budget {pool.budget_gb:g} GB"
        if pinned.get(name):
            text += f" of which pinned models hold {pinned[name]:g} GB"
        limits.append(text)
    return (
        f"model '{need.id}' needs {where}, but it cannot fit even after evicting every other model ("
        + "; ".join(limits)
        + ")"
    )


def _title(pool: Pool) -> str:
    if pool.gpu_index is None:
        return "host memory"
    return f"GPU {pool.gpu_index}" + (f" ({pool.label})" if pool.label else "")
