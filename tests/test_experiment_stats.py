"""A/B testing core (orchestrator/experiments/stats.py, outcomes.py and
assignment.py): the z- and Welch tests agree with an independent computation
and scipy, decisions on synthetic outcomes with a known effect pick the right
winner, no-effect experiments declare one at most at the configured alpha,
users are split by weight, stickily and independently per experiment, and the
per-variant counters give faithful percentiles and survive a JSON round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import binom, chi2_contingency, norm, ttest_ind

from orchestrator.experiments.assignment import pick, point_of
from orchestrator.experiments.outcomes import METRICS, VariantStats, classify
from orchestrator.experiments.stats import (
    Proportion,
    Sample,
    compare,
    decide,
    two_proportion_z_test,
    welch_t_test,
)

ALPHA = 0.05


# --- helpers -----------------------------------------------------------------------------------------------------


def pooled_z(s1: int, n1: int, s2: int, n2: int) -> float:
    """The pooled two-proportion z statistic (second minus first), computed by hand."""
    p1, p2 = s1 / n1, s2 / n2
    pooled = (s1 + s2) / (n1 + n2)
    return (p2 - p1) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))


def sample_of(values: np.ndarray) -> Sample:
    """A Sample built the way the service stores it: count, sum and sum of squares."""
    return Sample.from_sums(len(values), float(np.sum(values)), float(np.sum(values * values)))


def simulate_variant(rng: np.random.Generator, n: int, success_p: float = 1.0, mean_latency: float = 0.5,
                     latency_sigma: float = 0.5) -> VariantStats:
    """n requests fed through VariantStats.record: success with probability success_p, lognormal latency."""
    stats = VariantStats()
    # lognormal with the given mean: mu = log(mean) - sigma^2 / 2
    latencies = rng.lognormal(math.log(mean_latency) - latency_sigma ** 2 / 2, latency_sigma, n)
    tokens = rng.integers(1, 500, n)
    for ok, seconds, used in zip(rng.random(n) < success_p, latencies, tokens, strict=True):
        stats.record(bool(ok), float(seconds), int(used))
    return stats


def decide_on(variants: dict[str, VariantStats], metric: str, goal: str, min_samples: int = 100):
    """decide() on the metric's summaries; the first variant is the control."""
    summaries = {name: stats.summary(metric) for name, stats in variants.items()}
    return decide(summaries, next(iter(variants)), goal, ALPHA, min_samples)


def false_positive_bound(runs: int, rate: float) -> int:
    """The most winners a level-`rate` procedure should declare in `runs` null experiments (99.9% one-sided)."""
    return int(binom.ppf(0.999, runs, rate))


# --- two-proportion z-test ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("s1,n1,s2,n2", [(90, 100, 80, 100), (450, 500, 470, 520), (3, 40, 9, 35),
                                          (1000, 1000, 990, 1000), (500, 1000, 500, 1000)])
def test_z_test_matches_hand_computation_and_chi_square(s1: int, n1: int, s2: int, n2: int) -> None:
    result = two_proportion_z_test(Proportion(s1, n1), Proportion(s2, n2))
    z = pooled_z(s1, n1, s2, n2)
    assert result.statistic == pytest.approx(z, rel=1e-9, abs=1e-12)
    assert result.p_value == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9, abs=1e-15)
    assert result.effect == pytest.approx(s2 / n2 - s1 / n1)
    # The pooled two-sided z-test is the uncorrected 2x2 chi-square test (z^2 = chi2): an independent check.
    chi2_p = chi2_contingency([[s1, n1 - s1], [s2, n2 - s2]], correction=False).pvalue
    assert result.p_value == pytest.approx(chi2_p, rel=1e-6, abs=1e-15)


@pytest.mark.parametrize("control,treatment", [
    (Proportion(0, 0), Proportion(5, 10)),  # no trials on one side: nothing to compare
    (Proportion(5, 10), Proportion(0, 0)),
    (Proportion(0, 0), Proportion(0, 0)),
    (Proportion(100, 100), Proportion(300, 300)),  # all successes on both sides
    (Proportion(0, 100), Proportion(0, 300)),  # all failures on both sides
])
def test_z_test_without_evidence_gives_p_one(control: Proportion, treatment: Proportion) -> None:
    result = two_proportion_z_test(control, treatment)
    assert result.p_value == 1.0
    assert math.isfinite(result.statistic)


# --- Welch's t-test ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_welch_from_sums_matches_scipy_on_raw_samples(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # unequal sizes, means and spreads: where Welch differs from Student
    control = rng.normal(0.5, 0.1, int(rng.integers(5, 400)))
    treatment = rng.normal(0.5 + rng.normal(0, 0.02), rng.uniform(0.05, 0.3), int(rng.integers(5, 400)))
    expected = ttest_ind(treatment, control, equal_var=False)
    result = welch_t_test(sample_of(control), sample_of(treatment))
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-6)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-12)
    assert result.effect == pytest.approx(treatment.mean() - control.mean(), abs=1e-12)
    assert compare(sample_of(control), sample_of(treatment)) == result


def test_sample_from_sums_gives_unbiased_variance() -> None:
    values = np.random.default_rng(7).gamma(2.0, 0.3, 250)
    sample = sample_of(values)
    assert sample.n == 250
    assert sample.mean == pytest.approx(values.mean(), rel=1e-12)
    assert sample.variance == pytest.approx(values.var(ddof=1), rel=1e-9)


def test_welch_on_constant_samples() -> None:
    # scipy answers NaN for two zero variances; a constant value is either the same on both sides or not.
    # (Binary-exact values, so that the sums are exact: the test below covers sums that are not.)
    same = welch_t_test(sample_of(np.full(20, 0.25)), sample_of(np.full(30, 0.25)))
    assert same.p_value == 1.0
    slower = welch_t_test(sample_of(np.full(20, 0.25)), sample_of(np.full(30, 0.375)))
    assert slower.p_value == 0.0
    assert slower.statistic > 0 and slower.effect == 0.125  # treatment minus control


def test_identical_constant_samples_from_sums_declare_no_winner() -> None:
    control, treatment = VariantStats(), VariantStats()
    for stats, n in ((control, 500), (treatment, 300)):
        for _ in range(n):
            stats.feedback.add(0.1)  # every user gives the same score on both sides
    decision = decide_on({"control": control, "treatment": treatment}, "feedback", "max")
    assert decision.comparisons[0].p_value > 0.5
    assert (decision.status, decision.winner) == ("no_winner", None)


def test_welch_with_fewer_than_two_values_gives_p_one() -> None:
    assert welch_t_test(Sample(1, 0.1, 0.0), Sample(50, 9.0, 1.0)).p_value == 1.0
    assert welch_t_test(Sample(50, 9.0, 1.0), Sample(0, 0.0, 0.0)).p_value == 1.0


def test_compare_refuses_mixed_summaries() -> None:
    with pytest.raises(TypeError):
        compare(Proportion(1, 2), Sample(2, 0.0, 1.0))


# --- decisions on synthetic outcomes with a known effect ---------------------------------------------------------


@pytest.mark.parametrize("treatment_p,winner", [(0.80, "control"), (0.95, "treatment")])
def test_success_rate_effect_declares_the_right_winner(treatment_p: float, winner: str) -> None:
    rng = np.random.default_rng(1)
    variants = {"control": simulate_variant(rng, 3000, 0.90), "treatment": simulate_variant(rng, 3000, treatment_p)}
    decision = decide_on(variants, "success_rate", "max")
    assert (decision.status, decision.winner) == ("winner", winner)
    # The reported effect is treatment minus control, near the planted one (4 standard errors).
    (comparison,) = decision.comparisons
    se = math.sqrt(0.9 * 0.1 / 3000 + treatment_p * (1 - treatment_p) / 3000)
    assert abs(comparison.effect - (treatment_p - 0.90)) < 4 * se
    assert comparison.test == "z" and comparison.significant


@pytest.mark.parametrize("treatment_latency,winner", [(0.45, "treatment"), (0.55, "control")])
def test_latency_effect_declares_the_right_winner_when_lower_is_better(treatment_latency: float, winner: str) -> None:
    rng = np.random.default_rng(2)
    variants = {"control": simulate_variant(rng, 3000, 0.99, mean_latency=0.50),
                "treatment": simulate_variant(rng, 3000, 0.99, mean_latency=treatment_latency)}
    decision = decide_on(variants, "latency", "min")
    assert (decision.status, decision.winner) == ("winner", winner)
    (comparison,) = decision.comparisons
    assert comparison.test == "welch"
    assert comparison.effect == pytest.approx(treatment_latency - 0.50, abs=0.02)


def test_best_of_several_better_treatments_wins() -> None:
    rng = np.random.default_rng(3)
    variants = {"control": simulate_variant(rng, 3000, 0.80), "good": simulate_variant(rng, 3000, 0.85),
                "best": simulate_variant(rng, 3000, 0.92)}
    decision = decide_on(variants, "success_rate", "max")
    assert (decision.status, decision.winner) == ("winner", "best")
    assert decision.corrected_alpha == pytest.approx(ALPHA / 2)


def test_specific_no_effect_experiment_declares_no_winner() -> None:
    rng = np.random.default_rng(4)
    variants = {"control": simulate_variant(rng, 2000, 0.9), "treatment": simulate_variant(rng, 2000, 0.9)}
    for metric, goal in [("success_rate", "max"), ("latency", "min")]:
        decision = decide_on(variants, metric, goal)
        assert (decision.status, decision.winner) == ("no_winner", None), metric


# --- the false positive rate with no effect ----------------------------------------------------------------------


def test_z_test_declares_winners_at_about_alpha_when_there_is_no_effect() -> None:
    rng = np.random.default_rng(5)
    runs = 400
    declared = 0
    for _ in range(runs):
        variants = {"a": simulate_variant(rng, 500, 0.8), "b": simulate_variant(rng, 500, 0.8)}
        declared += decide_on(variants, "success_rate", "max").winner is not None
    # One comparison, two-sided: a winner (either side) is declared with probability alpha.
    assert binom.ppf(0.001, runs, ALPHA) <= declared <= false_positive_bound(runs, ALPHA)


def test_bonferroni_keeps_family_wise_false_positives_under_alpha() -> None:
    rng = np.random.default_rng(6)
    runs = 400
    declared = 0
    for _ in range(runs):
        variants = {name: simulate_variant(rng, 500, 1.0, mean_latency=0.5) for name in ("a", "b", "c")}
        decision = decide_on(variants, "latency", "min")
        assert decision.corrected_alpha == pytest.approx(ALPHA / 2)
        declared += decision.winner is not None
    assert declared <= false_positive_bound(runs, ALPHA)


def test_bonferroni_rejects_a_p_value_between_corrected_and_plain_alpha() -> None:
    control, treatment = Sample(1000, 1.0, 1.0), Sample(1000, 1.1, 1.0)
    p = welch_t_test(control, treatment).p_value
    assert ALPHA / 2 < p < ALPHA  # the premise: significant alone, not after correcting for two comparisons
    two = decide({"c": control, "t": treatment}, "c", "max", ALPHA, 100)
    assert (two.status, two.winner) == ("winner", "t")
    three = decide({"c": control, "t": treatment, "u": Sample(1000, 1.0, 1.0)}, "c", "max", ALPHA, 100)
    assert (three.status, three.winner) == ("no_winner", None)


# --- fixed horizon -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("summaries", [
    {"c": Proportion(99, 99), "t": Proportion(0, 99)},  # every request of t failed
    {"c": Proportion(0, 99), "t": Proportion(99, 99)},
    {"c": Sample(500, 0.1, 0.0001), "t": Sample(99, 5.0, 0.0001)},  # only the treatment is short
    {"c": Sample(99, 0.1, 0.0001), "t": Sample(500, 5.0, 0.0001)},  # only the control is short
])
def test_collecting_until_every_variant_has_min_samples(summaries: dict) -> None:
    decision = decide(summaries, "c", "max", ALPHA, min_samples=100)
    assert (decision.status, decision.winner) == ("collecting", None)
    assert decision.comparisons[0].p_value < 1e-10  # the difference is huge, yet no verdict


def test_decides_once_min_samples_is_reached() -> None:
    decision = decide({"c": Proportion(100, 100), "t": Proportion(0, 100)}, "c", "max", ALPHA, min_samples=100)
    assert (decision.status, decision.winner) == ("winner", "c")


@pytest.mark.parametrize("summaries", [{"c": Proportion(1, 2)}, {"t": Proportion(1, 2), "u": Proportion(1, 2)}])
def test_decide_needs_the_control_and_a_treatment(summaries: dict) -> None:
    with pytest.raises(ValueError):
        decide(summaries, "c", "max", ALPHA, 1)


# --- assignment --------------------------------------------------------------------------------------------------

USERS = [f"user-{i}" for i in range(10_000)]


def assign(salt: str, weights: list[float]) -> np.ndarray:
    return np.array([pick(weights, point_of(salt, user)) for user in USERS])


def within_sigmas(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_weighted_split_follows_the_weights() -> None:
    chosen = assign("exp-1", [70, 20, 10])
    for index, share in enumerate([0.7, 0.2, 0.1]):
        assert within_sigmas(int(np.sum(chosen == index)), len(USERS), share), (index, np.sum(chosen == index))


def test_same_user_always_gets_the_same_variant() -> None:
    assert np.array_equal(assign("exp-1", [70, 20, 10]), assign("exp-1", [70, 20, 10]))
    for user in ["alice", "", "ünïcødé 🎲", "\ud800lone-surrogate"]:  # any JSON string a client may send
        points = {point_of("exp-1", user) for _ in range(5)}
        assert len(points) == 1 and 0.0 <= points.pop() < 1.0


def test_different_experiments_split_users_independently() -> None:
    weights = [0.7, 0.2, 0.1]
    first, second = assign("exp-1", [70, 20, 10]), assign("exp-2", [70, 20, 10])
    for i, wi in enumerate(weights):
        for j, wj in enumerate(weights):
            both = int(np.sum((first == i) & (second == j)))
            assert within_sigmas(both, len(USERS), wi * wj), (i, j, both)


def test_points_are_in_unit_interval_and_random_without_a_user() -> None:
    assert all(0.0 <= point_of("exp-1", user) < 1.0 for user in USERS)
    anonymous = [point_of("exp-1", None) for _ in range(100)]
    assert all(0.0 <= p < 1.0 for p in anonymous)
    assert len(set(anonymous)) == 100


def test_canary_stages_only_add_users() -> None:
    stages = [1, 5, 10, 25, 50, 100]
    held = [{u for u in USERS if pick([pct, 100 - pct], point_of("canary", u)) == 0} for pct in stages]
    for smaller, larger in zip(held, held[1:], strict=False):
        assert smaller <= larger
    assert within_sigmas(len(held[1]), len(USERS), 0.05) and within_sigmas(len(held[2]), len(USERS), 0.10)
    assert len(held[-1]) == len(USERS)


@pytest.mark.parametrize("weights", [[0, 0, 0], [0], [], [0.0, 0.0]])
def test_pick_refuses_weights_without_mass(weights: list[float]) -> None:
    with pytest.raises(ValueError):
        pick(weights, 0.5)


@pytest.mark.parametrize("weights,zero", [([0, 50, 50], 0), ([50, 0, 50], 1), ([50, 50, 0], 2),
                                          ([1, 0, 0, 0], 1), ([70, 20, 10, 0], 3)])
def test_zero_weight_variant_is_never_picked(weights: list[float], zero: int) -> None:
    edges = [0.0, 0.5, 0.9, 0.9999999999999999, math.nextafter(1.0, 0.0)]  # boundaries and rounding near 1
    points = edges + [point_of("exp-z", user) for user in USERS]
    assert zero not in {pick(weights, p) for p in points}


# --- VariantStats ------------------------------------------------------------------------------------------------


def latencies(n: int, seed: int = 8) -> np.ndarray:
    # a long-tailed latency distribution, kept above 1 ms where the 5% buckets start
    return 0.002 + np.random.default_rng(seed).lognormal(math.log(0.3), 0.8, n)


@pytest.mark.parametrize("n", [1000, 997])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_percentile_is_within_the_bucket_growth_above_the_true_one(n: int, q: float) -> None:
    values = latencies(n)
    stats = VariantStats()
    for seconds in values:
        stats.record(True, float(seconds), None)
    stats.record(False, 1e6, None)  # a failure's latency is not a success's
    # percentile(q) is documented as "the latency under which a share q came back": the smallest value with
    # at least q of the values at or below it, numpy's inverted_cdf. ("higher" would be the next value up
    # when q * (n - 1) is fractional, i.e. the 991st of 1000 for q = 0.99 rather than the 990th.)
    true = float(np.percentile(values, 100 * q, method="inverted_cdf"))
    got = stats.percentile(q)
    assert true * (1 - 1e-9) <= got <= true * 1.05 * (1 + 1e-9)


def test_percentile_without_successes_is_none() -> None:
    stats = VariantStats()
    stats.record(False, 0.2, None)
    assert stats.percentile(0.5) is None
    assert stats.public()["latency_p99_s"] is None and stats.public()["error_rate"] == 1.0


def test_latency_and_tokens_count_only_successes() -> None:
    stats = VariantStats()
    stats.record(True, 0.2, 10)
    stats.record(True, 0.4, None)  # no usage reported
    stats.record(False, 30.0, 99)
    assert stats.summary("success_rate") == Proportion(2, 3)
    assert stats.summary("latency").n == 2 and stats.summary("latency").mean == pytest.approx(0.3)
    assert stats.summary("tokens") == Sample(1, 10.0, 0.0)


def test_json_round_trip_keeps_every_figure() -> None:
    rng = np.random.default_rng(9)
    original = simulate_variant(rng, 500, 0.9)
    for score in rng.random(40):
        original.feedback.add(float(score))
    restored = VariantStats.from_dict(json.loads(json.dumps(original.to_dict())))
    assert restored == original
    assert restored.public() == original.public()
    for metric in METRICS:
        assert restored.summary(metric) == original.summary(metric)
    # Counting goes on after a restart exactly as if there had been none (histogram keys back to ints).
    for stats in (original, restored):
        stats.record(True, 0.37, 12)
    assert restored == original


def test_empty_stats_round_trip() -> None:
    restored = VariantStats.from_dict(json.loads(json.dumps(VariantStats().to_dict())))
    assert restored == VariantStats() and restored.public() == VariantStats().public()


@pytest.mark.parametrize("status,counted", [(200, True), (201, True), (500, False), (502, False), (503, False),
                                            (400, None), (404, None), (429, None), (499, None)])
def test_classify(status: int, counted: bool | None) -> None:
    assert classify(status) is counted
