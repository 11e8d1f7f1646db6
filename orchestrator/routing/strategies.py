"""Which replica of a model takes the next request.

A model may have several replicas: local services and remote OpenAI-compatible
endpoints (other modelyard appliances). The router passes a strategy the
replicas that are healthy now and sends the request to the one it picks.
Everything here is pure and synchronous: the router calls it on one event
loop, so there are no locks, and a pick costs a few microseconds.

Rules every strategy follows:
- The sequence given to pick() is the healthy set at this moment; it may
  differ from the last call's (a replica removed, or added back). State is
  kept by endpoint id, never by position or by object, and the answer is
  always an object from the given sequence.
- An empty sequence raises NoEndpoint; duplicate ids raise ValueError.
- Ties are broken with the strategy's rng (seed it for reproducible tests), or
  by id order where the algorithm itself is deterministic.

Strategies (STRATEGIES, built by make_strategy):
- round_robin: one each, in id order.
- weighted: smooth weighted round robin (nginx): shares proportional to weight,
  the heavy replica's turns spread out rather than taken in a row.
- least_latency: lowest latency_ewma * (outstanding + 1); unmeasured replicas
  are probed first. See LeastLatency.
- least_outstanding: fewest requests in flight.
- consistent_hash: the same key (a user or session id) goes to the same
  replica, with bounded load so that one hot key cannot swamp a replica. See
  ConsistentHash.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

EWMA_ALPHA = 0.3  # weight of the newest latency sample: reacts within a few requests, smooths one outlier
VNODES = 256  # ring points per endpoint: with 4 endpoints each owns 25% +- ~1 pp (100 points: +- ~2.5 pp)
LOAD_FACTOR = 1.25  # consistent_hash's c: a replica takes at most 25% more than the mean load
RINGS_CACHED = 8  # a flapping replica alternates between two sets; keep both rings (and a few more)


class NoEndpoint(Exception):
    """No healthy endpoint to pick from."""


@dataclass
class Endpoint:
    """One replica of a model, as the balancer sees it."""

    id: str  # e.g. "smollm2#local0", "smollm2#peer-b"
    weight: float = 1.0  # for "weighted"; must be > 0
    outstanding: int = 0  # requests in flight now (begin() / end())
    latency_ewma: float | None = None  # seconds; None until the first observation

    def __post_init__(self) -> None:
        # Refused here, once, rather than at every pick: a zero weight would
        # silently starve the replica, a negative one would break smooth WRR.
        if not self.weight > 0 or not math.isfinite(self.weight):
            raise ValueError(f"endpoint {self.id!r}: weight must be a finite number > 0, not {self.weight!r}")

    def begin(self) -> None:
        """A request was sent here."""
        self.outstanding += 1

    def end(self) -> None:
        """A request sent here finished (answered, failed or cancelled)."""
        # Clamped: a double end() after a cancellation must not make it look less loaded than idle.
        self.outstanding = max(0, self.outstanding - 1)

    def observe_latency(self, seconds: float, alpha: float = EWMA_ALPHA) -> None:
        """Fold one observed latency into latency_ewma; the first observation sets it."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"latency must be a finite number >= 0, not {seconds!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], not {alpha!r}")
        if self.latency_ewma is None:
            self.latency_ewma = seconds
        else:
            self.latency_ewma = alpha * seconds + (1 - alpha) * self.latency_ewma


class Strategy(Protocol):
    name: str

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint: ...


def _by_id(endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    """The endpoints sorted by id: a stable order whatever order the caller used."""
    if not endpoints:
        raise NoEndpoint("no healthy endpoint")
    ordered = sorted(endpoints, key=lambda e: e.id)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if before.id == after.id:
            raise ValueError(f"duplicate endpoint id {before.id!r}")
    return ordered


def _lowest(ordered: Sequence[Endpoint], score: Callable[[Endpoint], float], rng: random.Random) -> Endpoint:
    """An endpoint of lowest score, ties broken by rng (ordered is in id order, so a seed reproduces)."""
    best = min(score(e) for e in ordered)
    ties = [e for e in ordered if score(e) == best]
    return ties[0] if len(ties) == 1 else rng.choice(ties)


class RoundRobin:
    """One each, in id order: the next id after the last one picked."""

    name = "round_robin"

    def __init__(self, rng: random.Random | None = None) -> None:
        # Remembering the last id (not a counter) keeps the cycle fair when the
        # set changes: a removed replica is skipped, one added back gets its turn.
        self._last: str | None = None

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint:
        ordered = _by_id(endpoints)
        if self._last is None:
            chosen = ordered[0]
        else:
            after = bisect.bisect_right([e.id for e in ordered], self._last)
            chosen = ordered[after % len(ordered)]
        self._last = chosen.id
        return chosen


class Weighted:
    """Smooth weighted round robin (nginx's upstream algorithm).

    Each pick, every endpoint's current weight grows by its weight; the largest
    is picked and loses the total. Over any sum(weights) picks of an unchanged
    set each endpoint is picked exactly weight times (for integer weights), and
    the heavy one's turns are spread out: weights 5, 1, 1 give the cycle
    a a b a c a a, not a a a a a b c.
    """

    name = "weighted"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._current: dict[str, float] = {}

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint:
        ordered = _by_id(endpoints)
        # Forget endpoints that left: the dict stays bounded, and one that
        # comes back starts level (0) rather than with a stale credit or debt.
        present = {e.id for e in ordered}
        for gone in self._current.keys() - present:
            del self._current[gone]
        total = 0.0
        chosen = ordered[0]
        for endpoint in ordered:
            current = self._current.get(endpoint.id, 0.0) + endpoint.weight
            self._current[endpoint.id] = current
            total += endpoint.weight
            if current > self._current[chosen.id]:  # strict: equal weights go to the first id, like nginx
                chosen = endpoint
        self._current[chosen.id] -= total
        return chosen


class LeastLatency:
    """The endpoint expected to answer soonest.

    Score: latency_ewma * (outstanding + 1), lowest wins, ties by rng. The
    EWMA alone herds: every request goes to the fastest replica until its
    measured latency (which lags by a whole request) catches up, and
    meanwhile its queue grows. Multiplying by the requests it would have in
    flight estimates the wait behind them, so load spreads in proportion to
    speed (a replica twice as fast takes about twice the concurrent requests).
    It needs no extra randomness, unlike power of two choices.

    An endpoint not yet measured (latency_ewma None) and idle is picked first,
    so that each gets measured; one request at a time probes it, rather than
    every request until the first answer comes back. With nothing measured and
    every unmeasured endpoint busy, fewest outstanding wins.
    """

    name = "least_latency"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint:
        ordered = _by_id(endpoints)
        probes = [e for e in ordered if e.latency_ewma is None and e.outstanding == 0]
        if probes:
            return probes[0] if len(probes) == 1 else self._rng.choice(probes)
        measured = [e for e in ordered if e.latency_ewma is not None]
        if measured:
            return _lowest(measured, _expected_wait, self._rng)
        return _lowest(ordered, _outstanding, self._rng)


def _expected_wait(endpoint: Endpoint) -> float:
    assert endpoint.latency_ewma is not None
    return endpoint.latency_ewma * (endpoint.outstanding + 1)


def _outstanding(endpoint: Endpoint) -> float:
    return endpoint.outstanding


class LeastOutstanding:
    """Fewest requests in flight; ties by rng, so idle replicas share evenly."""

    name = "least_outstanding"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint:
        return _lowest(_by_id(endpoints), _outstanding, self._rng)


@dataclass(frozen=True)
class _Ring:
    points: list[int]  # sorted hash positions
    owners: list[str]  # owners[i]: the endpoint id at points[i]


def _position(text: str) -> int:
    # blake2b, not hash(): Python salts str hashes per process, and the ring
    # must place a key the same way after a restart (and on every appliance).
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _build_ring(ids: frozenset[str], vnodes: int) -> _Ring:
    # Ties of position (vanishingly rare with 64 bits) are broken by id, so the ring is the same everywhere.
    placed = sorted((_position(f"{id_}#{i}"), id_) for id_ in ids for i in range(vnodes))
    return _Ring([p for p, _ in placed], [id_ for _, id_ in placed])


class ConsistentHash:
    """The same key to the same endpoint, with bounded loads.

    A hash ring with vnodes points per endpoint: a key goes to the owner of
    the first point clockwise from the key's hash. Removing an endpoint moves
    only the keys that were on it (to the next owner clockwise); adding it
    back returns them.

    Bounded load (Mirrokni, Thorup, Zadimoghaddam 2016, "Consistent hashing
    with bounded loads", as in HAProxy and Envoy): an endpoint takes the key
    only if outstanding + 1 <= ceil(load_factor * (total_outstanding + 1) / n);
    otherwise the walk goes on clockwise to the next endpoint under the bound.
    A hot key's overflow thus spills to its ring neighbours while no replica
    carries more than load_factor times the mean. With load_factor >= 1 some
    endpoint is always under the bound (they cannot all be at it: their loads
    would sum to more than the total).

    With key None (no user or session to stick to) it picks like least_outstanding.
    """

    name = "consistent_hash"

    def __init__(
        self, rng: random.Random | None = None, *, load_factor: float = LOAD_FACTOR, vnodes: int = VNODES
    ) -> None:
        if not load_factor >= 1:
            raise ValueError(f"load_factor must be >= 1, not {load_factor!r}")
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, not {vnodes!r}")
        self._rng = rng or random.Random()
        self.load_factor = load_factor
        self.vnodes = vnodes
        self._rings: OrderedDict[frozenset[str], _Ring] = OrderedDict()

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint:
        ordered = _by_id(endpoints)
        if key is None:
            return _lowest(ordered, _outstanding, self._rng)
        by_id = {e.id: e for e in ordered}
        ring = self._ring(frozenset(by_id))
        total = sum(e.outstanding for e in ordered)
        bound = math.ceil(self.load_factor * (total + 1) / len(ordered))
        start = bisect.bisect_left(ring.points, _position(key))
        seen: set[str] = set()
        for step in range(len(ring.points)):
            owner = ring.owners[(start + step) % len(ring.points)]
            if owner in seen:
                continue
            seen.add(owner)
            if by_id[owner].outstanding + 1 <= bound:
                return by_id[owner]
            if len(seen) == len(by_id):
                break
        # Unreachable with load_factor >= 1 (see the class docstring); kept so a pick never fails for load.
        return _lowest(ordered, _outstanding, self._rng)

    def _ring(self, ids: frozenset[str]) -> _Ring:
        """The ring for this set of ids, rebuilt only when the set changes."""
        ring = self._rings.get(ids)
        if ring is None:
            ring = self._rings[ids] = _build_ring(ids, self.vnodes)
            if len(self._rings) > RINGS_CACHED:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(ids)
        return ring


STRATEGIES = ("round_robin", "weighted", "least_latency", "least_outstanding", "consistent_hash")

_CLASSES: dict[str, Callable[..., Any]] = {
    RoundRobin.name: RoundRobin,
    Weighted.name: Weighted,
    LeastLatency.name: LeastLatency,
    LeastOutstanding.name: LeastOutstanding,
    ConsistentHash.name: ConsistentHash,
}


def make_strategy(name: str, *, rng: random.Random | None = None, **options: Any) -> Strategy:
    """A new strategy by name (one of STRATEGIES), with its own state.

    options go to the strategy: consistent_hash takes load_factor (default
    1.25) and vnodes (default 256); the others take none, and an option a
    strategy does not take raises TypeError.
    """
    cls = _CLASSES.get(name)
    if cls is None:
        raise ValueError(f"unknown routing strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    strategy: Strategy = cls(rng, **options)
    return strategy
