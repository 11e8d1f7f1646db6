"""What the dashboard's templates draw, computed here so that the templates
only place it: memory bars per card and drift histograms, as coordinates in
an SVG viewBox (no inline styles: the pages' CSP forbids them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psutil

BAR_WIDTH = 1000.0  # the memory bars' viewBox width
CHART_WIDTH, CHART_HEIGHT = 600.0, 140.0  # a histogram's viewBox
PALETTE = 8  # colour classes c0..c7 in ui.css
GIB = 1024**3


@dataclass
class Segment:
    label: str
    gb: float
    x: float
    width: float
    colour: str


@dataclass
class MemoryBar:
    """One card (or the host's memory): what the scheduler reserved per service,
    stacked, and what was measured for our services, as a marker."""

    name: str
    label: str
    total_gb: float | None
    budget_gb: float | None
    reserved_gb: float
    segments: list[Segment] = field(default_factory=list)
    measured_gb: float | None = None  # NVML (a GPU) or resident memory (the host), for our services
    measured_x: float | None = None
    budget_x: float | None = None
    measured_by: dict[str, float] = field(default_factory=dict)


def _scale(total: float | None, budget: float | None, reserved: float, measured: float | None) -> float:
    return max(v for v in (total, budget, reserved, measured, 1e-9) if v is not None)


def memory_bars(services: list[dict[str, Any]], pools: list[dict[str, Any]], gpus: dict[str, Any]) -> list[MemoryBar]:
    """services: admin.describe() rows; pools: admin.pool_usage(); gpus: admin.gpu_report()."""
    colour = {row["id"]: f"c{i % PALETTE}" for i, row in enumerate(services)}
    by_index = {gpu["index"]: gpu for gpu in gpus.get("gpus", [])}
    bars = []
    for pool in pools:
        gpu = by_index.get(pool["gpu_index"]) if pool["gpu_index"] is not None else None
        if gpu is not None:
            measured_by = {name: used / GIB for name, used in gpu.get("measured", {}).items()}
            total = gpu.get("total_gb") or pool["total_gb"]
        else:  # the host: what our services' processes hold in RAM
            measured_by = {row["id"]: row["rss_bytes"] / GIB for row in services
                           if row["rss_bytes"] and pool["name"] in row["pools"]}
            total = pool["total_gb"] or round(psutil.virtual_memory().total / GIB, 2)
        measured = round(sum(measured_by.values()), 3) if measured_by else None
        scale = _scale(total, pool["budget_gb"], pool["reserved_gb"], measured) / BAR_WIDTH
        bar = MemoryBar(name=pool["name"], label=pool["label"], total_gb=total, budget_gb=pool["budget_gb"],
                        reserved_gb=pool["reserved_gb"], measured_gb=measured,
                        measured_by={k: round(v, 3) for k, v in measured_by.items()})
        x = 0.0
        for service_id, gb in sorted(pool["services"].items()):
            bar.segments.append(Segment(service_id, gb, x, gb / scale, colour.get(service_id, "c0")))
            x += gb / scale
        bar.measured_x = measured / scale if measured is not None else None
        bar.budget_x = pool["budget_gb"] / scale if pool["budget_gb"] else None
        bars.append(bar)
    return bars


@dataclass
class Histogram:
    """Reference and current proportions per bin, side by side."""

    labels: list[str]
    bars: list[dict[str, float]]  # x, width, reference_y, reference_h, current_y, current_h
    top: float  # the largest proportion: the chart's full height


def histogram(feature_drift: dict[str, Any] | None) -> Histogram | None:
    """The bars of a feature's first PSI/KL/JS result (models/drift/measures.HistogramResult, within
    FeatureDrift.to_dict()); None when it has none (KS, chi-square only, or no data yet)."""
    results = (feature_drift or {}).get("results") or []
    drift = next((r for r in results if r.get("reference") and r.get("current")), None)
    if drift is None:
        return None
    reference, current = drift["reference"], drift["current"]
    if drift.get("categories"):
        labels = [str(c) for c in drift["categories"]]
    else:
        edges = drift.get("edges") or []
        inner = [f"{low:.3g}–{high:.3g}" for low, high in zip(edges[:-1], edges[1:], strict=True)]
        labels = [f"< {edges[0]:.3g}", *inner, f"≥ {edges[-1]:.3g}"] if edges else [
            str(i) for i in range(len(reference))]
    count = min(len(labels), len(reference), len(current))
    if count == 0:
        return None
    top = max(max(reference[:count]), max(current[:count]), 1e-9)
    slot = CHART_WIDTH / count
    bars = []
    for i in range(count):
        ref_h = reference[i] / top * (CHART_HEIGHT - 4)
        cur_h = current[i] / top * (CHART_HEIGHT - 4)
        bars.append({"x": i * slot + slot * 0.1, "width": slot * 0.4, "reference_y": CHART_HEIGHT - ref_h,
                     "reference_h": ref_h, "current_y": CHART_HEIGHT - cur_h, "current_h": cur_h,
                     "reference": reference[i], "current": current[i]})
    return Histogram(labels=labels[:count], bars=bars, top=top)


def ago(at: float | None, now: float | None = None) -> str:
    """'12 s ago', '5 min ago', '3 h ago'."""
    if at is None:
        return "–"
    seconds = max(0.0, (now if now is not None else time.time()) - at)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"
