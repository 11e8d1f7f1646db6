"""How far a sample of embedding vectors has moved from its reference sample:
a distance on a projection, reported like any feature.

Method. Principal components of the two samples pooled (k = at most 10, and
no more than the data span), both samples projected onto them, and on each
component scipy's two-sample Kolmogorov-Smirnov test and Wasserstein
distance. Two results, graded like the numeric ones (measures.py):

    ks           the largest KS statistic over the components, against the ks
                 effect thresholds
    wasserstein  the largest Wasserstein distance over the components, in the
                 reference's standard deviations along that component, against
                 the wasserstein effect thresholds

Both are gated by one p-value: the smallest per-component KS p-value times k
(Bonferroni, capped at 1), so that testing k directions does not multiply the
false alarms. Each result lists every component's figures (ComponentDrift),
so a report shows which direction moved and by how much. When clusters are
well apart along a component, its KS statistic is about the share of vectors
that moved between them (a little less where they overlap), so the ks
thresholds read as shares: 12% medium, 20% high, 40% critical.

Why the pooled samples and not the reference alone. Principal components
fitted on the reference overfit it: in 384 dimensions with 1000 reference
vectors of pure noise, the reference's spread along its own top components is
about twice that of any other sample, and every drift-free comparison was
critical. Components fitted on the pooled samples treat both alike, so with no
drift the projected values of the two samples are exchangeable and the KS
p-values hold (false alarms: see tests/test_drift_embedding.py). They also see
a new cluster that only the current sample has; components of the reference
alone can be blind to it. The cost: the components are recomputed each time
and describe the pair compared, not the reference alone.

It sees what moves along the main directions of variation: a cluster shift,
a new cluster, a change of mix, a shift of the mean larger than the spread
across the other directions. A small shift along a direction of little
variance hides in the noise (a domain classifier would be the next step).

Cost. Up to 512 dimensions the components are the top eigenvectors of the
pooled samples' d x d scatter matrix (scipy.linalg.eigh): the same axes as
numpy's SVD of the centred data, six times faster at 10,000 x 384 (46 ms
against 306 ms on one core). Wider vectors get them by randomised subspace
iteration (a few passes over the data; it depends on the samples only
through their scatter matrix, so it treats them alike too), and the result's
note says so. Measured on one core of the development machine, reference and
current 5000 vectors each: 75 ms at 384 dimensions (19 ms at 1000 a side),
150 ms at 768, 190 ms at 1024, 0.7 s at 4096. A monitor's whole evaluation
of a full 5000-vector sliding window of 384 dimensions: 79 ms.

Bad input never crashes: a vector holding NaN, inf or None, and a None in
place of a vector, is dropped and counted; fewer than min_samples vectors
left on either side gives results marked insufficient_data; a vector of the
wrong type or of another dimension than the first raises DriftInputError
naming it. Samples without any variance (every vector the same on both
sides) have no component: both results are none, value 0, with a note.
A constant reference against a current sample that varies is compared along
the directions of the current's spread (the Wasserstein distance is then
scaled by the pooled standard deviation, as for a constant numeric feature).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.linalg import eigh

from models.drift.measures import (
    DEFAULT_CONFIG,
    DriftConfig,
    DriftInputError,
    DriftResult,
    FeatureDrift,
    Severity,
    _insufficient,
    _ks,
    _milder,
    _shortage,
    _wasserstein,
)

MAX_COMPONENTS = 10  # directions compared: enough for the main clusters, few enough for Bonferroni
# Wider vectors get their components by randomised subspace iteration, which
# never forms the d x d scatter matrix (4096 x 4096 would take seconds).
EXACT_UP_TO = 512
OVERSAMPLING = 10  # extra directions the iteration carries, for accuracy
SUBSPACE_ITERATIONS = 4
SUBSPACE_SEED = 20_240_801  # fixed: the same vectors always get the same components
# Components carrying less than this share of the largest one's variance are rounding noise.
RELATIVE_VARIANCE_FLOOR = 1e-10
TEST = "ks_2samp per principal component, Bonferroni"


@dataclass(frozen=True)
class ComponentDrift:
    """One principal component's figures. component 0 has the most variance."""

    component: int
    explained_variance_ratio: float  # its share of the pooled samples' variance
    ks_statistic: float
    ks_p_value: float  # uncorrected
    wasserstein: float  # in projection units
    wasserstein_normalised: float  # wasserstein / scale
    scale: float  # the reference's standard deviation along the component (pooled when it has none)


@dataclass(frozen=True, kw_only=True)
class ProjectionResult(DriftResult):
    """ks or wasserstein over the principal components. value is the worst
    component's figure (wasserstein: normalised; raw and scale are that
    component's distance and reference standard deviation); p_value is the
    Bonferroni-corrected smallest KS p-value that gated the severity."""

    dimension: int | None = None
    components: list[ComponentDrift] = field(default_factory=list)
    explained_variance: float | None = None  # the share of the pooled variance the components keep
    worst_component: int | None = None
    raw: float | None = None
    scale: float | None = None


@dataclass(frozen=True)
class Projection:
    """Both samples' coordinates on the pooled principal components."""

    reference: np.ndarray  # (n_reference, k)
    current: np.ndarray  # (n_current, k)
    explained: np.ndarray  # (k,) each component's share of the pooled variance
    randomised: bool = False  # the components came from randomised subspace iteration


# ---------------------------------------------------------------- input


def clean_embeddings(values: Any, side: str = "sample", dimension: int | None = None) -> tuple[np.ndarray, int]:
    """(the usable vectors as an (n, d) float64 array, how many were dropped).
    A None in place of a vector, or a vector holding NaN, inf or None, is
    dropped. Every vector must have the first one's dimension (or
    `dimension`, when given). d is 0 when the sample has no vector at all."""
    if isinstance(values, str | bytes | dict) or values is None:
        raise DriftInputError(f"{side}: expected a sequence of vectors, got {type(values).__name__}")
    if isinstance(values, np.ndarray) and values.ndim == 2 and values.dtype.kind in "iuf" and values.shape[1]:
        matrix, dropped = np.asarray(values, dtype=np.float64), 0
    else:
        items = list(values)
        present = [item for item in items if item is not None]
        matrix, dropped = _stacked(present, side), len(items) - len(present)
    if len(matrix) and dimension is not None and matrix.shape[1] != dimension:
        raise DriftInputError(f"{side}: vector 0 has {matrix.shape[1]} numbers, the reference's vectors {dimension}")
    finite = np.isfinite(matrix).all(axis=1)
    if finite.all():  # the usual case: no copy (a window of 5000 x 4096 is 160 MB)
        return matrix, dropped
    return matrix[finite], dropped + int(len(matrix) - np.count_nonzero(finite))


def _stacked(vectors: list[Any], side: str) -> np.ndarray:
    """The vectors as one float64 matrix; NaN marks a number that was None."""
    if not vectors:
        return np.empty((0, 0))
    try:
        matrix = np.asarray(vectors)
    except ValueError:  # ragged: found below
        matrix = None
    if matrix is not None and matrix.ndim == 2 and matrix.dtype.kind in "iuf" and matrix.shape[1] > 0:
        return np.asarray(matrix, dtype=np.float64)
    # Not a plain numeric matrix: look at each vector, to name the first bad one.
    rows = [_vector(vector, side, index) for index, vector in enumerate(vectors)]
    for index, row in enumerate(rows):
        if len(row) != len(rows[0]):
            raise DriftInputError(f"{side}: vector {index} has {len(row)} numbers, vector 0 has {len(rows[0])}")
    return np.vstack(rows)


def _vector(vector: Any, side: str, index: int) -> np.ndarray:
    where = f"{side}: vector {index}"
    if isinstance(vector, np.ndarray) and vector.ndim == 1:
        if vector.dtype.kind in "iuf" and vector.size:
            return vector.astype(np.float64)
        items = vector.tolist()
    elif isinstance(vector, list | tuple):
        items = list(vector)
    else:
        raise DriftInputError(f"{where} is not a list of numbers: {_shown(vector)} ({type(vector).__name__})")
    if not items:
        raise DriftInputError(f"{where} is empty: a vector needs at least one number")
    return np.array([_number(item, where, position) for position, item in enumerate(items)], dtype=np.float64)


def _number(item: Any, where: str, position: int) -> float:
    if item is None:
        return math.nan  # the vector is dropped, like one holding a NaN
    if isinstance(item, bool | np.bool_) or not isinstance(item, numbers.Real):
        raise DriftInputError(f"{where}: element {position} is not a number: {_shown(item)} ({type(item).__name__})")
    try:
        return float(item)
    except OverflowError:
        raise DriftInputError(f"{where}: element {position} is out of the float range") from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- projection


def project(reference: np.ndarray, current: np.ndarray, max_components: int = MAX_COMPONENTS) -> Projection:
    """Both samples on the principal components of the pooled samples: at
    most max_components, n - 1 and the dimension, and only those with
    variance (none when every vector is the same)."""
    centred = np.vstack([reference, current])  # a new array: centred in place below
    if not np.any(centred != centred[0]):  # one vector repeated: no direction to look along
        return Projection(reference=np.empty((len(reference), 0)), current=np.empty((len(current), 0)),
                          explained=np.empty(0))
    centred -= centred.mean(axis=0)
    k = min(max_components, centred.shape[1], len(centred) - 1)
    randomised = centred.shape[1] > EXACT_UP_TO
    variances, axes = (_top_axes_randomised if randomised else _top_axes)(centred, k)
    k = int(np.count_nonzero(variances > variances[0] * RELATIVE_VARIANCE_FLOOR))
    coordinates = centred @ axes[:, :k]
    return Projection(reference=coordinates[:len(reference)], current=coordinates[len(reference):],
                      explained=variances[:k] / np.einsum("ij,ij->", centred, centred), randomised=randomised)


def _top_axes(centred: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(the k largest variances, largest first, and their axes as columns):
    the top right singular vectors of the centred data, as the top
    eigenvectors of its d x d scatter matrix."""
    dimension = centred.shape[1]
    variances, axes = eigh(centred.T @ centred, subset_by_index=[dimension - k, dimension - 1])
    return variances[::-1], axes[:, ::-1]


def _top_axes_randomised(centred: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """_top_axes by randomised subspace iteration (Halko, Martinsson and Tropp
    2011): a few passes over the data instead of a d x d matrix. It depends on
    the samples only through their scatter matrix, so it treats them alike."""
    width = min(k + OVERSAMPLING, centred.shape[1])
    basis = np.random.default_rng(SUBSPACE_SEED).standard_normal((centred.shape[1], width))
    for _ in range(SUBSPACE_ITERATIONS):
        basis, _ = np.linalg.qr(centred.T @ (centred @ basis))
    variances, rotation = eigh(basis.T @ (centred.T @ (centred @ basis)))
    return variances[::-1][:k], (basis @ rotation)[:, ::-1][:, :k]


# ---------------------------------------------------------------- drift


def compare_embeddings(reference: Any, current: Any, config: DriftConfig = DEFAULT_CONFIG) -> FeatureDrift:
    """KS and Wasserstein on the principal components of two samples of vectors."""
    ref, ref_dropped = clean_embeddings(reference, "reference")
    cur, cur_dropped = clean_embeddings(current, "current", dimension=ref.shape[1] or None)
    dimension = ref.shape[1] or cur.shape[1] or None
    shortage = _shortage(len(ref), len(cur), config)
    if shortage:
        results = [_insufficient(ProjectionResult, name, shortage, len(ref), len(cur))
                   for name in ("ks", "wasserstein")]
    else:
        results = _projected_results(project(ref, cur), config, dimension)
    return FeatureDrift(kind="embedding", results=results, reference_dropped=ref_dropped,
                        current_dropped=cur_dropped)


def _projected_results(projection: Projection, config: DriftConfig, dimension: int | None) -> list[DriftResult]:
    sizes = {"reference_size": len(projection.reference), "current_size": len(projection.current)}
    common = {"test": TEST, "dimension": dimension, **sizes}
    components = [_component(projection, index, config) for index in range(len(projection.explained))]
    if not components:
        note = "no variance: every vector is the same in both samples"
        return [ProjectionResult(name=name, value=0.0, severity=Severity.NONE, p_value=1.0, note=note,
                                 explained_variance=0.0, **common) for name in ("ks", "wasserstein")]
    p_value = min(1.0, len(components) * min(component.ks_p_value for component in components))
    significance = config.significance.grade(p_value)
    common.update(p_value=p_value, components=components, explained_variance=float(projection.explained.sum()),
                  note=_method_note(projection, dimension))
    ks = max(components, key=lambda component: component.ks_statistic)
    moved = max(components, key=lambda component: component.wasserstein_normalised)
    return [
        ProjectionResult(name="ks", value=ks.ks_statistic, worst_component=ks.component,
                         severity=_milder(config.ks.grade(ks.ks_statistic), significance), **common),
        ProjectionResult(name="wasserstein", value=moved.wasserstein_normalised, worst_component=moved.component,
                         raw=moved.wasserstein, scale=moved.scale,
                         severity=_milder(config.wasserstein.grade(moved.wasserstein_normalised), significance),
                         **common),
    ]


def _component(projection: Projection, index: int, config: DriftConfig) -> ComponentDrift:
    ref, cur = projection.reference[:, index], projection.current[:, index]
    ks = _ks(ref, cur, config)
    distance = _wasserstein(ref, cur, config, ks.p_value)
    return ComponentDrift(component=index, explained_variance_ratio=float(projection.explained[index]),
                          ks_statistic=float(ks.value), ks_p_value=float(ks.p_value),
                          wasserstein=float(distance.value), wasserstein_normalised=float(distance.normalised),
                          scale=float(distance.scale))


def _method_note(projection: Projection, dimension: int | None) -> str | None:
    if not projection.randomised:
        return None
    return (f"the principal components of these {dimension}-dimensional vectors come from randomised "
            "subspace iteration")
