"""Monitors: what a user asked to watch (features, algorithms, a window,
thresholds), the per-feature windows fed by its event stream, and their
verdict.

A monitor's status is its features' results plus the worst severity over them
(worst-case aggregation); a model's status is the worst over the monitors
that name it. The request models here validate what the API accepts, and
clean_value() decides, value by value, what an event may carry:

    numeric feature      int or float; NaN, inf and null are dropped and counted
    categorical feature  str, int or bool, compared as strings (1 and "1" are one
                         category); null and NaN are dropped and counted
    embedding feature    a list of 1 to 4096 numbers; null, or a vector holding NaN,
                         inf or null, is dropped and counted; every vector must have
                         the dimension of the monitor's first (of its explicit
                         reference, else of the first vector its stream accepted)
    anything else        a 400 naming the event and the feature

An event may leave features out: the feature gets a missing value there
(dropped and counted), so that every window of a monitor moves with its
events and a restart can rebuild them exactly from the latest events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from core.errors import ServiceError
from models.drift.embedding import compare_embeddings
from models.drift.measures import (
    DEFAULT_CONFIG,
    DriftConfig,
    DriftInputError,
    EffectThresholds,
    FeatureDrift,
    Severity,
    SignificanceThresholds,
    compare_categorical,
    compare_numeric,
    worst,
)
from models.drift.windows import AdwinDetector, FixedWindow, SlidingWindow, TumblingWindow

MAX_WINDOW = 100_000  # values per side of a window: bounds memory and the cost of one evaluation
MIN_WINDOW = DEFAULT_CONFIG.min_samples  # a smaller window could never be judged
MAX_FEATURES = 50
MAX_BATCH = 10_000  # events per ingest request
MAX_CATEGORY_LENGTH = 256
MAX_DIMENSION = 4096  # numbers in one embedding vector
# Vectors per side of a window with an embedding feature: 5000 of 384 dimensions
# take 15 MB a side as float64, and one evaluation about 80 ms (models/drift/embedding.py).
MAX_EMBEDDING_WINDOW = 5000

NUMERIC_ALGORITHMS = ("psi", "kl_divergence", "js_distance", "ks", "wasserstein")
CATEGORICAL_ALGORITHMS = ("chi_square", "psi", "js_distance")
EMBEDDING_ALGORITHMS = ("ks", "wasserstein")  # on the principal components: models/drift/embedding.py
ALGORITHMS = {"numeric": NUMERIC_ALGORITHMS, "categorical": CATEGORICAL_ALGORITHMS, "embedding": EMBEDDING_ALGORITHMS}
ALL_ALGORITHMS = tuple(dict.fromkeys(NUMERIC_ALGORITHMS + CATEGORICAL_ALGORITHMS))
# thresholds key -> the DriftConfig field it overrides
THRESHOLD_FIELDS = {"psi": "psi", "kl_divergence": "kl", "js_distance": "js", "ks": "ks",
                    "wasserstein": "wasserstein", "chi_square": "cramers_v", "p_value": "significance"}

Algorithm = Literal["psi", "kl_divergence", "js_distance", "ks", "wasserstein", "chi_square"]
ThresholdName = Literal["psi", "kl_divergence", "js_distance", "ks", "wasserstein", "chi_square", "p_value"]
AlertSeverity = Literal["low", "medium", "high", "critical"]
MonitorName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")]
FeatureName = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f]{1,128}$")]


# ---------------------------------------------------------------- requests


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeatureSpec(_Strict):
    name: FeatureName
    kind: Literal["numeric", "categorical", "embedding"]


class WindowSpec(_Strict):
    """fixed: a reference (explicit per feature, or the first reference_size
    events) against the latest `size`; sliding: the latest `size` against the
    `size` before; tumbling: each closed window of `size` against the one
    before; adwin: river's ADWIN finds a change, then the `size` values
    before it are compared with those after it (numeric features only).
    With an embedding feature, size and reference_size are at most
    MAX_EMBEDDING_WINDOW vectors."""

    kind: Literal["fixed", "sliding", "tumbling", "adwin"]
    size: int = Field(1000, ge=MIN_WINDOW, le=MAX_WINDOW, strict=True)
    reference_size: int | None = Field(None, ge=MIN_WINDOW, le=MAX_WINDOW, strict=True)
    reference: dict[str, list[Any]] | None = None
    delta: float | None = Field(None, gt=0, lt=1)


class ThresholdSpec(_Strict):
    """Overrides of one algorithm's thresholds; the ones left out keep their defaults."""

    low: float | None = Field(None, allow_inf_nan=False)
    medium: float | None = Field(None, allow_inf_nan=False)
    high: float | None = Field(None, allow_inf_nan=False)
    critical: float | None = Field(None, allow_inf_nan=False)


class MonitorCreate(_Strict):
    name: MonitorName
    model: ModelName | None = None
    # push: events come by POST /drift/ingest; requests: from the orchestrator's request feed (request_source.py)
    source: Literal["push", "requests"] = "push"
    features: list[FeatureSpec] = Field(min_length=1, max_length=MAX_FEATURES)
    algorithms: list[Algorithm] | None = Field(None, min_length=1)
    window: WindowSpec = Field(default_factory=lambda: WindowSpec(kind="sliding"))
    thresholds: dict[ThresholdName, ThresholdSpec] = Field(default_factory=dict)
    alert_severity: AlertSeverity = "medium"
    webhook: str | None = Field(None, max_length=2048)
    cooldown_seconds: float = Field(300.0, ge=1, le=30 * 86400, allow_inf_nan=False)


class MonitorPatch(_Strict):
    """Fields left out stay; model and webhook take null to clear them.
    Changing features or window restarts the monitor's stream."""

    name: MonitorName | None = None
    model: ModelName | None = None
    features: list[FeatureSpec] | None = Field(None, min_length=1, max_length=MAX_FEATURES)
    algorithms: list[Algorithm] | None = Field(None, min_length=1)
    window: WindowSpec | None = None
    thresholds: dict[ThresholdName, ThresholdSpec] | None = None
    alert_severity: AlertSeverity | None = None
    webhook: str | None = Field(None, max_length=2048)
    cooldown_seconds: float | None = Field(None, ge=1, le=30 * 86400, allow_inf_nan=False)


class IngestRequest(_Strict):
    monitor: str = Field(min_length=1, max_length=128)
    events: list[dict[str, Any]] = Field(max_length=MAX_BATCH)
    ts: float | None = Field(None, allow_inf_nan=False)  # unix seconds; default: now


# ---------------------------------------------------------------- checks


def bad(message: str, param: str | None, code: str = "invalid_value", status: int = 400) -> ServiceError:
    return ServiceError(status, message, code, param)


def clean_value(value: Any, kind: str, param: str) -> tuple[Any, bool]:
    """(the value a window holds, whether it counts as dropped). Raises a 400 naming param."""
    if value is None:
        return None, True
    if kind == "embedding":
        return clean_vector(value, param)
    if kind == "numeric":
        if isinstance(value, bool):
            raise bad(f"{param}: a boolean is not numeric; declare the feature categorical", param, "kind_mismatch")
        if isinstance(value, int):
            try:
                return float(value), False
            except OverflowError:
                raise bad(f"{param}: {value} is out of the float range", param) from None
        if isinstance(value, float):
            return (value, False) if math.isfinite(value) else (None, True)
        if isinstance(value, str):
            raise bad(f"{param}: categorical value {value[:64]!r} for a numeric feature", param, "kind_mismatch")
        raise bad(f"{param}: expected a number, got {type(value).__name__}", param)
    if isinstance(value, bool):
        return ("true" if value else "false"), False
    if isinstance(value, str):
        if len(value) > MAX_CATEGORY_LENGTH:
            raise bad(f"{param}: a category is at most {MAX_CATEGORY_LENGTH} characters", param)
        return value, False
    if isinstance(value, int):
        text = str(value) if abs(value) < 10 ** MAX_CATEGORY_LENGTH else ""
        if not text:
            raise bad(f"{param}: a category is at most {MAX_CATEGORY_LENGTH} characters", param)
        return text, False
    if isinstance(value, float):
        if not math.isfinite(value):
            return None, True
        raise bad(f"{param}: numeric value {value} for a categorical feature", param, "kind_mismatch")
    raise bad(f"{param}: expected a category (string), got {type(value).__name__}", param)


def clean_vector(value: Any, param: str) -> tuple[list[float] | None, bool]:
    """An embedding as the window holds it: a JSON list of floats (it is stored
    as sent). A vector holding NaN, inf or null is dropped, like a NaN."""
    if isinstance(value, str | bool | int | float):
        raise bad(f"{param}: {type(value).__name__} value for an embedding feature: send a list of numbers",
                  param, "kind_mismatch")
    if not isinstance(value, list):
        raise bad(f"{param}: expected an embedding (a list of numbers), got {type(value).__name__}", param)
    if not 1 <= len(value) <= MAX_DIMENSION:
        raise bad(f"{param}: an embedding has 1 to {MAX_DIMENSION} numbers, this one {len(value)}", param)
    if not all(type(number) is float for number in value):  # the usual case, checked fast
        value = [_vector_number(number, f"{param}.{index}") for index, number in enumerate(value)]
    if not all(map(math.isfinite, value)):
        return None, True
    return value, False


def _vector_number(number: Any, param: str) -> float:
    if number is None:
        return math.nan
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise bad(f"{param}: an embedding holds numbers, not {type(number).__name__}", param)
    try:
        return float(number)
    except OverflowError:
        raise bad(f"{param}: {number} is out of the float range", param) from None


def drift_config(thresholds: dict[str, dict[str, float | None]]) -> DriftConfig:
    """DriftConfig with the monitor's threshold overrides (400 when they do not line up)."""
    changes: dict[str, Any] = {}
    for key, override in thresholds.items():
        attribute = THRESHOLD_FIELDS[key]
        default = getattr(DEFAULT_CONFIG, attribute)
        values = {**dataclasses.asdict(default), **{k: v for k, v in override.items() if v is not None}}
        bounds = (0.0, 1.0) if key == "p_value" else (0.0, math.inf)  # p-values are probabilities; effects >= 0
        if not all(bounds[0] <= value <= bounds[1] for value in values.values() if isinstance(value, (int, float))):
            raise bad(f"thresholds.{key}: each must lie in [{bounds[0]:g}, {bounds[1]:g}]", f"thresholds.{key}")
        try:
            changes[attribute] = (SignificanceThresholds if key == "p_value" else EffectThresholds)(**values)
        except ValueError as error:
            raise bad(f"thresholds.{key}: {error}", f"thresholds.{key}") from None
    return dataclasses.replace(DEFAULT_CONFIG, **changes)


def check_spec(features: list[FeatureSpec], algorithms: list[str] | None,
               window: WindowSpec) -> dict[str, list[Any]] | None:
    """Cross-field checks; returns the cleaned explicit reference, if any."""
    names: set[str] = set()
    for index, feature in enumerate(features):
        if feature.name in names:
            raise bad(f"feature {feature.name!r} is listed twice", f"features.{index}.name", "duplicate_feature")
        names.add(feature.name)
    for feature in features:
        usable = [name for name in (algorithms or ALL_ALGORITHMS) if name in ALGORITHMS[feature.kind]]
        if not usable:
            raise bad(f"none of the algorithms {algorithms} applies to {feature.kind} feature {feature.name!r} "
                      f"({feature.kind}: {', '.join(ALGORITHMS[feature.kind])})", "algorithms", "kind_mismatch")
    if window.kind == "adwin":
        other = [feature for feature in features if feature.kind != "numeric"]
        if other:
            raise bad(f"an adwin window takes numeric features only; {other[0].name!r} is {other[0].kind}",
                      "window.kind", "kind_mismatch")
    elif window.delta is not None:
        raise bad("delta is for adwin windows only", "window.delta")
    _check_embedding_window(features, window)
    if window.kind != "fixed":
        for name in ("reference", "reference_size"):
            if getattr(window, name) is not None:
                raise bad(f"{name} is for fixed windows only", f"window.{name}")
        return None
    if window.reference is None:
        return None
    if window.reference_size is not None:
        raise bad("give either an explicit reference or reference_size, not both", "window.reference_size")
    kinds = {feature.name: feature.kind for feature in features}
    for name in window.reference:
        if name not in kinds:
            raise bad(f"reference for {name!r}, which is not a feature of this monitor", f"window.reference.{name}",
                      "unknown_feature")
    reference: dict[str, list[Any]] = {}
    for name, kind in kinds.items():
        if name not in window.reference:
            raise bad(f"the reference lacks feature {name!r}", "window.reference", "missing_feature")
        values = window.reference[name]
        most = MAX_EMBEDDING_WINDOW if kind == "embedding" else MAX_WINDOW
        if len(values) > most:
            raise bad(f"a reference holds at most {most} values", f"window.reference.{name}")
        cleaned = [clean_value(value, kind, f"window.reference.{name}.{i}")[0] for i, value in enumerate(values)]
        if kind == "embedding":
            check_dimensions(cleaned, None, f"window.reference.{name}")
        usable = sum(value is not None for value in cleaned)
        if usable < MIN_WINDOW:
            raise bad(f"the reference of {name!r} has {usable} usable values; it needs at least {MIN_WINDOW}",
                      f"window.reference.{name}")
        reference[name] = cleaned
    return reference


def _check_embedding_window(features: list[FeatureSpec], window: WindowSpec) -> None:
    """Windows of vectors are smaller: each value is up to MAX_DIMENSION numbers."""
    embedding = next((feature.name for feature in features if feature.kind == "embedding"), None)
    if embedding is None:
        return
    for name in ("size", "reference_size"):
        size = getattr(window, name)
        if size is not None and size > MAX_EMBEDDING_WINDOW:
            raise bad(f"window.{name}: a monitor with an embedding feature ({embedding!r}) takes windows of at most "
                      f"{MAX_EMBEDDING_WINDOW} vectors", f"window.{name}")


def check_dimensions(vectors: list[Any], dimension: int | None, param: str) -> int | None:
    """The vectors' common dimension: dimension, when given, else the first
    vector's. A 400 dimension_mismatch names the first vector that differs."""
    for index, vector in enumerate(vectors):
        dimension = check_dimension(vector, dimension, f"{param}.{index}")
    return dimension


def check_dimension(vector: list[float] | None, dimension: int | None, param: str) -> int | None:
    """The feature's dimension once vector is accepted (a missing vector fixes none)."""
    if vector is None:
        return dimension
    if dimension is not None and len(vector) != dimension:
        raise bad(f"{param}: an embedding of {len(vector)} numbers, but this feature's have {dimension}",
                  param, "dimension_mismatch")
    return len(vector)


def window_row(window: WindowSpec) -> dict[str, Any]:
    """The window as stored (its reference is kept apart)."""
    row: dict[str, Any] = {"kind": window.kind, "size": window.size}
    if window.kind == "fixed":
        row["reference_source"] = "explicit" if window.reference is not None else "events"
        row["reference_size"] = (window.reference_size or window.size) if window.reference is None else None
    if window.kind == "adwin":
        row["delta"] = window.delta or 0.002
    return row


# ---------------------------------------------------------------- windows


class AdwinWindow:
    """ADWIN on the stream; after each change it detects, the values before
    the change (up to `size`) are the reference and those since it (the
    latest `size`) the current sample. No pair before the first change."""

    def __init__(self, size: int, delta: float) -> None:
        self.size = size
        self.detector = AdwinDetector(delta=delta)
        self._recent: deque[Any] = deque(maxlen=2 * size)
        self._reference: list[Any] | None = None
        self._current: deque[Any] = deque(maxlen=size)

    def add(self, value: Any) -> None:
        self._recent.append(value)
        if self._reference is not None:
            self._current.append(value)
        if self.detector.add(value):
            # ADWIN dropped the older part of its window: what it keeps is the new regime.
            width = int(getattr(self.detector._adwin, "width", 0)) or 1  # noqa: SLF001 - river keeps it there
            recent = list(self._recent)
            after = min(width, self.size, len(recent))
            self._current = deque(recent[len(recent) - after:], maxlen=self.size)
            self._reference = recent[max(0, len(recent) - after - self.size):len(recent) - after]

    def pair(self) -> tuple[list[Any], list[Any]] | None:
        if self._reference is None or not self._reference:
            return None
        return self._reference, list(self._current)

    @property
    def held(self) -> int:
        return len(self._recent) + len(self._reference or ()) + len(self._current)


# ---------------------------------------------------------------- monitors


@dataclass
class FeatureStatus:
    name: str
    kind: str
    drift: FeatureDrift | None  # None until the window has a pair to compare
    window: dict[str, Any]
    dropped: int  # missing, NaN or inf values dropped from this feature's events
    note: str | None = None

    @property
    def severity(self) -> Severity:
        return self.drift.severity if self.drift is not None else Severity.NONE

    def summary(self) -> dict[str, Any]:
        results = {}
        if self.drift is not None:
            results = {result.name: {"value": result.value, "severity": result.severity, "p_value": result.p_value,
                                     "insufficient_data": result.insufficient_data} for result in self.drift.results}
        worst_result = self.worst_result()
        return {"kind": self.kind, "severity": self.severity, "ready": self.drift is not None,
                "window": self.window, "dropped": self.dropped, "results": results,
                "worst": worst_result, **({"note": self.note} if self.note else {})}

    def worst_result(self) -> dict[str, Any] | None:
        if self.drift is None or not self.drift.results:
            return None
        top = max(self.drift.results, key=lambda result: result.severity.rank)
        return {"algorithm": top.name, "value": top.value, "severity": top.severity, "p_value": top.p_value}


@dataclass
class Evaluation:
    severity: Severity
    features: dict[str, FeatureStatus]
    events_seen: int
    evaluated_at: float = field(default_factory=time.time)
    seconds: float = 0.0


@dataclass
class MonitorConfig:
    id: str
    name: str
    model: str | None
    features: list[dict[str, str]]
    algorithms: list[str]
    window: dict[str, Any]
    reference: dict[str, list[Any]] | None
    thresholds: dict[str, dict[str, float | None]]
    alert_severity: str
    webhook: str | None
    cooldown_seconds: float
    created: float
    updated: float
    events_seen: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    source: str = "push"  # or "requests": see request_source.py
    feed_seq: int = 0  # the request feed's highest seq committed
    feed_id: str | None = None  # the feed it counts in

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> MonitorConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in row.items() if key in names})

    def public(self) -> dict[str, Any]:
        window = dict(self.window)
        if self.reference is not None:
            window["reference_counts"] = {name: len(values) for name, values in self.reference.items()}
        return {"id": self.id, "name": self.name, "model": self.model, "source": self.source,
                "features": self.features,
                "algorithms": self.algorithms, "window": window, "thresholds": self.thresholds,
                "alert_severity": self.alert_severity, "webhook": self.webhook,
                "cooldown_seconds": self.cooldown_seconds, "events_seen": self.events_seen,
                "created": self.created, "updated": self.updated}

    @property
    def kinds(self) -> dict[str, str]:
        return {feature["name"]: feature["kind"] for feature in self.features}


class Monitor:
    """A monitor's windows and its latest verdict. Callers hold `lock` while
    they feed or evaluate it (ingest threads, PATCH, DELETE)."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.turn = asyncio.Lock()  # ingests wait for it on the event loop, before taking a thread
        self.deleted = False
        self.last_alert: dict[str, Any] | None = None
        self.events_since_prune = 0
        # Small batches are evaluated together (server.py): fed since the last evaluation, and one scheduled.
        self.stale = False
        self.evaluation_pending = False
        self.evaluated_mono = 0.0  # time.monotonic() of the last evaluation
        self.configure(config)

    def configure(self, config: MonitorConfig) -> None:
        """Fresh windows for config (its stream starts empty: feed or replay events next)."""
        self.config = config
        self.drift_config = drift_config(config.thresholds)
        self.events_seen = 0
        self.dropped = {name: int(config.dropped.get(name, 0)) for name in config.kinds}
        self.embeddings = [name for name, kind in config.kinds.items() if kind == "embedding"]
        # An embedding feature's dimension: its reference's, else its stream's first vector's.
        self.dimensions: dict[str, int] = {}
        for name in self.embeddings:
            dimension = check_dimensions(config.reference[name], None, name) if config.reference else None
            if dimension is not None:
                self.dimensions[name] = dimension
        window = config.window
        self._reference_fill: dict[str, list[Any]] | None = None
        if window["kind"] == "fixed" and config.reference is None:
            self._reference_fill = {name: [] for name in config.kinds}
        self.windows: dict[str, Any] = {name: self._make_window(name) for name in config.kinds}
        self._cache: dict[str, tuple[Any, FeatureDrift]] = {}
        self.evaluation: Evaluation | None = None

    def _make_window(self, name: str) -> Any:
        window, size = self.config.window, self.config.window["size"]
        if window["kind"] == "fixed":
            if self.config.reference is None:
                return None
            return FixedWindow([self._held(name, value) for value in self.config.reference[name]], size)
        if window["kind"] == "sliding":
            return SlidingWindow(size)
        if window["kind"] == "tumbling":
            return TumblingWindow(size)
        return AdwinWindow(size, float(window.get("delta") or 0.002))

    def _held(self, name: str, value: Any) -> Any:
        """What a window holds: a vector as a float64 array (a quarter of a
        list's memory, and quick to stack); any other value as it is."""
        if value is None or name not in self.embeddings:
            return value
        return np.asarray(value, dtype=np.float64)

    # ------------------------------------------------------------ streams

    @property
    def reference_pending(self) -> bool:
        """A fixed window still taking its reference from the first events."""
        return self._reference_fill is not None

    def need(self) -> int:
        """How many of the latest events the windows can draw on: what the store keeps at least."""
        window, size = self.config.window, self.config.window["size"]
        if window["kind"] == "fixed":
            return size + (window.get("reference_size") or 0)
        return {"sliding": 2 * size, "tumbling": 3 * size, "adwin": 2 * size}[window["kind"]]

    def replay_count(self, events_seen: int) -> int:
        """How many of the latest events rebuild the windows of a stream of events_seen events."""
        window, size = self.config.window, self.config.window["size"]
        kind = window["kind"]
        if kind == "fixed":
            if self.config.reference is None:
                return events_seen  # the reference is not frozen yet: all of them (fewer than need())
            if window.get("reference_source") == "events":
                return max(0, min(events_seen - window["reference_size"], size))
            return min(events_seen, size)
        if kind == "tumbling":  # whole windows from the stream's start, then the one filling
            return min(events_seen, 2 * size + events_seen % size)
        return min(events_seen, 2 * size)

    def check_events(self, events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, dict[str, int]]:
        """The events as stored ({feature: value or None}), how many values sent
        were dropped (NaN, inf, null), and the monitor's per-feature counts of
        missing values (those, and features left out) once these are added.
        A 400 names the first bad event and feature."""
        if not events:
            raise bad("events is empty: send at least one event", "events", "empty_batch")
        kinds = self.config.kinds
        cleaned, dropped = [], 0
        missing = dict(self.dropped)
        dimensions = dict(self.dimensions)
        for index, event in enumerate(events):
            for name in event:
                if name not in kinds:
                    raise bad(f"events.{index}: monitor {self.config.name!r} has no feature {name!r} "
                              f"(its features: {', '.join(kinds)})", f"events.{index}.{name}", "unknown_feature")
            if not event:
                raise bad(f"events.{index} is empty: give at least one of the monitor's features",
                          f"events.{index}", "empty_event")
            row = {}
            for name, kind in kinds.items():
                value, was_dropped = clean_value(event.get(name), kind, f"events.{index}.{name}")
                if kind == "embedding":
                    dimensions[name] = check_dimension(value, dimensions.get(name), f"events.{index}.{name}")
                row[name] = value
                dropped += was_dropped and name in event
                missing[name] += was_dropped
            cleaned.append(row)
        return cleaned, dropped, missing

    def replay(self, events: list[dict[str, Any]], events_seen: int) -> dict[str, list[Any]] | None:
        """Rebuild the windows from the latest stored events of a stream of
        events_seen events (replay_count of them, fewer if the store lacks some)."""
        self.events_seen = events_seen - len(events)
        return self.feed(events)

    def feed(self, events: list[dict[str, Any]]) -> dict[str, list[Any]] | None:
        """Add stored events to the windows; returns the reference when these
        events completed a fixed window's reference (the caller persists it)."""
        frozen = None
        for event in events:
            self.events_seen += 1
            for name in self.embeddings:
                if event.get(name) is not None:
                    self.dimensions.setdefault(name, len(event[name]))
            if self._reference_fill is not None:
                for name, values in self._reference_fill.items():
                    values.append(event.get(name))
                if self.events_seen >= self.config.window["reference_size"]:
                    frozen = self._reference_fill
                    self.config.reference, self._reference_fill = frozen, None
                    self.windows = {name: self._make_window(name) for name in self.config.kinds}
                continue
            for name, window in self.windows.items():
                window.add(self._held(name, event.get(name)))
        return frozen

    # ------------------------------------------------------------ verdicts

    def evaluate(self) -> Evaluation:
        began = time.monotonic()
        features = {name: self._evaluate_feature(name, kind) for name, kind in self.config.kinds.items()}
        self.evaluation = Evaluation(severity=worst(status.severity for status in features.values()),
                                     features=features, events_seen=self.events_seen,
                                     seconds=round(time.monotonic() - began, 4))
        self.evaluated_mono, self.stale = time.monotonic(), False
        return self.evaluation

    def _evaluate_feature(self, name: str, kind: str) -> FeatureStatus:
        window = self.windows.get(name)
        info = self.window_info(name)
        found = window.pair() if window is not None else None
        if found is None:
            return FeatureStatus(name, kind, None, info, self.dropped[name],
                                 note="the window is filling: no pair to compare yet")
        pair = found if isinstance(found, tuple) else (found.reference, found.current)
        # A tumbling window's pair changes only when a window closes: keep its verdict till then.
        key = found.end if self.config.window["kind"] == "tumbling" else None
        cached = self._cache.get(name)
        if key is not None and cached is not None and cached[0] == key:
            return FeatureStatus(name, kind, cached[1], info, self.dropped[name])
        compare = {"numeric": compare_numeric, "categorical": compare_categorical,
                   "embedding": compare_embeddings}[kind]
        try:
            drift = compare(pair[0], pair[1], self.drift_config)
        except DriftInputError as error:  # values are checked at ingest: should not happen
            return FeatureStatus(name, kind, None, info, self.dropped[name], note=f"cannot compare: {error}")
        chosen = set(self.config.algorithms)
        drift = dataclasses.replace(drift, results=[result for result in drift.results if result.name in chosen])
        if key is not None:
            self._cache[name] = (key, drift)
        return FeatureStatus(name, kind, drift, info, self.dropped[name])

    def window_info(self, name: str) -> dict[str, Any]:
        window, size, kind = self.windows.get(name), self.config.window["size"], self.config.window["kind"]
        info: dict[str, Any] = {"kind": kind, "size": size}
        if kind == "fixed":
            if window is None:
                fill = self._reference_fill or {}
                info.update(reference=len(fill.get(name, ())), current=0, reference_frozen=False,
                            reference_size=self.config.window.get("reference_size"))
            else:
                info.update(reference=len(window.reference), current=window.held - len(window.reference),
                            reference_frozen=True)
        elif kind == "sliding":
            held = window.held
            info.update(reference=max(0, held - size), current=min(held, size))
        elif kind == "tumbling":
            closed = self.events_seen // size
            info.update(reference=size if closed >= 2 else 0, current=size if closed >= 2 else 0,
                        closed_windows=closed, filling=self.events_seen % size)
        else:
            pair = window.pair()
            info.update(reference=len(pair[0]) if pair else 0, current=len(pair[1]) if pair else 0,
                        change_points=window.detector.change_points[-20:], estimation=window.detector.estimation)
        info["held"] = window.held if window is not None else info["reference"]
        if name in self.embeddings:
            info["dimension"] = self.dimensions.get(name)
        return info

    def forget_verdicts(self) -> None:
        """After a change of algorithms or thresholds."""
        self.drift_config = drift_config(self.config.thresholds)
        self._cache.clear()

    def public(self) -> dict[str, Any]:
        self.config.events_seen = self.events_seen
        return self.config.public()

    def status(self) -> dict[str, Any]:
        evaluation = self.evaluation or self.evaluate()
        return {"monitor": self.config.id, "name": self.config.name, "model": self.config.model,
                "severity": evaluation.severity, "alert_severity": self.config.alert_severity,
                "events_seen": self.events_seen, "evaluated_at": evaluation.evaluated_at,
                "evaluation_seconds": evaluation.seconds,
                "features": {name: status.summary() for name, status in evaluation.features.items()},
                "last_alert": self.last_alert}

    def report(self) -> dict[str, Any]:
        evaluation = self.evaluation or self.evaluate()
        features = {}
        for name, status in evaluation.features.items():
            features[name] = {"kind": status.kind, "severity": status.severity, "window": status.window,
                              "dropped": status.dropped, "drift": status.drift.to_dict() if status.drift else None,
                              **({"note": status.note} if status.note else {})}
        return {"monitor": self.config.id, "name": self.config.name, "model": self.config.model,
                "severity": evaluation.severity, "events_seen": self.events_seen,
                "evaluated_at": evaluation.evaluated_at, "algorithms": self.config.algorithms,
                "thresholds": {key: dataclasses.asdict(getattr(self.drift_config, attribute))
                               for key, attribute in THRESHOLD_FIELDS.items()},
                "features": features}
