"""Human output of the `modelyard` command: aligned plain-text tables and the
small conversions (durations, GB, times) their cells need. Each render_*
takes the admin API's JSON as it comes and returns text; nothing here talks
to the orchestrator."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

NONE = "-"
# States in which a service holds a process (and so memory, an idle time ...).
RUNNING_STATES = ("starting", "ready", "stopping", "sleeping", "asleep", "waking")
BAR_CELLS = 24  # a progress bar's width: the line stays within 80 columns for most model ids


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)]
    lines = [list(headers), *cells]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def seconds(value: float | None) -> str:
    """12s, 4m05s, 2h10m, 3d4h: as precise as a glance needs."""
    if value is None:
        return NONE
    value = max(0, int(value))
    if value < 60:
        return f"{value}s"
    if value < 3600:
        return f"{value // 60}m{value % 60:02d}s"
    if value < 86400:
        return f"{value // 3600}h{value % 3600 // 60:02d}m"
    return f"{value // 86400}d{value % 86400 // 3600}h"


def gb(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value:.2f}" if 0 < value < 0.1 else f"{value:.1f}"  # 50 MB is not 0.0


def when(timestamp: float | None, never: str = "never") -> str:
    """A unix time as local YYYY-MM-DD HH:MM."""
    if timestamp is None:
        return never
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
    except (OverflowError, OSError, ValueError):
        return str(timestamp)


# --- status ---------------------------------------------------------------


def service_gpus(service: dict[str, Any]) -> str:
    """The cards it runs on (CUDA_VISIBLE_DEVICES), cpu, or - when it holds none."""
    if service.get("cuda_visible_devices"):
        return str(service["cuda_visible_devices"])
    if service.get("state") in RUNNING_STATES and service.get("pools"):
        return "cpu" if service["pools"] == ["host"] else ",".join(service["pools"])
    return NONE


def service_memory(service: dict[str, Any]) -> str:
    """reserved/measured GB: what the scheduler set aside, and the peak it saw."""
    reserved, measured = service.get("reserved_gb") or 0, service.get("measured_gb")
    if not reserved and measured is None:
        return NONE
    return f"{gb(reserved)}/{gb(measured)} GB"


def service_load(service: dict[str, Any]) -> str:
    queued = service.get("queued") or 0
    return f"{service.get('in_flight', 0)}" + (f" (+{queued} queued)" if queued else "")


def idle_until(service: dict[str, Any]) -> str:
    """How long it has been idle, and how long until it is unloaded for it
    (its last request's keep_alive, else its own ttl; unknown when it uses the
    settings' default, which the API does not say)."""
    if service.get("state") not in ("ready", "asleep"):
        return NONE
    if service.get("in_flight"):
        return "busy"
    idle = service.get("idle_s")
    shown = seconds(idle)
    if service.get("pinned"):
        return f"{shown} / pinned"
    keep = service.get("keep_alive_s")
    if keep == -1:
        return f"{shown} / forever"
    ttl = keep if keep is not None else service.get("ttl")
    if ttl == 0 and keep is None:  # models.yaml's ttl 0: kept running
        return f"{shown} / forever"
    if ttl is None or idle is None:
        return shown
    return f"{shown} / {seconds(ttl - idle)}"


def render_services(body: dict[str, Any]) -> str:
    rows = [[s["id"], s["state"], service_gpus(s), service_memory(s), service_load(s), idle_until(s)]
            for s in body.get("services", [])]
    if not rows:
        return "no models configured"
    return table(["NAME", "STATE", "GPUS", "MEMORY (reserved/measured)", "IN-FLIGHT", "IDLE / UNTIL"], rows)


def pool_holders(held: dict[str, float]) -> str:
    return ", ".join(f"{name} {gb(amount)}" for name, amount in sorted(held.items())) or NONE


def render_host_pool(body: dict[str, Any]) -> str | None:
    for pool in body.get("pools", []):
        if pool.get("name") == "host":
            budget = f" of {gb(pool['budget_gb'])} GB budget" if pool.get("budget_gb") is not None else ""
            holders = f" ({pool_holders(pool['services'])})" if pool.get("services") else ""
            return f"host memory: {gb(pool.get('reserved_gb'))} GB reserved{budget}{holders}"
    return None


def gpu_reserved(gpu: dict[str, Any]) -> str:
    if gpu.get("reserved_gb") is None:
        return NONE
    budget = f"/{gb(gpu['budget_gb'])}" if gpu.get("budget_gb") is not None else ""
    return f"{gb(gpu['reserved_gb'])}{budget} GB"


def render_gpus(body: dict[str, Any]) -> str:
    gpus = body.get("gpus") or []
    if not gpus:
        return f"no GPU: {body.get('reason') or 'none found'}"
    rows = [[g["index"], g["name"], f"{gb(g.get('used_gb'))}/{gb(g.get('total_gb'))} GB",
             NONE if g.get("utilization_percent") is None else f"{g['utilization_percent']}%",
             gpu_reserved(g), pool_holders(g.get("reserved") or {})] for g in gpus]
    return (f"GPUs ({body.get('source')}):\n"
            + table(["GPU", "NAME", "USED/TOTAL", "UTIL", "RESERVED/BUDGET", "RESERVED BY"], rows))


def render_status(services: dict[str, Any], gpus: dict[str, Any]) -> str:
    parts = [render_services(services), "", render_gpus(gpus)]
    host = render_host_pool(services)
    return "\n".join(parts + ([host] if host else []))


def render_service_line(service: dict[str, Any]) -> str:
    """One service after a load or an unload."""
    details = []
    if service.get("load_seconds") and service.get("state") == "ready":
        details.append(f"loaded in {service['load_seconds']:.1f} s")
    if service.get("pid"):
        details.append(f"pid {service['pid']}, port {service['port']}")
    if service.get("state") in RUNNING_STATES:
        details.append(f"GPUs {service_gpus(service)}, memory {service_memory(service)}")
    return f"{service['id']}: {service['state']}" + (f" ({'; '.join(details)})" if details else "")


# --- models ---------------------------------------------------------------


def render_models(body: dict[str, Any]) -> str:
    rows = []
    for model in body.get("data", []):
        names = ", ".join(model.get("aliases") or []) or NONE
        if model.get("parent"):  # a LoRA adapter: its base model says where it runs
            names = f"adapter of {model['parent']}"
        rows.append([model["id"], model.get("type", NONE), model.get("state", NONE), names])
    return table(["ID", "TYPE", "STATE", "ALIASES"], rows) if rows else "no models"


# --- keys -----------------------------------------------------------------


def key_limits(key: dict[str, Any]) -> str:
    limits = []
    if key.get("rpm"):
        limits.append(f"{key['rpm']:g} rpm")
    if key.get("tpm"):
        limits.append(f"{key['tpm']:g} tpm")
    if key.get("quota_requests") is not None:
        limits.append(f"{key['quota_requests']}/{key.get('quota_period')}")
    if key.get("quota_tokens") is not None:
        limits.append(f"{key['quota_tokens']} tokens/{key.get('quota_period')}")
    return ", ".join(limits) or NONE


def key_role(key: dict[str, Any]) -> str:
    return key["role"] + (f" +{','.join(key['scopes'])}" if key.get("scopes") else "")


def key_models(key: dict[str, Any]) -> str:
    return "all" if key.get("models") is None else ",".join(key["models"]) or "none"


def key_ends(key: dict[str, Any]) -> str:
    """When it stops working: its expiry, or a rotated key's end of grace (revoked ahead of time)."""
    ends = [moment for moment in (key.get("expires"), key.get("revoked")) if moment is not None]
    return when(min(ends) if ends else None)


def render_keys(body: dict[str, Any]) -> str:
    rows = [[k["id"], k["name"], k.get("owner") or NONE, key_role(k), k.get("state", NONE), key_models(k),
             key_ends(k), key_limits(k)] for k in body.get("keys", [])]
    if not rows:
        return "no keys"
    return table(["ID", "NAME", "OWNER", "ROLE", "STATE", "MODELS", "EXPIRES", "LIMITS"], rows)


def describe_key(key: dict[str, Any]) -> str:
    return (f"{key['id']} {key['name']!r}: {key_role(key)}, {key.get('state', NONE)}, models {key_models(key)}, "
            f"expires {key_ends(key)}, limits {key_limits(key)}")


# --- drift ----------------------------------------------------------------


def render_monitors(body: dict[str, Any]) -> str:
    rows = [[m["name"], m["id"], m.get("model") or "(all)", m.get("source", NONE), m.get("severity", NONE),
             m.get("events_seen", 0)] for m in body.get("data", [])]
    if not rows:
        return "no drift monitors (create one: POST /drift/monitors, see models/drift/README.md)"
    return table(["MONITOR", "ID", "MODEL", "SOURCE", "SEVERITY", "EVENTS"], rows)


def feature_worst(feature: dict[str, Any]) -> str:
    worst = feature.get("worst")
    if not worst:
        return NONE
    value = worst.get("value")
    shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
    return f"{worst.get('algorithm')}={shown}"


def last_alert(alert: dict[str, Any] | None) -> str:
    if not isinstance(alert, dict):
        return "none"
    return f"{alert.get('severity')} at {when(alert.get('ts'), NONE)}"


def render_monitor_status(status: dict[str, Any]) -> str:
    head = (f"monitor {status.get('name')} ({status.get('monitor')}), model {status.get('model') or '(all)'}: "
            f"severity {status.get('severity')}, {status.get('events_seen', 0)} events seen, "
            f"alerts from {status.get('alert_severity')}; last alert: {last_alert(status.get('last_alert'))}")
    rows = [[name, f.get("kind", NONE), f.get("severity", NONE), "yes" if f.get("ready") else "no",
             feature_worst(f), f.get("dropped", 0), f.get("note") or ""]
            for name, f in (status.get("features") or {}).items()]
    if not rows:
        return head
    return head + "\n" + table(["FEATURE", "KIND", "SEVERITY", "READY", "WORST", "DROPPED", "NOTE"], rows)


def render_model_drift(status: dict[str, Any]) -> str:
    rows = [[m["name"], m["id"], m.get("severity", NONE), m.get("events_seen", 0)] for m in status.get("monitors", [])]
    head = f"model {status.get('model')}: severity {status.get('severity')}"
    return head + ("\n" + table(["MONITOR", "ID", "SEVERITY", "EVENTS"], rows) if rows else "")


# --- simulate -------------------------------------------------------------


def render_simulation(answer: dict[str, Any]) -> str:
    """The best configurations, then how each device was searched."""
    rows = []
    for item in answer.get("recommendations", []):
        config, metrics = item["config"], item["metrics"]
        options = ",".join(name for name, key in (("chunked", "chunked_prefill"), ("prefix", "prefix_caching"))
                           if config.get(key)) or NONE
        rows.append([item["device"], f"{config['tensor_parallel']}x{config['pipeline_parallel']}",
                     config["replicas"], config["max_num_seqs"], config.get("block_size", NONE), options,
                     config.get("quantization") or "none",
                     f"{metrics['ttft_ms']:.0f}", f"{metrics['tpot_ms']:.1f}", f"{metrics['throughput_per_user']:.1f}",
                     f"{metrics['total_throughput']:.0f}", gb(metrics.get("memory_gb_per_device")),
                     f"{metrics['error_rate']:.2f}", f"{metrics['cost_per_million_tokens']:.2f}", metrics["method"]])
    workload = answer.get("workload", {})
    head = (f"{answer.get('model', {}).get('name')}: {workload.get('input_tokens')} tokens in, "
            f"{workload.get('output_tokens')} out, {workload.get('concurrency')} at once "
            f"(run {answer.get('workflow_id')})")
    searched = [f"{d['device']} x{d['count']}: {d['search']} search, {d['evaluations']} of {d['space_size']} "
                f"configurations evaluated, {d['invalid']} impossible, {d['seconds']:.2f} s"
                for d in answer.get("devices", [])]
    headers = ["DEVICE", "TPxPP", "REPLICAS", "SEQS", "BLOCK", "OPTIONS", "QUANT", "TTFT_MS", "TPOT_MS",
               "TOK/S/USER", "TOK/S", "GB/DEV", "MISSED", "$/MTOK", "METHOD"]
    return "\n".join([head, table(headers, rows), *searched])


# --- progress and measure -------------------------------------------------


def progress_line(label: str, elapsed: float, fraction: float | None = None, count: str | None = None,
                  estimate: float | None = None) -> str:
    """'loading x  [##########..............]  45%  12 s / ~27 s' when how far
    along is known (`count`, e.g. '3/9 points', in place of the percentage;
    `estimate`: the end is a guess), else 'loading x: 12 s'."""
    if fraction is None:
        return f"{label}: {elapsed:.0f} s"
    fraction = min(max(fraction, 0.0), 1.0)
    cells = round(fraction * BAR_CELLS)
    end = f" / ~{math.ceil(estimate)} s" if estimate else ""
    return f"{label}  [{'#' * cells}{'.' * (BAR_CELLS - cells)}]  {count or f'{fraction:.0%}'}  {elapsed:.0f} s{end}"


def percent(value: Any) -> str:
    return f"{value:.1f}%" if isinstance(value, (int, float)) else NONE


def render_benchmark_job(job: dict[str, Any]) -> str:
    """A benchmark job: its state and points, then how well the retrained regressor predicts."""
    records, points = job.get("records", 0), job.get("points")
    measured = f"{records} of {points} points" if points else f"{records} points"
    lines = [f"{job['id']} ({(job.get('request') or {}).get('model', NONE)}): {job['state']}, {measured} measured"]
    if job.get("error"):
        lines.append(f"error: {job['error']}")
    evaluation = job.get("evaluation")
    if evaluation:
        errors = evaluation.get("mean_abs_pct_error") or {}
        heuristic, regressor = errors.get("heuristic") or {}, errors.get("regressor") or {}
        lines.append(f"regressor retrained on {evaluation.get('records')} records; mean absolute error "
                     f"({evaluation.get('method')}):")
        lines.append(table(["METRIC", "HEURISTIC", "REGRESSOR"],
                           [[name, percent(heuristic.get(name)), percent(regressor.get(name))]
                            for name in regressor or heuristic]))
    elif job["state"] == "done":
        lines.append("the regressor was not retrained")
    return "\n".join(lines)
