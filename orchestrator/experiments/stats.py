"""The statistics an A/B test decides with (scipy does the distributions).

- success rate: a two-sided two-proportion z-test (pooled standard error);
- latency, tokens, feedback scores: Welch's t-test, from each variant's count,
  mean and variance (no equal-variance assumption).

The first variant is the control. With more than one treatment each is
compared with the control at alpha divided by the number of comparisons
(Bonferroni), so the chance of declaring a winner when no variant differs
stays at most alpha. The test is fixed-horizon: a decision is made once
every variant has min_samples observations, not before (a decision taken the
first time a p-value dips under alpha, checked again and again, would find
differences that are not there far more often than alpha says).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scipy import stats

Goal = Literal["max", "min"]


@dataclass(frozen=True)
class Proportion:
    successes: int
    trials: int

    @property
    def n(self) -> int:
        return self.trials

    @property
    def value(self) -> float:
        return self.successes / self.trials if self.trials else 0.0


@dataclass(frozen=True)
class Sample:
    """A sample's size, mean and unbiased variance (ddof=1)."""

    n: int
    mean: float
    variance: float

    @property
    def value(self) -> float:
        return self.mean

    @classmethod
    def from_sums(cls, n: int, total: float, total_squares: float) -> Sample:
        """From the count, the sum and the sum of squares of the values."""
        if n <= 0:
            return cls(0, 0.0, 0.0)
        mean = total / n
        # max(0, ...): rounding can make a zero variance slightly negative.
        variance = max(0.0, (total_squares - n * mean * mean) / (n - 1)) if n > 1 else 0.0
        return cls(n, mean, variance)


Summary = Proportion | Sample


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float
    effect: float  # treatment minus control, in the metric's unit


def two_proportion_z_test(control: Proportion, treatment: Proportion) -> TestResult:
    """Two-sided z-test of equal success rates, with the pooled rate's standard error."""
    effect = treatment.value - control.value
    if control.trials == 0 or treatment.trials == 0:
        return TestResult(0.0, 1.0, effect)
    pooled = (control.successes + treatment.successes) / (control.trials + treatment.trials)
    error = math.sqrt(pooled * (1 - pooled) * (1 / control.trials + 1 / treatment.trials))
    if error == 0:  # both all successes or all failures: no evidence of a difference
        return TestResult(0.0, 1.0, effect)
    z = effect / error
    return TestResult(z, float(2 * stats.norm.sf(abs(z))), effect)


def welch_t_test(control: Sample, treatment: Sample) -> TestResult:
    """Two-sided Welch's t-test of equal means."""
    effect = treatment.mean - control.mean
    if control.n < 2 or treatment.n < 2:
        return TestResult(0.0, 1.0, effect)
    if control.variance == 0 and treatment.variance == 0:
        # scipy answers NaN here; two constant samples differ for sure, or not at all (means computed
        # from sums differ in the last bits for the same constant: that is not a difference).
        if math.isclose(control.mean, treatment.mean, rel_tol=1e-9, abs_tol=1e-12):
            return TestResult(0.0, 1.0, effect)
        return TestResult(math.copysign(math.inf, effect), 0.0, effect)
    result = stats.ttest_ind_from_stats(treatment.mean, math.sqrt(treatment.variance), treatment.n,
                                        control.mean, math.sqrt(control.variance), control.n, equal_var=False)
    return TestResult(float(result.statistic), float(result.pvalue), effect)


def compare(control: Summary, treatment: Summary) -> TestResult:
    if isinstance(control, Proportion) and isinstance(treatment, Proportion):
        return two_proportion_z_test(control, treatment)
    if isinstance(control, Sample) and isinstance(treatment, Sample):
        return welch_t_test(control, treatment)
    raise TypeError("both summaries must be of the same kind")


@dataclass(frozen=True)
class Comparison:
    variant: str
    test: str  # "z" or "welch"
    statistic: float
    p_value: float
    effect: float
    significant: bool  # p_value < the corrected alpha
    better: bool  # the treatment is better than the control in the goal's direction (whether significant or not)


@dataclass(frozen=True)
class Decision:
    status: Literal["collecting", "winner", "no_winner"]
    winner: str | None
    alpha: float
    corrected_alpha: float  # alpha / number of comparisons
    comparisons: tuple[Comparison, ...]
    reason: str


def decide(summaries: dict[str, Summary], control: str, goal: Goal, alpha: float, min_samples: int) -> Decision:
    """The winner among the variants (dict order, control among them), if any.

    A treatment wins if it is significantly better than the control (the one
    with the largest effect if several are); the control wins if every
    treatment is significantly worse; else there is none. Before every variant
    has min_samples observations the status is "collecting" and nobody wins."""
    treatments = [name for name in summaries if name != control]
    if control not in summaries or not treatments:
        raise ValueError("decide needs the control and at least one treatment")
    corrected = alpha / len(treatments)
    comparisons = []
    for name in treatments:
        result = compare(summaries[control], summaries[name])
        better = result.effect > 0 if goal == "max" else result.effect < 0
        comparisons.append(Comparison(name, "z" if isinstance(summaries[name], Proportion) else "welch",
                                      result.statistic, result.p_value, result.effect,
                                      result.p_value < corrected, better))
    short = [name for name, summary in summaries.items() if summary.n < min_samples]
    if short:
        return Decision("collecting", None, alpha, corrected, tuple(comparisons),
                        f"waiting for {min_samples} observations of every variant ({', '.join(short)} lack them)")
    winners = [c for c in comparisons if c.significant and c.better]
    if winners:
        best = max(winners, key=lambda c: abs(c.effect))
        return Decision("winner", best.variant, alpha, corrected, tuple(comparisons),
                        f"{best.variant} beats {control} (p = {best.p_value:.3g} < {corrected:.3g})")
    if all(c.significant and not c.better for c in comparisons):
        return Decision("winner", control, alpha, corrected, tuple(comparisons),
                        f"{control} (the control) beats every other variant at p < {corrected:.3g}")
    return Decision("no_winner", None, alpha, corrected, tuple(comparisons),
                    f"no significant difference at alpha {alpha:g}")
