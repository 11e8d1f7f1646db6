"""Which values of one feature's stream to compare, in bounded memory.

    fixed      a frozen reference against the latest `size` values
    sliding    the `size` values before the latest `size` against those, moving by one value
    tumbling   each closed window of `size` against the one before it (no overlap)
    ADWIN      river's adaptive window: the stream positions where it saw the mean change

The first three hold any values (numbers or categories; models/drift/measures.py
checks them) and hand out WindowPair(reference, current) once both sides are
full, None before. ADWIN is numeric only and reports change points instead.
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from river.drift import ADWIN

from models.drift.measures import DriftInputError


@dataclass(frozen=True)
class WindowPair:
    """Two samples to compare. current is stream[end - len(current):end],
    positions counted from 0 in the order values were added."""

    reference: list[Any]
    current: list[Any]
    end: int


def _check_size(size: int) -> int:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"a window size must be a positive int, got {size!r}")
    return size


class FixedWindow:
    """A reference frozen at construction (a training sample, say) against the
    latest `size` values."""

    def __init__(self, reference: Iterable[Any], size: int) -> None:
        self.reference = list(reference)
        self.size = _check_size(size)
        self._current: deque[Any] = deque(maxlen=size)
        self.seen = 0

    def add(self, value: Any) -> None:
        self._current.append(value)
        self.seen += 1

    def add_many(self, values: Iterable[Any]) -> None:
        for value in values:
            self.add(value)

    def pair(self) -> WindowPair | None:
        if len(self._current) < self.size:
            return None
        return WindowPair(list(self.reference), list(self._current), self.seen)

    @property
    def held(self) -> int:
        """Values in memory: the reference and at most `size` more."""
        return len(self.reference) + len(self._current)


class SlidingWindow:
    """The latest `size` values against the `size` just before them."""

    def __init__(self, size: int) -> None:
        self.size = _check_size(size)
        self._values: deque[Any] = deque(maxlen=2 * size)
        self.seen = 0

    def add(self, value: Any) -> None:
        self._values.append(value)
        self.seen += 1

    def add_many(self, values: Iterable[Any]) -> None:
        for value in values:
            self.add(value)

    def pair(self) -> WindowPair | None:
        if len(self._values) < 2 * self.size:
            return None
        return WindowPair(list(islice(self._values, self.size)), list(islice(self._values, self.size, None)),
                          self.seen)

    @property
    def held(self) -> int:
        """Values in memory: at most 2 * size."""
        return len(self._values)


class TumblingWindow:
    """Consecutive windows of `size` values, no overlap: each window, once
    closed, against the one before it. The first window only becomes a
    reference."""

    def __init__(self, size: int) -> None:
        self.size = _check_size(size)
        self._filling: list[Any] = []
        self._previous: list[Any] | None = None
        self._latest: WindowPair | None = None
        self.seen = 0

    def add(self, value: Any) -> WindowPair | None:
        """The pair that this value closed, if it closed a window after the first."""
        self._filling.append(value)
        self.seen += 1
        if len(self._filling) < self.size:
            return None
        closed, self._filling = self._filling, []
        previous, self._previous = self._previous, closed
        if previous is None:
            return None
        self._latest = WindowPair(previous, closed, self.seen)
        return self._latest

    def add_many(self, values: Iterable[Any]) -> list[WindowPair]:
        """The pairs closed by these values, oldest first."""
        return [pair for pair in map(self.add, values) if pair is not None]

    def pair(self) -> WindowPair | None:
        """The latest closed pair."""
        return self._latest

    @property
    def held(self) -> int:
        """Values in memory: the filling window and the latest pair, at most 3 * size."""
        latest = len(self._latest.reference) if self._latest is not None else 0
        return len(self._filling) + len(self._previous or ()) + latest


class AdwinDetector:
    """river's ADWIN over a numeric stream: change_points are the stream
    positions at which it detected a change of mean (river then starts a new
    window). It detects only every `clock` values, so a change is reported up
    to about `clock` values late, plus the values ADWIN needs to be sure.
    NaN, inf and None are skipped (counted in dropped) but keep their
    positions. ADWIN's own memory grows with the log of its window; the list
    of change points keeps the latest max_change_points."""

    def __init__(self, delta: float = 0.002, clock: int = 32, max_buckets: int = 5, min_window_length: int = 5,
                 grace_period: int = 10, max_change_points: int = 1000) -> None:
        self._adwin = ADWIN(delta=delta, clock=clock, max_buckets=max_buckets,
                            min_window_length=min_window_length, grace_period=grace_period)
        self._change_points: deque[int] = deque(maxlen=max_change_points)
        self.seen = 0
        self.dropped = 0

    def add(self, value: Any) -> bool:
        """Whether ADWIN detected a change at this value."""
        position = self.seen
        self.seen += 1
        if value is None or (isinstance(value, numbers.Real) and not math.isfinite(value)):
            self.dropped += 1
            return False
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise DriftInputError(f"ADWIN takes numbers; position {position} is {value!r} ({type(value).__name__})")
        self._adwin.update(float(value))
        if self._adwin.drift_detected:
            self._change_points.append(position)
            return True
        return False

    def add_many(self, values: Iterable[Any]) -> list[int]:
        """The change points found among these values."""
        start = self.seen
        for value in values:
            self.add(value)
        return [point for point in self._change_points if point >= start]

    @property
    def change_points(self) -> list[int]:
        return list(self._change_points)

    @property
    def estimation(self) -> float:
        """ADWIN's current estimate of the mean."""
        return float(self._adwin.estimation)
