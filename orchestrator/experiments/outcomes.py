"""What an experiment counts for each version: outcomes, latencies, tokens,
user feedback; kept as sums (and a latency histogram for percentiles) so that
they fit in a row of experiments.db and survive a restart.

A request counts when it reached the version's service: 2xx is a success,
5xx (the service failed, or could not be started) a failure. 4xx answers are
the client's doing and 499 (the client left) says nothing about the version:
neither is counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.experiments.stats import Goal, Proportion, Sample, Summary

Metric = Literal["success_rate", "latency", "tokens", "feedback"]
METRICS: tuple[Metric, ...] = ("success_rate", "latency", "tokens", "feedback")
DEFAULT_GOAL: dict[Metric, Goal] = {"success_rate": "max", "latency": "min", "tokens": "min", "feedback": "max"}

# Latency buckets grow by 5% from 1 ms: a percentile read from them is within 5% of the true one.
_SMALLEST = 0.001
_GROWTH = 1.05
_LAST_BUCKET = 400  # 1 ms * 1.05^400: about 3e5 s; slower answers share the last bucket


def latency_bucket(seconds: float) -> int:
    if seconds <= _SMALLEST:
        return 0
    return min(_LAST_BUCKET, math.ceil(math.log(seconds / _SMALLEST) / math.log(_GROWTH)))


def bucket_upper(index: int) -> float:
    """The largest latency a bucket holds."""
    return _SMALLEST * _GROWTH ** index


@dataclass
class Moments:
    """Count, sum and sum of squares: a mean and a variance without the values."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.squares += value * value

    def sample(self) -> Sample:
        return Sample.from_sums(self.n, self.total, self.squares)

    def mean(self) -> float | None:
        return self.total / self.n if self.n else None


def classify(status: int) -> bool | None:
    """True for a success, False for a failure of the version, None when the request does not count."""
    if 200 <= status < 300:
        return True
    if status >= 500:
        return False
    return None


@dataclass
class VariantStats:
    successes: int = 0
    failures: int = 0
    latency: Moments = field(default_factory=Moments)  # seconds, of successes
    tokens: Moments = field(default_factory=Moments)  # completion tokens, of successes that reported usage
    feedback: Moments = field(default_factory=Moments)  # scores from 0 (bad) to 1 (good)
    histogram: dict[int, int] = field(default_factory=dict)  # latency bucket -> successes

    @property
    def requests(self) -> int:
        return self.successes + self.failures

    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def record(self, success: bool, seconds: float, completion_tokens: int | None) -> None:
        if not success:
            self.failures += 1
            return
        self.successes += 1
        self.latency.add(seconds)
        bucket = latency_bucket(seconds)
        self.histogram[bucket] = self.histogram.get(bucket, 0) + 1
        if completion_tokens is not None:
            self.tokens.add(completion_tokens)

    def percentile(self, q: float) -> float | None:
        """The latency under which a share q of the successes came back (a bucket's upper edge)."""
        if not self.histogram:
            return None
        wanted = q * sum(self.histogram.values()) - 1e-9  # 0.07 * 100 is 7.000000000000001 in floats
        seen = 0
        for bucket in sorted(self.histogram):
            seen += self.histogram[bucket]
            if seen >= wanted:
                return bucket_upper(bucket)
        return bucket_upper(max(self.histogram))

    def summary(self, metric: Metric) -> Summary:
        if metric == "success_rate":
            return Proportion(self.successes, self.requests)
        return {"latency": self.latency, "tokens": self.tokens, "feedback": self.feedback}[metric].sample()

    def public(self) -> dict[str, Any]:
        """The figures the API shows."""
        return {
            "requests": self.requests, "successes": self.successes, "failures": self.failures,
            "error_rate": round(self.error_rate(), 6),
            "latency_mean_s": _rounded(self.latency.mean()), "latency_p50_s": _rounded(self.percentile(0.5)),
            "latency_p99_s": _rounded(self.percentile(0.99)),
            "completion_tokens_mean": _rounded(self.tokens.mean()),
            "feedback": self.feedback.n, "feedback_mean": _rounded(self.feedback.mean()),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"successes": self.successes, "failures": self.failures,
                "latency": [self.latency.n, self.latency.total, self.latency.squares],
                "tokens": [self.tokens.n, self.tokens.total, self.tokens.squares],
                "feedback": [self.feedback.n, self.feedback.total, self.feedback.squares],
                "histogram": {str(k): v for k, v in self.histogram.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantStats:
        return cls(int(data["successes"]), int(data["failures"]), Moments(*data["latency"]),
                   Moments(*data["tokens"]), Moments(*data["feedback"]),
                   {int(k): int(v) for k, v in data["histogram"].items()})


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
