"""How far one feature's current sample has moved from its reference sample.

Numeric features get PSI, KL divergence and Jensen-Shannon distance on the
reference's quantile bins, the two-sample Kolmogorov-Smirnov test and the
Wasserstein distance; categorical features get a chi-square test, PSI and
Jensen-Shannon distance on the category proportions. scipy computes every
statistic; this module decides the bins, the handling of bad input and the
severity each number earns.

Severity. A distance alone over-alarms on small samples (two draws of 100 from
one distribution routinely reach PSI 0.1) and a p-value alone over-alarms on
large ones (with a million values a trivial difference is "significant"). So
every result is graded twice and keeps the milder grade: its effect size
against EffectThresholds, and the p-value of a test on the same data against
SignificanceThresholds. The KS test gates the KS statistic and the Wasserstein
distance; a chi-square homogeneity test on the same bins or categories gates
PSI, KL and JS; the categorical chi-square gates itself by Cramer's V.

Default effect thresholds line up across algorithms: each one sits where a
normal feature whose mean moves by about 0.2 (low), 0.3 (medium), 0.5 (high)
and 1 (critical) standard deviations lands. PSI's 0.1 and 0.25 are the
industry convention ("investigate", "act"), and they fall at 0.3 and 0.5 sd.

Bad input never crashes: NaN, inf and None are dropped and counted; a sample
with fewer than min_samples values left gets results marked insufficient_data;
values of the wrong type raise DriftInputError, naming the first culprit.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import chi2_contingency, entropy, ks_2samp, wasserstein_distance
from scipy.stats.contingency import association

# Labels of the pooled category buckets, as they appear in results.
UNSEEN = "<unseen>"  # current categories the reference never had
OTHER = "<other>"  # reference categories beyond max_categories


class DriftInputError(ValueError):
    """Values a drift statistic cannot use: wrong types or a wrong shape."""


class Severity(StrEnum):
    """How bad a drift is. A str for JSON; compare with rank, not <."""

    NONE = "none"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


def worst(severities: Iterable[Severity]) -> Severity:
    """The worst of severities; NONE when there are none."""
    return max(severities, key=lambda severity: severity.rank, default=Severity.NONE)


def _milder(effect: Severity, significance: Severity) -> Severity:
    """A result earns a severity only with both the effect and the evidence for it."""
    return min(effect, significance, key=lambda severity: severity.rank)


@dataclass(frozen=True)
class EffectThresholds:
    """The smallest effect size that earns each severity (higher is worse)."""

    low: float
    medium: float
    high: float
    critical: float

    def __post_init__(self) -> None:
        if not self.low <= self.medium <= self.high <= self.critical:
            raise ValueError(f"thresholds must not decrease from low to critical: {self}")

    def grade(self, effect: float) -> Severity:
        for severity, bound in self._bounds():
            if effect >= bound:
                return severity
        return Severity.NONE

    def _bounds(self) -> list[tuple[Severity, float]]:
        return [(Severity.CRITICAL, self.critical), (Severity.HIGH, self.high),
                (Severity.MEDIUM, self.medium), (Severity.LOW, self.low)]


@dataclass(frozen=True)
class SignificanceThresholds:
    """The p-value below which each severity can be reached (lower is worse)."""

    low: float = 0.01
    medium: float = 0.001
    high: float = 0.0001
    critical: float = 0.0001

    def __post_init__(self) -> None:
        if not self.low >= self.medium >= self.high >= self.critical:
            raise ValueError(f"p-value thresholds must not increase from low to critical: {self}")

    def grade(self, p_value: float) -> Severity:
        for severity, bound in [(Severity.CRITICAL, self.critical), (Severity.HIGH, self.high),
                                (Severity.MEDIUM, self.medium), (Severity.LOW, self.low)]:
            if p_value < bound:
                return severity
        return Severity.NONE


@dataclass(frozen=True)
class DriftConfig:
    """Bins, smoothing, sample floors and thresholds. The defaults are the
    documented ones (README.md); pass a changed copy to tune one feature."""

    bins: int = 10  # quantile bins of the reference for PSI, KL and JS
    epsilon: float = 1e-4  # the proportion an empty bin counts as, for PSI and KL
    min_samples: int = 30  # fewer values on either side: insufficient data
    min_expected: float = 5.0  # chi-square columns expecting fewer are pooled (Cochran's rule)
    max_categories: int = 50  # reference categories kept by name; the rarer ones pool into OTHER
    psi: EffectThresholds = field(default_factory=lambda: EffectThresholds(0.05, 0.1, 0.25, 1.0))
    kl: EffectThresholds = field(default_factory=lambda: EffectThresholds(0.025, 0.05, 0.125, 0.5))
    js: EffectThresholds = field(default_factory=lambda: EffectThresholds(0.08, 0.12, 0.2, 0.4))
    ks: EffectThresholds = field(default_factory=lambda: EffectThresholds(0.08, 0.12, 0.2, 0.4))
    # The Wasserstein distance in units of the reference's standard deviation.
    wasserstein: EffectThresholds = field(default_factory=lambda: EffectThresholds(0.2, 0.3, 0.5, 1.0))
    cramers_v: EffectThresholds = field(default_factory=lambda: EffectThresholds(0.1, 0.15, 0.25, 0.45))
    significance: SignificanceThresholds = field(default_factory=SignificanceThresholds)

    def __post_init__(self) -> None:
        if self.bins < 2 or self.min_samples < 2 or self.max_categories < 1 or not 0 < self.epsilon < 1:
            raise ValueError(f"need bins >= 2, min_samples >= 2, max_categories >= 1, 0 < epsilon < 1: {self}")


DEFAULT_CONFIG = DriftConfig()


@dataclass(frozen=True, kw_only=True)
class DriftResult:
    """One algorithm's verdict. value is None when the data were insufficient;
    p_value is that of the test that gated the severity (named by test)."""

    name: str
    value: float | None
    severity: Severity
    p_value: float | None = None
    test: str | None = None
    reference_size: int
    current_size: int
    insufficient_data: bool = False
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class HistogramResult(DriftResult):
    """PSI, KL or JS with the histograms compared. Numeric bins are given by
    edges, the cut points: the first bin holds x < edges[0], bin i holds
    edges[i-1] <= x < edges[i], the last holds x >= edges[-1]. Categorical
    bins are named by categories. Proportions are as observed, unsmoothed."""

    edges: list[float] | None = None
    categories: list[str] | None = None
    reference: list[float] = field(default_factory=list)
    current: list[float] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class WassersteinResult(DriftResult):
    """value is in the feature's units; severity grades normalised, the
    distance divided by scale (the reference's standard deviation)."""

    normalised: float | None = None
    scale: float | None = None


@dataclass(frozen=True, kw_only=True)
class ChiSquareResult(DriftResult):
    """value is the chi-square statistic; severity grades cramers_v. unseen
    lists current categories absent from the reference (most frequent first)."""

    cramers_v: float | None = None
    dof: int | None = None
    unseen: list[str] = field(default_factory=list)
    unseen_count: int = 0


@dataclass(frozen=True, kw_only=True)
class FeatureDrift:
    """Every algorithm's result for one feature, and what was dropped."""

    kind: str  # "numeric" or "categorical"
    results: list[DriftResult]
    reference_dropped: int = 0  # NaN, inf or None values left out
    current_dropped: int = 0

    @property
    def severity(self) -> Severity:
        return worst(result.severity for result in self.results)

    def result(self, name: str) -> DriftResult:
        return next(result for result in self.results if result.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "severity": self.severity}


def monitor_severity(features: Iterable[FeatureDrift]) -> Severity:
    """A monitor is as drifted as its worst feature."""
    return worst(feature.severity for feature in features)


# ---------------------------------------------------------------- input


def clean_numeric(values: Any, side: str = "sample") -> tuple[np.ndarray, int]:
    """(the finite values as float64, how many NaN/inf/None were dropped)."""
    array = _flat_array(values, side)
    if array.dtype.kind in "iuf":
        floats = array.astype(np.float64)
    elif array.dtype.kind == "b":
        raise DriftInputError(f"{side}: booleans are not numeric here: compare them as categories")
    else:  # strings or Python objects: look at each value
        floats = np.empty(len(array))
        for index, value in enumerate(array.tolist()):
            if value is None:
                floats[index] = math.nan
            elif isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
                floats[index] = float(value)
            else:
                raise DriftInputError(f"{side}: not a number at index {index}: {value!r} ({type(value).__name__})")
    finite = np.isfinite(floats)
    return floats[finite], int(len(floats) - np.count_nonzero(finite))


def clean_categorical(values: Any, side: str = "sample") -> tuple[list[Hashable], int]:
    """(the labels, how many NaN/None were dropped). Labels are str, int or
    bool, one of these per sample, since str(1) == "1" in a JSON result."""
    labels: list[Hashable] = []
    dropped = 0
    first: tuple[int, Any] | None = None
    for index, value in enumerate(_flat_array(values, side, dtype=object).tolist()):
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or (isinstance(value, float) and math.isnan(value)):
            dropped += 1
            continue
        if not isinstance(value, str | int):  # bool is an int
            raise DriftInputError(
                f"{side}: a category must be a str, int or bool; index {index} is {value!r} ({type(value).__name__})"
            )
        if first is None:
            first = (index, value)
        elif type(value) is not type(first[1]):
            raise DriftInputError(
                f"{side}: mixed category types: {first[1]!r} at index {first[0]} is {type(first[1]).__name__}, "
                f"{value!r} at index {index} is {type(value).__name__}"
            )
        labels.append(value)
    return labels, dropped


def _flat_array(values: Any, side: str, dtype: type | None = None) -> np.ndarray:
    if isinstance(values, str | bytes | dict) or values is None:
        raise DriftInputError(f"{side}: expected a sequence of values, got {type(values).__name__}")
    if not isinstance(values, np.ndarray):
        items = list(values)
        try:
            values = np.asarray(items, dtype=dtype)
            if values.dtype.kind in "USV":  # numpy turned mixed values into strings: keep them as they were
                values = np.asarray(items, dtype=object)
        except (TypeError, ValueError) as error:
            raise DriftInputError(f"{side}: expected a flat sequence of values: {error}") from None
    if values.ndim != 1:
        raise DriftInputError(f"{side}: expected a flat sequence of values, got shape {values.shape}")
    return values


def _shortage(reference_size: int, current_size: int, config: DriftConfig) -> str | None:
    """Why the samples are too small to compare, or None when they are not."""
    if min(reference_size, current_size) >= config.min_samples:
        return None
    return (f"insufficient data: reference has {reference_size} usable values, current {current_size}; "
            f"each needs at least {config.min_samples}")


def _insufficient(cls: type[DriftResult], name: str, note: str, ref_size: int, cur_size: int) -> Any:
    return cls(name=name, value=None, severity=Severity.NONE, reference_size=ref_size, current_size=cur_size,
               insufficient_data=True, note=note)


# ---------------------------------------------------------------- histograms


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Cut points at the reference's inner quantiles, made unique (ties can
    leave fewer bins than asked). When the top cut is the reference's maximum
    (a constant or heavily tied reference), one more cut just above it keeps
    larger current values out of the maximum's bin."""
    cuts = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    top = reference.max()
    if cuts[-1] >= top:
        cuts = np.append(cuts, np.nextafter(top, math.inf))
    return cuts


def _bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # side="right": a value equal to a cut point belongs to the bin it opens.
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def _smoothed(proportions: np.ndarray, epsilon: float) -> np.ndarray:
    """Empty bins count as epsilon (then renormalised), so PSI and KL stay finite."""
    floored = np.maximum(proportions, epsilon)
    return floored / floored.sum()


def homogeneity_test(reference_counts: np.ndarray, current_counts: np.ndarray,
                     min_expected: float = 5.0) -> tuple[float, float, float, int]:
    """Chi-square test that two count vectors come from one distribution:
    (statistic, p_value, Cramer's V, degrees of freedom). Both samples are
    treated as samples (scipy's chi2_contingency on the 2 x k table): taking
    the reference's proportions as the truth (a goodness-of-fit test) ignores
    its own sampling noise, which for samples of similar size about doubles
    the statistic when nothing drifted. Columns expecting fewer than
    min_expected are pooled into one, so the chi-square approximation holds."""
    table = np.vstack([reference_counts, current_counts]).astype(np.int64)
    table = table[:, table.sum(axis=0) > 0]
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    rare = expected.min(axis=0) < min_expected
    if rare.sum() > 1:
        table = np.hstack([table[:, ~rare], table[:, rare].sum(axis=1, keepdims=True)])
    if table.shape[1] < 2:  # a single category on both sides: nothing differs
        return 0.0, 1.0, 0.0, 0
    test = chi2_contingency(table, correction=False)
    cramers_v = association(table, method="cramer", correction=False)
    return float(test.statistic), float(test.pvalue), float(cramers_v), int(test.dof)


def _histogram_results(ref_counts: np.ndarray, cur_counts: np.ndarray, config: DriftConfig,
                       edges: list[float] | None = None, categories: list[str] | None = None,
                       gate: tuple[float, str] | None = None) -> dict[str, HistogramResult]:
    """PSI, KL(current || reference) and JS distance (base 2) of two count vectors."""
    ref = ref_counts / ref_counts.sum()
    cur = cur_counts / cur_counts.sum()
    ref_smooth, cur_smooth = _smoothed(ref, config.epsilon), _smoothed(cur, config.epsilon)
    values = {
        # PSI = sum (c - r) ln(c / r) = KL(c || r) + KL(r || c)
        "psi": float(np.sum(rel_entr(cur_smooth, ref_smooth) + rel_entr(ref_smooth, cur_smooth))),
        "kl_divergence": float(entropy(cur_smooth, ref_smooth)),
        # JS needs no smoothing: it is finite with empty bins.
        "js_distance": float(jensenshannon(ref, cur, base=2)),
    }
    thresholds = {"psi": config.psi, "kl_divergence": config.kl, "js_distance": config.js}
    if gate is None:
        _, p_value, _, _ = homogeneity_test(ref_counts, cur_counts, config.min_expected)
        gate = (p_value, "chi2_contingency on the histogram")
    p_value, test = gate
    significance = config.significance.grade(p_value)
    return {
        name: HistogramResult(
            name=name, value=value, severity=_milder(thresholds[name].grade(value), significance),
            p_value=p_value, test=test, reference_size=int(ref_counts.sum()), current_size=int(cur_counts.sum()),
            edges=edges, categories=categories, reference=ref.tolist(), current=cur.tolist(),
        )
        for name, value in values.items()
    }


# ---------------------------------------------------------------- numeric


def compare_numeric(reference: Any, current: Any, config: DriftConfig = DEFAULT_CONFIG) -> FeatureDrift:
    """PSI, KL, JS, KS and Wasserstein for one numeric feature."""
    ref, ref_dropped = clean_numeric(reference, "reference")
    cur, cur_dropped = clean_numeric(current, "current")
    ks = _ks(ref, cur, config)
    results: list[DriftResult] = [*_binned(ref, cur, config).values(), ks, _wasserstein(ref, cur, config, ks.p_value)]
    return FeatureDrift(kind="numeric", results=results, reference_dropped=ref_dropped, current_dropped=cur_dropped)


def psi(reference: Any, current: Any, config: DriftConfig = DEFAULT_CONFIG) -> HistogramResult:
    """Population stability index on the reference's quantile bins."""
    return _binned(*_clean_pair(reference, current), config)["psi"]


def kl_divergence(reference: Any, current: Any, config: DriftConfig = DEFAULT_CONFIG) -> HistogramResult:
    """KL(current || reference) in nats, on the reference's quantile bins."""
    return _binned(*_clean_pair(reference, current), config)["kl_divergence"]


def js_distance(reference: Any, current: Any, config: DriftConfig = DEFAULT_CONFIG) -> HistogramResult:
    """Jensen-Shannon distance, base 2 (0 identical, 1 disjoint), on the reference's quantile bins."""
    return _binned(*_clean_pair(reference, current), config)["js_distance"]


def ks_test(reference: Any, current: Any, config: DriftConfig = DEFAULT_CONFIG) -> DriftResult:
    """Two-sample Kolmogorov-Smirnov: value is the statistic D, the largest gap between the two CDFs."""
    return _ks(*_clean_pair(reference, current), config)


def wasserstein(reference: Any, current: Any, config: DriftConfig = DEFAULT_CONFIG) -> WassersteinResult:
    """Earth mover's distance, also in reference standard deviations; gated by the KS test."""
    ref, cur = _clean_pair(reference, current)
    return _wasserstein(ref, cur, config, _ks(ref, cur, config).p_value)


def _clean_pair(reference: Any, current: Any) -> tuple[np.ndarray, np.ndarray]:
    return clean_numeric(reference, "reference")[0], clean_numeric(current, "current")[0]


def _binned(ref: np.ndarray, cur: np.ndarray, config: DriftConfig) -> dict[str, HistogramResult]:
    shortage = _shortage(len(ref), len(cur), config)
    if shortage:
        return {name: _insufficient(HistogramResult, name, shortage, len(ref), len(cur))
                for name in ("psi", "kl_divergence", "js_distance")}
    edges = quantile_edges(ref, config.bins)
    return _histogram_results(_bin_counts(ref, edges), _bin_counts(cur, edges), config, edges=edges.tolist())


def _ks(ref: np.ndarray, cur: np.ndarray, config: DriftConfig) -> DriftResult:
    shortage = _shortage(len(ref), len(cur), config)
    if shortage:
        return _insufficient(DriftResult, "ks", shortage, len(ref), len(cur))
    test = ks_2samp(ref, cur)
    statistic, p_value = float(test.statistic), float(test.pvalue)
    return DriftResult(
        name="ks", value=statistic, p_value=p_value, test="ks_2samp", reference_size=len(ref), current_size=len(cur),
        severity=_milder(config.ks.grade(statistic), config.significance.grade(p_value)),
    )


def _wasserstein(ref: np.ndarray, cur: np.ndarray, config: DriftConfig, ks_p_value: float | None) -> WassersteinResult:
    shortage = _shortage(len(ref), len(cur), config)
    if shortage or ks_p_value is None:
        return _insufficient(WassersteinResult, "wasserstein", shortage or "no KS test", len(ref), len(cur))
    distance = float(wasserstein_distance(ref, cur))
    # The reference's spread makes the distance unit-free. A constant
    # reference has none: the two samples' pooled spread stands in.
    scale = float(np.std(ref, ddof=1)) or float(np.std(np.concatenate([ref, cur]), ddof=1))
    normalised = distance / scale if scale > 0 else 0.0  # no spread at all: both constant and equal
    return WassersteinResult(
        name="wasserstein", value=distance, normalised=normalised, scale=scale, p_value=ks_p_value,
        test="ks_2samp", reference_size=len(ref), current_size=len(cur),
        severity=_milder(config.wasserstein.grade(normalised), config.significance.grade(ks_p_value)),
    )


# ---------------------------------------------------------------- categorical


def compare_categorical(reference: Any, current: Any, config: DriftConfig = DEFAULT_CONFIG) -> FeatureDrift:
    """Chi-square, PSI and JS for one categorical feature. Current categories
    the reference never had pool into one UNSEEN bucket: the test stays valid
    (no expected count of zero) and the new categories are listed in the
    chi-square result. Reference categories beyond max_categories, the
    rarest, pool into OTHER."""
    ref, ref_dropped = clean_categorical(reference, "reference")
    cur, cur_dropped = clean_categorical(current, "current")
    if ref and cur and type(ref[0]) is not type(cur[0]):
        raise DriftInputError(
            f"reference categories are {type(ref[0]).__name__}, current ones {type(cur[0]).__name__}"
        )
    results: list[DriftResult]
    shortage = _shortage(len(ref), len(cur), config)
    if shortage:
        results = [_insufficient(cls, name, shortage, len(ref), len(cur))
                   for cls, name in ((ChiSquareResult, "chi_square"), (HistogramResult, "psi"),
                                     (HistogramResult, "js_distance"))]
    else:
        categories, ref_counts, cur_counts, unseen = _category_counts(ref, cur, config.max_categories)
        statistic, p_value, cramers_v, dof = homogeneity_test(ref_counts, cur_counts, config.min_expected)
        test = "chi2_contingency on the categories"
        chi_square = ChiSquareResult(
            name="chi_square", value=statistic, p_value=p_value, test=test, cramers_v=cramers_v, dof=dof,
            reference_size=len(ref), current_size=len(cur),
            unseen=[str(label) for label, _ in unseen.most_common(config.max_categories)],
            unseen_count=sum(unseen.values()),
            severity=_milder(config.cramers_v.grade(cramers_v), config.significance.grade(p_value)),
        )
        histograms = _histogram_results(ref_counts, cur_counts, config, categories=categories, gate=(p_value, test))
        results = [chi_square, histograms["psi"], histograms["js_distance"]]
    return FeatureDrift(kind="categorical", results=results, reference_dropped=ref_dropped,
                        current_dropped=cur_dropped)


def _category_counts(ref: list[Hashable], cur: list[Hashable], max_categories: int
                     ) -> tuple[list[str], np.ndarray, np.ndarray, Counter[Hashable]]:
    """(column names, reference counts, current counts, the unseen categories' counts)."""
    ref_counts, cur_counts = Counter(ref), Counter(cur)
    ranked = sorted(ref_counts, key=lambda label: (-ref_counts[label], str(label)))
    kept, pooled = ranked[:max_categories], ranked[max_categories:]
    unseen = Counter({label: count for label, count in cur_counts.items() if label not in ref_counts})
    names = [str(label) for label in kept]
    ref_column = [ref_counts[label] for label in kept]
    cur_column = [cur_counts[label] for label in kept]
    for name, labels in ((OTHER, pooled), (UNSEEN, list(unseen))):
        if labels:
            names.append(name)
            ref_column.append(sum(ref_counts[label] for label in labels))
            cur_column.append(sum(cur_counts[label] for label in labels))
    return names, np.array(ref_column), np.array(cur_column), unseen
