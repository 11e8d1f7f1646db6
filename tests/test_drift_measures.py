"""The drift monitor's detection core (models/drift/measures.py and
windows.py): planted drift is found with the expected severity, drift-free
data rarely alarms, every number agrees with scipy or river run directly on
the same data, bad input gets a clear error or a marked result, and the
windows hand out the right samples in bounded memory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from river.drift import ADWIN
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

from models.drift.measures import (
    OTHER,
    UNSEEN,
    DriftConfig,
    DriftInputError,
    EffectThresholds,
    FeatureDrift,
    Severity,
    compare_categorical,
    compare_numeric,
    js_distance,
    kl_divergence,
    ks_test,
    monitor_severity,
    psi,
    wasserstein,
    worst,
)
from models.drift.windows import AdwinDetector, FixedWindow, SlidingWindow, TumblingWindow

NUMERIC = ["psi", "kl_divergence", "js_distance", "ks", "wasserstein"]


def normal(seed: int, mean: float = 0.0, sd: float = 1.0, n: int = 1000) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, sd, n)


def severities(feature: FeatureDrift) -> dict[str, Severity]:
    return {result.name: result.severity for result in feature.results}


# ---------------------------------------------------------------- planted drift


def test_a_half_standard_deviation_mean_shift_is_at_least_medium_on_psi_and_ks():
    for seed in range(5):
        found = severities(compare_numeric(normal(seed), normal(seed + 100, mean=0.5)))
        assert found["psi"].rank >= Severity.MEDIUM.rank, (seed, found)
        assert found["ks"].rank >= Severity.MEDIUM.rank, (seed, found)
        # ... and not yet critical: critical is set at about one standard deviation.
        assert all(severity.rank < Severity.CRITICAL.rank for severity in found.values()), (seed, found)


def test_a_two_standard_deviation_mean_shift_is_critical_on_every_algorithm():
    feature = compare_numeric(normal(1), normal(2, mean=2.0))
    assert severities(feature) == {name: Severity.CRITICAL for name in NUMERIC}
    assert feature.severity == Severity.CRITICAL
    assert feature.result("wasserstein").normalised == pytest.approx(2.0, abs=0.15)


def test_a_doubled_standard_deviation_is_found_though_the_mean_stays():
    feature = compare_numeric(normal(3), normal(4, sd=2.0))
    found = severities(feature)
    assert found["psi"] == Severity.HIGH  # PSI about 0.5 for a doubled sd
    assert found["ks"].rank >= Severity.MEDIUM.rank  # KS is weakest on spread: D about 0.16
    assert found["wasserstein"] == Severity.HIGH  # 0.8 sd: E|Z| between the two
    assert feature.result("wasserstein").normalised == pytest.approx(math.sqrt(2 / math.pi), abs=0.1)


def test_a_changed_category_mix_is_found_by_chi_square():
    rng = np.random.default_rng(5)
    reference = rng.choice(["a", "b", "c"], size=1000, p=[0.5, 0.3, 0.2]).tolist()
    current = rng.choice(["a", "b", "c"], size=1000, p=[0.3, 0.3, 0.4]).tolist()
    feature = compare_categorical(reference, current)
    chi = feature.result("chi_square")
    assert chi.p_value < 1e-20 and chi.severity.rank >= Severity.MEDIUM.rank
    assert chi.cramers_v == pytest.approx(0.23, abs=0.04)  # the population's V for this change
    assert feature.result("psi").value > 0.1 and feature.severity.rank >= Severity.MEDIUM.rank
    assert chi.unseen == [] and chi.unseen_count == 0


def test_identical_samples_are_no_drift_with_zero_distances():
    values = normal(6)
    feature = compare_numeric(values, values.copy())
    assert severities(feature) == {name: Severity.NONE for name in NUMERIC}
    assert [feature.result(name).value for name in NUMERIC] == [0.0] * 5
    assert feature.result("ks").p_value == 1.0
    labels = ["x", "y", "y", "z"] * 50
    categorical = compare_categorical(labels, list(reversed(labels)))
    assert categorical.severity == Severity.NONE and categorical.result("chi_square").value == 0.0


# ---------------------------------------------------------------- the numbers themselves


def test_ks_is_scipy_ks_2samp_on_the_same_data():
    reference, current = normal(7), normal(8, mean=0.1, n=700)
    result = ks_test(reference, current)
    expected = ks_2samp(reference, current)
    assert (result.value, result.p_value) == (float(expected.statistic), float(expected.pvalue))
    assert result.test == "ks_2samp"


def test_js_is_scipy_jensenshannon_on_the_reported_histograms_and_those_histograms_are_right():
    reference, current = normal(9), normal(10, mean=0.3, sd=1.2, n=800)
    result = js_distance(reference, current)
    assert result.value == pytest.approx(float(jensenshannon(result.reference, result.current, base=2)), abs=1e-12)
    # The histograms, counted again by hand from the cut points.
    edges = result.edges
    assert edges is not None and len(edges) == 9  # 10 bins: 9 inner deciles of the reference
    assert edges == pytest.approx(np.quantile(reference, np.linspace(0.1, 0.9, 9)).tolist())

    def proportions(values: np.ndarray) -> list[float]:
        bins = [sum(1 for v in values if v < edges[0])]
        bins += [sum(1 for v in values if lo <= v < hi) for lo, hi in zip(edges, edges[1:], strict=False)]
        bins.append(sum(1 for v in values if v >= edges[-1]))
        return [count / len(values) for count in bins]

    assert result.reference == pytest.approx(proportions(reference))
    assert result.current == pytest.approx(proportions(current))
    assert 0.0 < result.value < 1.0


def test_psi_and_kl_on_a_hand_made_example():
    # Reference 0..99 in 4 bins: cut at 24.75, 49.5, 74.25, 25 values each.
    # Current: 4, 8, 12 and 16 values in those bins, proportions .1 .2 .3 .4.
    reference = list(range(100))
    current = [10] * 4 + [30] * 8 + [60] * 12 + [90] * 16
    config = DriftConfig(bins=4)
    result = psi(reference, current, config)
    assert result.edges == [24.75, 49.5, 74.25]
    assert result.reference == [0.25] * 4 and result.current == pytest.approx([0.1, 0.2, 0.3, 0.4])
    # sum (c - r) ln(c / r) = -0.15 ln 0.4 - 0.05 ln 0.8 + 0.05 ln 1.2 + 0.15 ln 1.6
    assert result.value == pytest.approx(0.2282171, abs=1e-6)
    # KL(current || reference) = sum c ln(c / r)
    assert kl_divergence(reference, current, config).value == pytest.approx(0.1064393, abs=1e-6)


def test_an_empty_bin_counts_as_epsilon_so_psi_stays_finite():
    reference = list(range(100))
    current = [10] * 20 + [60] * 20  # bins 2 and 4 empty
    result = psi(reference, current, DriftConfig(bins=4))
    c, r, eps = 0.5, 0.25, 1e-4
    smooth_c = np.array([c, eps, c, eps]) / (1 + 2 * eps)
    expected = float(np.sum((smooth_c - r) * np.log(smooth_c / r)))
    assert result.value == pytest.approx(expected, rel=1e-9)
    assert result.current == [0.5, 0.0, 0.5, 0.0]  # reported as observed


def test_tied_references_keep_a_value_on_a_cut_point_in_the_bin_it_opens():
    # Zero-inflated: the 25% and 50% quantiles are both 0, the 75% is 15.25.
    zero_inflated = psi([0] * 60 + list(range(1, 41)), [0] * 100, DriftConfig(bins=4))
    assert zero_inflated.edges == [0.0, 15.25]
    assert zero_inflated.reference == [0.0, 0.75, 0.25] and zero_inflated.current == [0.0, 1.0, 0.0]
    # A constant reference gets bins below, at and above its value, so a move either way shows.
    above = js_distance([1.0] * 50, [1.0] * 25 + [2.0] * 25)
    assert above.edges == [1.0, math.nextafter(1.0, math.inf)]
    assert above.reference == [0.0, 1.0, 0.0] and above.current == [0.0, 0.5, 0.5]
    assert above.value == pytest.approx(float(jensenshannon([0, 1, 0], [0, 0.5, 0.5], base=2)))
    assert compare_numeric([1.0] * 50, [0.0] * 50).severity == Severity.CRITICAL


def test_wasserstein_is_scipy_s_normalised_by_the_reference_standard_deviation():
    reference, current = normal(11, sd=3.0), normal(12, mean=1.5, sd=3.0)
    result = wasserstein(reference, current)
    assert result.value == pytest.approx(float(wasserstein_distance(reference, current)), abs=1e-12)
    assert result.scale == pytest.approx(float(np.std(reference, ddof=1)))
    assert result.normalised == pytest.approx(result.value / result.scale)
    assert result.normalised == pytest.approx(0.5, abs=0.1)  # a 1.5 shift of a 3-sd feature


def test_chi_square_is_scipy_chi2_contingency_with_unseen_categories_pooled():
    reference = ["a"] * 500 + ["b"] * 500
    current = ["a"] * 400 + ["b"] * 500 + ["c"] * 60 + ["d"] * 40
    feature = compare_categorical(reference, current)
    chi = feature.result("chi_square")
    expected = chi2_contingency([[500, 500, 0], [400, 500, 100]], correction=False)
    assert chi.value == pytest.approx(float(expected.statistic)) and chi.p_value == pytest.approx(expected.pvalue)
    assert chi.dof == 2 and chi.unseen == ["c", "d"] and chi.unseen_count == 100
    histogram = feature.result("js_distance")
    assert histogram.categories == ["a", "b", UNSEEN]
    assert histogram.current == [0.4, 0.5, 0.1] and histogram.reference == [0.5, 0.5, 0.0]
    assert histogram.value == pytest.approx(float(jensenshannon([0.5, 0.5, 0], [0.4, 0.5, 0.1], base=2)))


def test_reference_categories_beyond_the_limit_pool_into_other():
    reference = ["a"] * 300 + ["b"] * 200 + ["c"] * 100 + ["d"] * 50
    current = ["a"] * 300 + ["b"] * 200 + ["c"] * 50 + ["d"] * 100
    result = compare_categorical(reference, current, DriftConfig(max_categories=2)).result("psi")
    assert result.categories == ["a", "b", OTHER]
    assert result.reference == result.current  # c and d together did not move
    assert result.value == 0.0


def test_drift_free_data_alarms_in_under_one_percent_of_seeds():
    """An alarm: a feature whose worst severity over its algorithms (numeric:
    PSI, KL, JS, KS, Wasserstein; categorical: chi-square, PSI, JS) is medium
    or above, at the default thresholds. 300 seeds each of a normal, a skewed
    (exponential) and a categorical feature, reference and current 1000 draws
    each from the same distribution."""
    probabilities = [0.4, 0.3, 0.15, 0.1, 0.05]
    alarms = {"normal": 0, "exponential": 0, "categorical": 0}
    seeds = range(300)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        drawn = {
            "normal": compare_numeric(rng.normal(size=1000), rng.normal(size=1000)),
            "exponential": compare_numeric(rng.exponential(size=1000), rng.exponential(size=1000)),
            "categorical": compare_categorical(rng.choice(5, 1000, p=probabilities).tolist(),
                                               rng.choice(5, 1000, p=probabilities).tolist()),
        }
        for kind, feature in drawn.items():
            alarms[kind] += feature.severity.rank >= Severity.MEDIUM.rank
    assert all(count / len(seeds) < 0.01 for count in alarms.values()), alarms


# ---------------------------------------------------------------- severity


def test_worst_severity_aggregates_over_algorithms_and_over_features():
    drifted = compare_numeric(normal(13), normal(14, mean=2.0))
    calm = compare_numeric(normal(15), normal(16))
    assert worst([Severity.LOW, Severity.HIGH, Severity.NONE]) == Severity.HIGH
    assert worst([]) == Severity.NONE
    assert monitor_severity([calm, drifted]) == Severity.CRITICAL
    assert monitor_severity([calm]) == calm.severity == Severity.NONE


def test_a_large_effect_without_evidence_stays_mild_and_thresholds_are_configurable():
    # 30 values each, shifted half an sd: PSI is large but the test cannot rule out noise.
    reference, current = normal(17, n=30), normal(18, mean=0.5, n=30)
    result = psi(reference, current)
    assert result.value > DriftConfig().psi.medium and result.p_value > 0.001
    assert result.severity.rank < Severity.MEDIUM.rank
    strict = DriftConfig(ks=EffectThresholds(0.01, 0.02, 0.03, 0.04))
    shifted = normal(19), normal(20, mean=0.3)
    assert ks_test(*shifted).severity == Severity.MEDIUM
    assert ks_test(*shifted, strict).severity == Severity.CRITICAL
    with pytest.raises(ValueError, match="must not decrease"):
        EffectThresholds(0.2, 0.1, 0.3, 0.4)


def test_results_are_json():
    feature = compare_categorical(["a", "b"] * 100, ["a", "c"] * 100)
    decoded = json.loads(json.dumps(feature.to_dict(), allow_nan=False))
    assert decoded["severity"] == feature.severity.value
    assert decoded["results"][0]["unseen"] == ["c"]
    numeric = json.loads(json.dumps(compare_numeric([1.0] * 40, [2.0] * 40).to_dict(), allow_nan=False))
    assert numeric["severity"] == "critical"


# ---------------------------------------------------------------- bad input


def test_empty_and_too_small_samples_are_insufficient_data_not_a_number():
    for reference, current in (([], []), (normal(21), []), (normal(22, n=29), normal(23))):
        feature = compare_numeric(reference, current)
        assert [result.insufficient_data for result in feature.results] == [True] * 5
        assert all(result.value is None and result.severity == Severity.NONE for result in feature.results)
        assert "insufficient data" in (feature.results[0].note or "")
    assert compare_categorical(["a"] * 10, ["a"] * 100).result("chi_square").insufficient_data
    assert not compare_numeric(normal(24, n=30), normal(25, n=30)).results[0].insufficient_data


def test_nan_inf_and_none_are_dropped_and_counted():
    clean = normal(26)
    dirty = np.concatenate([clean, [np.nan, np.inf, -np.inf]])
    feature = compare_numeric(dirty, list(clean) + [None])
    assert (feature.reference_dropped, feature.current_dropped) == (3, 1)
    assert feature.result("ks").value == 0.0 and feature.result("ks").reference_size == 1000
    only_nan = compare_numeric([math.nan] * 100, clean)
    assert only_nan.reference_dropped == 100 and only_nan.result("psi").insufficient_data
    categorical = compare_categorical(["a", None, math.nan] * 20, ["a"] * 40)
    assert categorical.reference_dropped == 40 and categorical.result("chi_square").insufficient_data


def test_a_category_never_seen_in_the_reference_is_reported_and_drifts():
    feature = compare_categorical(["a", "b"] * 500, ["a", "b"] * 450 + ["new"] * 100)
    chi = feature.result("chi_square")
    assert chi.unseen == ["new"] and chi.unseen_count == 100
    assert math.isfinite(feature.result("psi").value) and feature.severity.rank >= Severity.MEDIUM.rank


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        (["1.5", 2.0] * 20, "not a number at index 0: '1.5'"),
        ([1.0, "x"] * 20, "not a number at index 1: 'x'"),
        ([True, False] * 20, "booleans are not numeric"),
        ([[1.0, 2.0]] * 40, r"shape \(40, 2\)"),
        ("12345", "expected a sequence"),
        ([1.0, {"a": 1}] * 20, "not a number at index 1"),
    ],
)
def test_numeric_features_refuse_values_of_the_wrong_type(reference, message):
    with pytest.raises(DriftInputError, match=message):
        compare_numeric(reference, normal(27))


def test_categorical_features_refuse_mixed_or_unusable_labels():
    with pytest.raises(DriftInputError, match="mixed category types: 'a' at index 0 is str, 1 at index 1 is int"):
        compare_categorical(["a", 1] * 20, ["a"] * 40)
    with pytest.raises(DriftInputError, match="reference categories are int, current ones str"):
        compare_categorical([1, 2] * 20, ["1", "2"] * 20)
    with pytest.raises(DriftInputError, match="index 0 is 2.5"):
        compare_categorical([2.5] * 40, [2.5] * 40)
    assert issubclass(DriftInputError, ValueError)


# ---------------------------------------------------------------- windows


def test_fixed_window_compares_the_frozen_reference_with_the_latest_values():
    window = FixedWindow(reference=[100, 101], size=3)
    window.add_many(range(2))
    assert window.pair() is None  # current not full yet
    window.add_many(range(2, 10))
    pair = window.pair()
    assert pair is not None and (pair.reference, pair.current, pair.end) == ([100, 101], [7, 8, 9], 10)


def test_sliding_window_moves_by_one_value():
    window = SlidingWindow(size=3)
    window.add_many(range(5))
    assert window.pair() is None
    window.add(5)
    first = window.pair()
    assert first is not None and (first.reference, first.current, first.end) == ([0, 1, 2], [3, 4, 5], 6)
    window.add(6)
    second = window.pair()
    assert second is not None and (second.reference, second.current, second.end) == ([1, 2, 3], [4, 5, 6], 7)


def test_tumbling_window_compares_each_closed_window_with_the_one_before():
    window = TumblingWindow(size=3)
    closed = window.add_many(range(10))
    assert [(pair.reference, pair.current, pair.end) for pair in closed] == [
        ([0, 1, 2], [3, 4, 5], 6),
        ([3, 4, 5], [6, 7, 8], 9),
    ]
    assert window.pair() == closed[-1]
    assert window.add(10) is None and window.add(11) is not None  # 9, 10, 11 closes the next one


def test_windows_hold_bounded_memory():
    stream = range(100_000)
    fixed, sliding, tumbling = FixedWindow(range(50), size=100), SlidingWindow(size=100), TumblingWindow(size=100)
    for window in (fixed, sliding, tumbling):
        window.add_many(stream)
        assert window.seen == 100_000
    assert fixed.held == 150 and sliding.held == 200 and tumbling.held <= 300
    assert sliding.pair().current == list(range(99_900, 100_000))  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="positive int"):
        SlidingWindow(size=0)


def stream_with_a_change(seed: int, at: int = 2000, after: int = 1000, shift: float = 1.0) -> list[float]:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, at), rng.normal(shift, 1, after)]).tolist()


def test_adwin_change_points_are_river_s_own():
    stream = stream_with_a_change(28, at=1500, shift=0.8) + stream_with_a_change(29, at=500, shift=-0.5)
    direct, adwin = [], ADWIN()
    for position, value in enumerate(stream):
        adwin.update(value)
        if adwin.drift_detected:
            direct.append(position)
    detector = AdwinDetector()
    assert detector.add_many(stream) == direct == detector.change_points
    assert len(direct) >= 2


def test_adwin_finds_a_planted_change_within_a_bounded_delay():
    for seed in range(5):
        detector = AdwinDetector()
        points = detector.add_many(stream_with_a_change(seed, at=2000, shift=1.0))
        assert points, seed
        assert 2000 <= points[0] < 2000 + 100, (seed, points)  # clock 32: found within a few checks


def test_adwin_skips_nan_but_keeps_positions_and_refuses_non_numbers():
    stream = stream_with_a_change(30)
    clean = AdwinDetector().add_many(stream)
    detector = AdwinDetector()
    with_gaps = [math.nan, *stream[:1000], None, *stream[1000:]]
    # The same values reach river; a position moves by one for each gap before it.
    assert detector.add_many(with_gaps) == [point + (1 if point < 1000 else 2) for point in clean]
    assert detector.dropped == 2 and detector.seen == len(with_gaps)
    with pytest.raises(DriftInputError, match="ADWIN takes numbers; position 3002 is 'x'"):
        detector.add("x")
