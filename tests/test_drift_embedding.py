"""Embedding drift (models/drift/embedding.py) and embedding features in
monitors (models/drift/monitors.py), without a process: planted cluster
shifts are found with the expected severity, drift-free vectors rarely
alarm, every number is scipy's on the same projection, bad input gets a clear
error or a marked result, and a monitor validates, windows and replays
vectors."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import pytest
from scipy.stats import ks_2samp, wasserstein_distance

from core.errors import ServiceError
from models.drift.embedding import EXACT_UP_TO, clean_embeddings, compare_embeddings, project
from models.drift.measures import DriftInputError, Severity
from models.drift.monitors import (
    ALL_ALGORITHMS,
    MAX_DIMENSION,
    MAX_EMBEDDING_WINDOW,
    FeatureSpec,
    Monitor,
    MonitorConfig,
    WindowSpec,
    check_spec,
    clean_value,
    window_row,
)


def cluster_centres(dim: int, count: int = 3, apart: float = 6.0, seed: int = 0) -> np.ndarray:
    """count centres, the first two `apart` noise standard deviations from each other."""
    centres = np.random.default_rng(seed).normal(size=(count, dim))
    return centres * apart / np.linalg.norm(centres[0] - centres[1])


def clusters(rng: np.random.Generator, n: int, shares: list[float], centres: np.ndarray) -> np.ndarray:
    """n vectors: each near one of the centres (unit normal noise), drawn with the given shares."""
    which = rng.choice(len(shares), size=n, p=shares)
    return centres[which] + rng.normal(size=(n, centres.shape[1]))


def at_least(severity: Severity, floor: Severity) -> bool:
    return severity.rank >= floor.rank


# ---------------------------------------------------------------- planted drift


def test_half_the_vectors_moving_to_a_new_cluster_is_critical():
    rng = np.random.default_rng(1)
    centres = cluster_centres(384)
    reference = clusters(rng, 1000, [1, 0, 0], centres)
    current = clusters(rng, 1000, [0.5, 0.5, 0], centres)
    feature = compare_embeddings(reference, current)
    assert feature.kind == "embedding" and feature.severity == Severity.CRITICAL
    ks, distance = feature.result("ks"), feature.result("wasserstein")
    assert ks.severity == distance.severity == Severity.CRITICAL
    # Clusters far apart along a component: its KS statistic is about the share that moved.
    assert ks.value == pytest.approx(0.5, abs=0.06) and ks.worst_component == 0
    # The direction between the clusters, not one of noise, is the first component.
    assert ks.components[0].explained_variance_ratio > 2 * ks.components[1].explained_variance_ratio
    assert ks.p_value < 1e-50
    assert ks.dimension == 384 and len(ks.components) == 10 and ks.test.startswith("ks_2samp")


def test_a_small_change_of_mix_is_graded_lower_than_a_large_one():
    centres = cluster_centres(32)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        reference = clusters(rng, 1000, [0.7, 0.3, 0], centres)
        small = compare_embeddings(reference, clusters(rng, 1000, [0.6, 0.4, 0], centres))
        large = compare_embeddings(reference, clusters(rng, 1000, [0.3, 0.7, 0], centres))
        assert small.severity.rank < Severity.MEDIUM.rank, (seed, small.severity)
        assert at_least(large.severity, Severity.HIGH), (seed, large.severity)
        assert large.result("ks").value == pytest.approx(0.4, abs=0.07)


def test_a_tenth_of_the_vectors_in_a_new_cluster_is_found():
    rng = np.random.default_rng(4)
    centres = cluster_centres(64)
    feature = compare_embeddings(clusters(rng, 2000, [1, 0, 0], centres), clusters(rng, 2000, [0.9, 0.1, 0], centres))
    # Like a new category with 10% of the traffic (PSI about 0.7): the far cluster moves the distance most.
    assert at_least(feature.severity, Severity.MEDIUM) and feature.result("ks").p_value < 1e-4


def test_wide_vectors_get_randomised_components_that_find_the_same_drift():
    rng = np.random.default_rng(5)
    centres = cluster_centres(1024)
    reference = clusters(rng, 500, [1, 0, 0], centres)
    current = clusters(rng, 500, [0.5, 0.5, 0], centres)
    drifted = compare_embeddings(reference, current)
    calm = compare_embeddings(reference, clusters(rng, 500, [1, 0, 0], centres))
    assert drifted.severity == Severity.CRITICAL and calm.severity.rank < Severity.MEDIUM.rank
    assert "randomised subspace iteration" in (drifted.result("ks").note or "")
    assert drifted.result("ks").dimension == 1024 > EXACT_UP_TO
    # The direction between the clusters stands out: the iteration finds it as the SVD does.
    pooled = np.vstack([reference, current])
    _, _, axes = np.linalg.svd(pooled - pooled.mean(axis=0), full_matrices=False)
    found = project(reference, current)
    assert found.randomised and found.explained.shape == (10,)
    exact = (pooled - pooled.mean(axis=0)) @ axes[0]
    assert abs(np.corrcoef(exact, np.concatenate([found.reference[:, 0], found.current[:, 0]]))[0, 1]) > 0.999


# ---------------------------------------------------------------- the numbers themselves


def test_every_figure_is_scipy_s_on_the_principal_components_of_the_pooled_samples():
    rng = np.random.default_rng(6)
    centres = cluster_centres(48)
    reference = clusters(rng, 700, [0.5, 0.3, 0.2], centres)
    current = clusters(rng, 600, [0.4, 0.3, 0.3], centres)
    feature = compare_embeddings(reference, current)

    # The projection, done again with numpy's SVD of the centred pooled samples.
    pooled = np.vstack([reference, current])
    centred = pooled - pooled.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    coordinates = centred @ axes[:10].T
    ref, cur = coordinates[:700], coordinates[700:]
    ks = [ks_2samp(ref[:, i], cur[:, i]) for i in range(10)]
    distances = [wasserstein_distance(ref[:, i], cur[:, i]) for i in range(10)]
    scales = [np.std(ref[:, i], ddof=1) for i in range(10)]

    result = feature.result("ks")
    components = result.components
    assert [c.component for c in components] == list(range(10))
    # A component's sign is arbitrary: KS and Wasserstein do not depend on it.
    assert [c.ks_statistic for c in components] == pytest.approx([float(t.statistic) for t in ks], abs=1e-12)
    assert [c.ks_p_value for c in components] == pytest.approx([float(t.pvalue) for t in ks], rel=1e-9)
    assert [c.wasserstein for c in components] == pytest.approx(distances, rel=1e-9)
    assert [c.scale for c in components] == pytest.approx(scales, rel=1e-9)
    ratios = singular[:10] ** 2 / np.sum(singular**2)
    assert [c.explained_variance_ratio for c in components] == pytest.approx(ratios.tolist(), rel=1e-9)
    assert result.explained_variance == pytest.approx(float(ratios.sum()), rel=1e-9)

    bonferroni = min(1.0, 10 * min(float(t.pvalue) for t in ks))
    assert result.value == pytest.approx(max(float(t.statistic) for t in ks), abs=1e-12)
    assert result.p_value == pytest.approx(bonferroni, rel=1e-9)
    normalised = [d / s for d, s in zip(distances, scales, strict=True)]
    worst = int(np.argmax(normalised))
    moved = feature.result("wasserstein")
    assert moved.value == pytest.approx(normalised[worst], rel=1e-9) and moved.worst_component == worst
    assert moved.raw == pytest.approx(distances[worst], rel=1e-9)
    assert moved.scale == pytest.approx(scales[worst], rel=1e-9)
    assert moved.p_value == result.p_value  # the same KS gate


def test_project_keeps_no_more_components_than_the_data_span():
    rng = np.random.default_rng(7)
    flat = np.zeros((200, 50))
    flat[:, :3] = rng.normal(size=(200, 3))  # 50 dimensions, three of them used
    projection = project(flat[:100], flat[100:])
    assert projection.reference.shape == (100, 3) and projection.current.shape == (100, 3)
    assert projection.explained.sum() == pytest.approx(1.0)
    assert project(flat[:100], flat[100:], max_components=2).explained.shape == (2,)


# ---------------------------------------------------------------- false alarms


def test_drift_free_embeddings_alarm_in_under_one_percent_of_seeds():
    """An alarm: medium or above, at the default thresholds. 200 seeds each of
    pure noise in 128 dimensions, 300 vectors a side (where components fitted
    on the reference alone alarmed in a fifth of the seeds, and in 384
    dimensions with 1000 a side in all of them), and of a four-cluster mixture
    in 32 dimensions, 500 a side; reference and current from one distribution."""
    centres = cluster_centres(32, count=4, apart=4.0)
    seeds = range(200)
    alarms = {"noise_128": 0, "clusters_32": 0}
    began = time.monotonic()
    for seed in seeds:
        rng = np.random.default_rng(seed)
        drawn = {
            "noise_128": compare_embeddings(rng.normal(size=(300, 128)), rng.normal(size=(300, 128))),
            "clusters_32": compare_embeddings(clusters(rng, 500, [0.4, 0.3, 0.2, 0.1], centres),
                                              clusters(rng, 500, [0.4, 0.3, 0.2, 0.1], centres)),
        }
        for name, feature in drawn.items():
            alarms[name] += at_least(feature.severity, Severity.MEDIUM)
    print(f"\nembedding false alarms over {len(seeds)} seeds: {alarms} ({time.monotonic() - began:.1f} s)")
    assert all(count < 0.01 * len(seeds) for count in alarms.values()), alarms


# ---------------------------------------------------------------- bad input


def test_vectors_holding_nan_inf_or_none_are_dropped_and_counted():
    rng = np.random.default_rng(8)
    reference = rng.normal(size=(100, 8)).tolist()
    current = rng.normal(size=(100, 8)).tolist()
    reference[3][2], reference[7][0] = math.nan, math.inf
    current[5][1] = None
    feature = compare_embeddings(reference + [None], current)
    assert (feature.reference_dropped, feature.current_dropped) == (3, 1)
    assert feature.result("ks").reference_size == 98 and feature.result("ks").current_size == 99
    matrix, dropped = clean_embeddings(np.array(reference), "reference")
    assert matrix.shape == (98, 8) and dropped == 2


def test_too_few_vectors_are_insufficient_data():
    rng = np.random.default_rng(9)
    for reference, current in ((rng.normal(size=(29, 4)), rng.normal(size=(100, 4))), ([], []),
                               ([[math.nan] * 4] * 100, rng.normal(size=(100, 4)))):
        feature = compare_embeddings(reference, current)
        assert [result.insufficient_data for result in feature.results] == [True, True]
        assert all(result.value is None and result.severity == Severity.NONE for result in feature.results)
        assert "insufficient data" in (feature.results[0].note or "")


def test_samples_without_variance_do_not_crash():
    same = compare_embeddings([[1.0, 2.0, 3.0]] * 50, [[1.0, 2.0, 3.0]] * 50)
    assert same.severity == Severity.NONE
    assert [(r.value, r.p_value) for r in same.results] == [(0.0, 1.0), (0.0, 1.0)]
    assert "no variance" in (same.result("ks").note or "") and same.result("ks").components == []
    moved = compare_embeddings([[1.0, 2.0, 3.0]] * 50, [[1.0, 2.0, 4.0]] * 50)
    assert moved.severity == Severity.CRITICAL and moved.result("ks").value == 1.0
    rng = np.random.default_rng(10)
    spread = compare_embeddings([[0.0] * 6] * 50, rng.normal(size=(50, 6)))  # a constant reference
    assert spread.severity == Severity.CRITICAL
    assert all(math.isfinite(r.value) for r in spread.results)
    assert spread.result("wasserstein").scale > 0  # the pooled standard deviation stands in


@pytest.mark.parametrize(
    ("reference", "current", "message"),
    [
        ([[1.0, 2.0]] * 3 + [[1.0, 2.0, 3.0]] + [[1.0, 2.0]] * 40, [[1.0, 2.0]] * 40,
         "reference: vector 3 has 3 numbers, vector 0 has 2"),
        ([[1.0, 2.0]] * 40, [[1.0, 2.0, 3.0]] * 40, "current: vector 0 has 3 numbers, the reference's vectors 2"),
        ([[1.0, "x"]] * 40, [[1.0, 2.0]] * 40, "reference: vector 0: element 1 is not a number: 'x'"),
        ([[1.0, 2.0]] * 40, [[True, False]] * 40, "current: vector 0: element 0 is not a number: True"),
        ([0.5, 1.5] * 20, [[1.0, 2.0]] * 40, r"reference: vector 0 is not a list of numbers: 0.5 \(float\)"),
        ([[1.0, 2.0]] * 40, [[1.0, [2.0]]] * 40, r"current: vector 0: element 1 is not a number: \[2.0\]"),
        ([[]] * 40, [[]] * 40, "reference: vector 0 is empty"),
        ("vectors", [[1.0]] * 40, "expected a sequence of vectors, got str"),
        ([[1.0, 2.0]] * 40, None, "current: expected a sequence of vectors, got NoneType"),
    ],
)
def test_vectors_of_the_wrong_type_or_dimension_raise_naming_the_culprit(reference, current, message):
    with pytest.raises(DriftInputError, match=message):
        compare_embeddings(reference, current)


def test_results_are_json_with_the_components():
    rng = np.random.default_rng(11)
    feature = compare_embeddings(rng.normal(size=(60, 5)), rng.normal(1.0, 1.0, size=(60, 5)))
    decoded = json.loads(json.dumps(feature.to_dict(), allow_nan=False))
    assert decoded["kind"] == "embedding" and decoded["severity"] == feature.severity.value
    assert len(decoded["results"][0]["components"]) == 5
    assert set(decoded["results"][1]["components"][0]) == {
        "component", "explained_variance_ratio", "ks_statistic", "ks_p_value", "wasserstein",
        "wasserstein_normalised", "scale"}


# ---------------------------------------------------------------- monitors


EMBEDDING = [FeatureSpec(name="prompt", kind="embedding")]


def monitor(window: WindowSpec, features: list[FeatureSpec] = EMBEDDING,
            algorithms: list[str] | None = None) -> Monitor:
    """A Monitor as the service makes one, after check_spec."""
    reference = check_spec(features, algorithms, window)
    return Monitor(MonitorConfig(
        id="mon_test", name="test", model=None, features=[feature.model_dump() for feature in features],
        algorithms=list(algorithms or ALL_ALGORITHMS), window=window_row(window), reference=reference,
        thresholds={}, alert_severity="medium", webhook=None, cooldown_seconds=300.0, created=0.0, updated=0.0,
    ))


def events(vectors: np.ndarray, name: str = "prompt") -> list[dict[str, Any]]:
    return [{name: vector} for vector in vectors.tolist()]


def ingest(target: Monitor, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the service does with a batch (but storing it): check, feed, evaluate."""
    cleaned, _, missing = target.check_events(batch)
    target.dropped = missing
    target.feed(cleaned)
    target.evaluate()
    return cleaned


def assert_400(error: pytest.ExceptionInfo[ServiceError], param: str, code: str) -> None:
    assert (error.value.status, error.value.param, error.value.code) == (400, param, code), str(error.value)


def test_a_sliding_monitor_finds_a_cluster_shift_and_reports_it_like_any_feature():
    rng = np.random.default_rng(12)
    centres = cluster_centres(32)
    watched = monitor(WindowSpec(kind="sliding", size=300), EMBEDDING + [FeatureSpec(name="x", kind="numeric")])
    calm = [{"prompt": vector, "x": float(x)}
            for vector, x in zip(clusters(rng, 600, [1, 0, 0], centres).tolist(), rng.normal(size=600), strict=True)]
    ingest(watched, calm)
    assert watched.evaluation.severity == Severity.NONE
    status = watched.status()["features"]["prompt"]
    assert status["ready"] and set(status["results"]) == {"ks", "wasserstein"}
    assert status["window"]["dimension"] == 32 and status["window"]["held"] == 600

    ingest(watched, [{"prompt": vector, "x": 0.0} for vector in clusters(rng, 300, [0.5, 0.5, 0], centres).tolist()])
    assert watched.evaluation.features["prompt"].severity == Severity.CRITICAL
    report = watched.report()
    numeric, embedding = report["features"]["x"], report["features"]["prompt"]
    assert set(embedding) == set(numeric)  # the same keys as any feature
    ks = next(result for result in embedding["drift"]["results"] if result["name"] == "ks")
    assert ks["components"][0]["ks_statistic"] == ks["value"] and "edges" not in ks
    json.dumps(report, allow_nan=False)  # what the service answers


def test_a_fixed_explicit_reference_of_vectors_works_and_fixes_the_dimension():
    rng = np.random.default_rng(13)
    centres = cluster_centres(16)
    window = WindowSpec(kind="fixed", size=200, reference={"prompt": clusters(rng, 400, [1, 0, 0], centres).tolist()})
    watched = monitor(window)
    assert watched.dimensions == {"prompt": 16}
    with pytest.raises(ServiceError) as wrong:
        watched.check_events([{"prompt": [0.0] * 8}])
    assert_400(wrong, "events.0.prompt", "dimension_mismatch")
    ingest(watched, events(clusters(rng, 200, [0.4, 0.6, 0], centres)))
    assert watched.evaluation.severity == Severity.CRITICAL
    assert watched.status()["features"]["prompt"]["window"]["reference"] == 400


def test_the_first_accepted_vector_fixes_the_dimension_and_a_mismatch_is_a_400():
    watched = monitor(WindowSpec(kind="sliding", size=50))
    with pytest.raises(ServiceError) as within:
        watched.check_events([{"prompt": [1.0, 2.0]}, {"prompt": None}, {"prompt": [1.0, 2.0, 3.0]}])
    assert_400(within, "events.2.prompt", "dimension_mismatch")
    assert watched.dimensions == {}  # a rejected batch fixes nothing
    ingest(watched, [{"prompt": [1.0, 2.0, 3.0]}])
    with pytest.raises(ServiceError) as later:
        watched.check_events([{"prompt": [1.0, 2.0, 3.0]}, {"prompt": [1.0, 2.0]}])
    assert_400(later, "events.1.prompt", "dimension_mismatch")
    assert "2 numbers, but this feature's have 3" in str(later.value)
    reference = {"prompt": [[1.0, 2.0]] * 40 + [[1.0]]}
    with pytest.raises(ServiceError) as in_reference:
        check_spec(EMBEDDING, None, WindowSpec(kind="fixed", size=50, reference=reference))
    assert_400(in_reference, "window.reference.prompt.40", "dimension_mismatch")


@pytest.mark.parametrize(
    ("value", "code", "param"),
    [
        ("a prompt", "kind_mismatch", "p"),
        (0.5, "kind_mismatch", "p"),
        (True, "kind_mismatch", "p"),
        ({"0": 1.0}, "invalid_value", "p"),
        ([], "invalid_value", "p"),
        ([0.0] * (MAX_DIMENSION + 1), "invalid_value", "p"),
        ([1.0, "2"], "invalid_value", "p.1"),
        ([1.0, True], "invalid_value", "p.1"),
        ([1.0, [2.0]], "invalid_value", "p.1"),
        ([10**400], "invalid_value", "p.0"),
    ],
)
def test_clean_value_refuses_what_is_not_an_embedding(value, code, param):
    with pytest.raises(ServiceError) as refused:
        clean_value(value, "embedding", "p")
    assert_400(refused, param, code)


def test_clean_value_drops_vectors_with_nan_and_keeps_json_floats():
    assert clean_value([1.0, math.nan], "embedding", "p") == (None, True)
    assert clean_value([1.0, None], "embedding", "p") == (None, True)
    assert clean_value([-math.inf, 1.0], "embedding", "p") == (None, True)
    assert clean_value(None, "embedding", "p") == (None, True)
    vector, dropped = clean_value([1, 2.5], "embedding", "p")
    assert (vector, dropped) == ([1.0, 2.5], False) and all(type(number) is float for number in vector)


def test_adwin_windows_and_oversized_windows_refuse_embedding_features():
    with pytest.raises(ServiceError) as adwin:
        check_spec(EMBEDDING, None, WindowSpec(kind="adwin", size=100))
    assert_400(adwin, "window.kind", "kind_mismatch")
    assert "'prompt' is embedding" in str(adwin.value)
    with pytest.raises(ServiceError) as large:
        check_spec(EMBEDDING, None, WindowSpec(kind="sliding", size=MAX_EMBEDDING_WINDOW + 1))
    assert_400(large, "window.size", "invalid_value")
    with pytest.raises(ServiceError) as reference_size:
        check_spec(EMBEDDING, None, WindowSpec(kind="fixed", size=100, reference_size=MAX_EMBEDDING_WINDOW + 1))
    assert_400(reference_size, "window.reference_size", "invalid_value")
    with pytest.raises(ServiceError) as reference:
        check_spec(EMBEDDING, None, WindowSpec(kind="fixed", size=100,
                                               reference={"prompt": [[1.0]] * (MAX_EMBEDDING_WINDOW + 1)}))
    assert_400(reference, "window.reference.prompt", "invalid_value")
    with pytest.raises(ServiceError) as algorithms:
        check_spec(EMBEDDING, ["psi", "chi_square"], WindowSpec(kind="sliding", size=100))
    assert_400(algorithms, "algorithms", "kind_mismatch")
    check_spec([FeatureSpec(name="x", kind="numeric")], None, WindowSpec(kind="sliding", size=MAX_EMBEDDING_WINDOW + 1))


def test_stored_vectors_are_json_and_a_replay_rebuilds_the_same_verdict():
    rng = np.random.default_rng(14)
    centres = cluster_centres(24)
    spec = WindowSpec(kind="fixed", size=100, reference_size=150)
    first = monitor(spec)
    stored = []
    for shares in ([1, 0, 0], [1, 0, 0], [0.7, 0.3, 0]):
        batch = events(clusters(rng, 100, shares, centres))
        batch[0]["prompt"][0] = math.nan  # dropped: stored as null
        stored += ingest(first, batch)
    assert first.config.reference is not None and first.dimensions == {"prompt": 24}
    # What the store writes (store._json refuses NaN), read back as the restart does.
    replayed_events = json.loads(json.dumps(stored, allow_nan=False))
    reference = json.loads(json.dumps(first.config.reference, allow_nan=False))
    second = Monitor(MonitorConfig(**{**first.config.__dict__, "reference": reference}))
    second.replay(replayed_events[-second.replay_count(300):], 300)
    second.dropped = dict(first.dropped)
    assert second.dimensions == {"prompt": 24}
    assert second.evaluate().severity == first.evaluation.severity
    assert second.status()["features"] == first.status()["features"]
