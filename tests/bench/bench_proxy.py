"""Proxy benchmark: what the orchestrator adds on top of a fast upstream.

Side by side in one run, the same client drives a test upstream directly and
through the orchestrator (a real `python -m orchestrator` process on a temp
state directory, serving the same upstream through the `command` engine):

  non-streaming at concurrency 1 and 32, streaming (32 chunks) at 32,
  then streaming at 256 against an upstream that paces its chunks like an
  LLM (20 ms each), and cold starts of a stopped model.

It prints p50/p99 latency, time to first chunk, requests/s, the
orchestrator process's CPU time per request and the targets with PASS/MISS,
and writes the same figures as JSON with --json PATH.

  scripts/bench.sh [--json results.json] [--scale 0.5]

This file is a script, not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from core.process import die_with_this_process, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = Path(__file__).resolve().parent / "upstream.py"

CHUNKS = 32
PACED_DELAY_MS = 20.0
COLD_STARTS = 5
# A service that takes 1.0-1.5 s to start, like a small real model: cold starts
# of the fast upstream (~0.2 s) land wherever the orchestrator's health polls
# happen to fall, and a random startup samples the other phases too.
SLOW_START_MS = (1000.0, 500.0)
SCENARIO_LIMIT_S = 90.0  # no scenario may run longer than this, whatever the counts say

# The targets.
TARGET_ADDED_P50_MS = 1.0
TARGET_CPU_NONSTREAM_MS = 0.5
TARGET_CPU_STREAM_MS = 1.5
TARGET_PACED_RPS_RATIO = 0.90
TARGET_PACED_TTFC_RATIO = 1.20
TARGET_COLD_OVERHEAD_MS = 150.0


@dataclass
class Scenario:
    key: str
    title: str
    model: str  # the orchestrator's model id; direct runs go to the matching upstream
    stream: bool
    concurrency: int
    requests: int
    warmup: int
    stagger_s: float = 0.0  # spread the workers' first requests over this long


def scenarios(scale: float, paced_concurrency: int = 256) -> list[Scenario]:
    def n(count: int, concurrency: int) -> int:
        return max(concurrency, int(count * scale))

    return [
        Scenario("nonstream_c1", "non-streaming, concurrency 1", "fast", False, 1, n(5000, 1), 300),
        Scenario("nonstream_c32", "non-streaming, concurrency 32", "fast", False, 32, n(15000, 32), 640),
        Scenario("stream_c32", f"streaming {CHUNKS} chunks, concurrency 32", "fast", True, 32, n(4000, 32), 256),
        # Staggered over one stream's length, as independent users would
        # arrive: 256 streams started in the same millisecond stay in lockstep
        # (every stream's chunks due at once) and measure bursts, not streaming.
        Scenario(
            "paced_c256",
            f"paced streaming {CHUNKS} x {PACED_DELAY_MS:g} ms, concurrency {paced_concurrency}",
            "paced",
            True,
            paced_concurrency,
            n(8 * paced_concurrency, paced_concurrency),
            2 * paced_concurrency,
            stagger_s=CHUNKS * PACED_DELAY_MS / 1000,
        ),
    ]


# --- processes ---------------------------------------------------------------




class Child:
    """A process this benchmark started; stop() is safe to call twice."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("w")
        self.popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_this_process(),  # noqa: PLW1509 - one syscall
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 30.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()


def start_upstream(workdir: Path, name: str, port: int, delay_ms: float) -> Child:
    argv = [sys.executable, str(UPSTREAM), "--port", str(port), "--chunks", str(CHUNKS),
            "--chunk-delay-ms", f"{delay_ms:g}"]
    return Child(name, argv, workdir / f"{name}.log")


def start_orchestrator(workdir: Path, port: int, module: str = "orchestrator") -> Child:
    upstream_cmd = "${PYTHON} tests/bench/upstream.py --port ${PORT}" + f" --chunks {CHUNKS}"
    config = {
        "settings": {"host": "127.0.0.1", "port": port, "log_level": "warning", "shutdown_grace": 5},
        "models": {
            "fast": {"engine": "command", "cmd": upstream_cmd, "startup_timeout": 30},
            "paced": {
                "engine": "command",
                "cmd": upstream_cmd + f" --chunk-delay-ms {PACED_DELAY_MS:g}",
                "startup_timeout": 30,
            },
            "slowstart": {
                "engine": "command",
                "cmd": upstream_cmd
                + f" --startup-delay-ms {SLOW_START_MS[0]:g} --startup-jitter-ms {SLOW_START_MS[1]:g}",
                "startup_timeout": 30,
            },
        },
    }
    config_path = workdir / "models.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "MODELYARD_STATE_DIR": str(workdir / "state")}
    env.pop("MODELYARD_ENVS_DIR", None)
    argv = [sys.executable, "-m", module, "--config", str(config_path), "--port", str(port)]
    return Child("orchestrator", argv, workdir / "orchestrator.log", env)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (its threads, not its children)."""
    try:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    except psutil.Error:
        return float("nan")


# --- load generation ---------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Run:
    """One scenario against one target (direct or through the orchestrator)."""

    requests: int = 0  # measured requests issued (warm-up excluded)
    errors: int = 0  # in warm-up or measurement
    first_error: str | None = None
    window_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfc: list[float] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)  # client reads per stream (chunk coalescing)
    overhead_hdr: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # process name -> CPU seconds in the window
    others_cores: float = float("nan")  # CPU used by everything else on the machine, in cores
    timed_out: bool = False

    def summary(self) -> dict[str, Any]:
        ok = len(self.latencies)
        out: dict[str, Any] = {
            "requests": self.requests,
            "ok": ok,
            "errors": self.errors,
            "first_error": self.first_error,
            "timed_out": self.timed_out,
            "window_s": round(self.window_s, 3),
            "rps": self.requests / self.window_s if self.window_s > 0 else float("nan"),
            "p50_ms": percentile(self.latencies, 50) * 1000,
            "p99_ms": percentile(self.latencies, 99) * 1000,
            "mean_ms": statistics.fmean(self.latencies) * 1000 if self.latencies else float("nan"),
            "other_processes_cores": self.others_cores,
        }
        if self.ttfc:
            out["ttfc_p50_ms"] = percentile(self.ttfc, 50) * 1000
            out["ttfc_p99_ms"] = percentile(self.ttfc, 99) * 1000
            out["client_reads_per_stream"] = statistics.fmean(self.reads)
        if self.overhead_hdr:
            out["overhead_header_p50_ms"] = statistics.median(self.overhead_hdr)
        for name, seconds in self.cpu.items():
            out[f"cpu_{name}_ms_per_req"] = seconds * 1000 / self.requests if self.requests else float("nan")
        return out


def request_body(model: str, stream: bool) -> bytes:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": CHUNKS,
    }
    if stream:
        payload["stream"] = True
    return json.dumps(payload).encode()


HEADERS = {"content-type": "application/json"}


def machine_busy() -> float:
    """CPU seconds all cores of the machine have spent busy since boot."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


async def drive(
    session: aiohttp.ClientSession, url: str, scenario: Scenario, watch: dict[str, int], limit_s: float
) -> Run:
    """Closed loop: scenario.concurrency workers issue scenario.warmup, then
    scenario.requests requests. The measurement window runs from the issue of
    the first measured request to the issue of the last, when every worker is
    busy: requests/s is the rate requests were issued in it (equal to the
    completion rate in a closed loop), CPU is what each watched process spent
    in it, and latencies are those of the requests issued in it."""
    run = Run()
    body = request_body(scenario.model, scenario.stream)
    stream = scenario.stream
    concurrency, warmup = scenario.concurrency, scenario.warmup
    total = warmup + scenario.requests
    issued = 0
    window: dict[str, Any] = {}
    perf = time.perf_counter
    deadline = perf() + limit_s
    expected_events = CHUNKS + 1  # the chunks and [DONE]

    def snapshot() -> dict[str, Any]:
        return {"t": perf(), "busy": machine_busy(), "cpu": {name: cpu_seconds(pid) for name, pid in watch.items()}}

    def fail(reason: str) -> None:
        run.errors += 1
        if run.first_error is None:
            run.first_error = reason

    async def worker(index: int) -> None:
        nonlocal issued
        if scenario.stagger_s:
            await asyncio.sleep(scenario.stagger_s * index / concurrency)
        while issued < total:
            if perf() > deadline:
                run.timed_out = True
                return
            measured = issued >= warmup
            if issued == warmup:
                window["start"] = snapshot()
            issued += 1
            if issued == total:
                window["end"] = snapshot()
            began = perf()
            try:
                async with session.post(url, data=body, headers=HEADERS) as resp:
                    if stream:
                        first = 0.0
                        events = reads = 0
                        async for chunk in resp.content.iter_any():
                            if not first:
                                first = perf()
                            reads += 1
                            events += chunk.count(b"data:")
                    else:
                        await resp.read()
                    done = perf()
                    if resp.status != 200:
                        fail(f"HTTP {resp.status}")
                        continue
                    if stream and events != expected_events:
                        fail(f"stream had {events} events, expected {expected_events}")
                        continue
                    overhead = resp.headers.get("x-modelyard-overhead-ms")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                fail(f"{type(exc).__name__}: {exc}")
                continue
            if not measured:
                continue
            run.latencies.append(done - began)
            if stream:
                run.ttfc.append(first - began)
                run.reads.append(reads)
            if overhead is not None:
                run.overhead_hdr.append(float(overhead))

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    if "end" not in window:  # cut short by the time limit
        window["end"] = snapshot()
    if "start" in window:
        start, end = window["start"], window["end"]
        run.requests = issued - warmup
        run.window_s = end["t"] - start["t"]
        run.cpu = {name: end["cpu"][name] - start["cpu"][name] for name in watch}
        ours = sum(run.cpu.values())
        if run.window_s > 0:  # clock-tick rounding can take a quiet machine slightly below zero
            run.others_cores = max(0.0, (end["busy"] - start["busy"] - ours) / run.window_s)
    return run


async def wait_quiet(limit_s: float, threshold_cores: float = 0.15) -> float:
    """Wait (at most limit_s) until the machine is nearly idle between runs,
    so another job's burst does not land in a measurement; seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        before, t0 = machine_busy(), time.monotonic()
        await asyncio.sleep(0.5)
        if (machine_busy() - before) / (time.monotonic() - t0) < threshold_cores:
            break
    return time.monotonic() - began


async def measure(
    session: aiohttp.ClientSession, url: str, scenario: Scenario, watch: dict[str, int], quiet_wait: float
) -> Run:
    gc.collect()
    await asyncio.sleep(0.2)  # let the previous run's stray work (closing, logging) settle
    if quiet_wait > 0:
        await wait_quiet(quiet_wait)
    return await drive(session, url, scenario, watch, SCENARIO_LIMIT_S)


# --- the orchestrator's admin API --------------------------------------------


async def wait_ready(session: aiohttp.ClientSession, url: str, child: Child, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}")
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                if resp.status == 200:
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{child.name} not ready at {url} after {limit_s:g} s:\n{child.log_tail()}")


async def admin(session: aiohttp.ClientSession, base: str, method: str, path: str) -> Any:
    async with session.request(method, base + path, timeout=aiohttp.ClientTimeout(total=60)) as resp:
        data = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {data}")
        return data


async def service_info(session: aiohttp.ClientSession, base: str, model: str) -> dict[str, Any]:
    data = await admin(session, base, "GET", "/admin/services")
    for service in data["services"]:
        if service["id"] == model:
            return service  # type: ignore[no-any-return]
    raise RuntimeError(f"no service {model} in /admin/services")


async def cold_starts(session: aiohttp.ClientSession, base: str, model: str, times: int) -> dict[str, Any]:
    """Unload, then time one request to its first byte; subtract the service's
    own startup-to-healthy time (from its /health body)."""
    body = request_body(model, False)
    samples = []
    for _ in range(times):
        await admin(session, base, "POST", f"/admin/services/{model}/unload")
        info = await service_info(session, base, model)
        if info["state"] != "stopped":
            raise RuntimeError(f"{model} is {info['state']} after unload")
        await asyncio.sleep(0.3)  # let the stopped process's exit settle
        began = time.perf_counter()
        async with session.post(base + "/v1/chat/completions", data=body, headers=HEADERS,
                                timeout=aiohttp.ClientTimeout(total=60)) as resp:
            await resp.content.readany()
            first_byte = time.perf_counter() - began
            status = resp.status
            load_hdr = resp.headers.get("x-modelyard-load-ms")
            overhead_hdr = resp.headers.get("x-modelyard-overhead-ms")
            await resp.read()
        if status != 200:
            raise RuntimeError(f"cold request to {model}: HTTP {status}")
        info = await service_info(session, base, model)
        async with session.get(f"http://127.0.0.1:{info['port']}/health") as resp:
            health = await resp.json()
        own = health["ready_at"] - health["process_started"]
        samples.append(
            {
                "first_byte_ms": first_byte * 1000,
                "service_startup_ms": own * 1000,
                "overhead_ms": (first_byte - own) * 1000,
                "orchestrator_load_seconds_ms": (info["load_seconds"] or float("nan")) * 1000,
                "load_header_ms": float(load_hdr) if load_hdr else float("nan"),
                "overhead_header_ms": float(overhead_hdr) if overhead_hdr else float("nan"),
                "python_startup_ms": (health["script_started"] - health["process_started"]) * 1000,
            }
        )
    summary = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    return {"samples": samples, "median": summary}


# --- the report --------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:,.{digits}f}"
    return str(value)


def added(orch: float | None, direct: float | None, digits: int = 3) -> str:
    if orch is None or direct is None or orch != orch or direct != direct:
        return "-"
    return f"{orch - direct:+,.{digits}f}"


def report(meta: dict[str, Any], results: dict[str, Any], cold: dict[str, Any],
           targets: list[dict[str, Any]]) -> str:
    out: list[str] = []
    out.append("modelyard proxy benchmark: direct to the upstream vs through the orchestrator")
    out.append(
        f"  machine: {meta['cpus']} CPU cores, {meta['platform']}; Python {meta['python']}, "
        f"aiohttp {meta['aiohttp']}, uvloop {meta['uvloop']}"
    )
    out.append(
        f"  NOTE: the benchmark client, the upstream(s) and the orchestrator all share these {meta['cpus']} "
        "cores; figures are under contention, and the client's own cost is in every latency (direct too)."
    )
    busy = max((e[side].get("other_processes_cores", 0.0) or 0.0 for e in results.values()
                for side in ("direct", "orchestrator")), default=0.0)
    if busy == busy and busy > 0.2:
        out.append(f"  WARNING: other processes on this machine used up to {busy:.2f} cores during a run "
                   "(see the 'other processes' rows); those figures are disturbed.")
    out.append("  windows: warm-up requests first, then a steady-state window with every worker busy; "
               "the paced scenario staggers its workers' first requests over one stream's length")
    if meta.get("orchestrator_module", "orchestrator") != "orchestrator":
        out.append(f"  orchestrator: python -m {meta['orchestrator_module']} (not the stock orchestrator)")
    out.append(f"  upstream: tests/bench/upstream.py (aiohttp.web), {CHUNKS} chunks per stream; "
               f"paced model sleeps {PACED_DELAY_MS:g} ms before each chunk")
    out.append("")
    head = f"{'scenario / metric':<46}{'direct':>14}{'orchestrator':>14}{'added':>12}"
    out.append(head)
    out.append("-" * len(head))
    rows = [
        ("p50 latency ms", "p50_ms", True),
        ("p99 latency ms", "p99_ms", True),
        ("time to first chunk p50 ms", "ttfc_p50_ms", True),
        ("time to first chunk p99 ms", "ttfc_p99_ms", True),
        ("requests/s", "rps", True),
        ("orchestrator CPU ms/request", "cpu_orchestrator_ms_per_req", False),
        ("upstream CPU ms/request", "cpu_upstream_ms_per_req", True),
        ("client CPU ms/request", "cpu_client_ms_per_req", True),
        ("x-modelyard-overhead-ms p50", "overhead_header_p50_ms", False),
        ("client reads per stream (chunk coalescing)", "client_reads_per_stream", True),
        ("other processes' CPU on the machine, cores", "other_processes_cores", True),
    ]
    for key, entry in results.items():
        d, o = entry["direct"], entry["orchestrator"]
        out.append(f"{entry['title']} (n={o['requests']}, warm-up {entry['warmup']})")
        for label, metric, both in rows:
            if metric not in o and metric not in d:
                continue
            dv = d.get(metric) if both else None
            ov = o.get(metric)
            digits = 1 if metric in ("rps", "client_reads_per_stream") else 3
            if metric == "other_processes_cores":
                digits = 2
            out.append(
                f"  {label:<44}{fmt(dv, digits):>14}{fmt(ov, digits):>14}"
                f"{added(ov, dv, digits) if both else '':>12}"
            )
        for name, run in (("direct", d), ("orchestrator", o)):
            if run["errors"] or run["timed_out"]:
                out.append(f"  !! {name}: {run['errors']} errors (first: {run['first_error']}), "
                           f"timed out: {run['timed_out']}")
    for model, result in (cold or {}).items():
        if "error" in result:
            out.append(f"cold start of '{model}' FAILED: {result['error']}")
            continue
        m = result["median"]
        startup = ("fast upstream" if model == "fast" else
                   f"startup padded by {SLOW_START_MS[0]:g}-{sum(SLOW_START_MS):g} ms")
        out.append(f"cold start of a stopped model ('{model}', {startup}), median of {len(result['samples'])}")
        out.append(f"  {'request to first byte ms':<44}{'':>14}{fmt(m['first_byte_ms'], 1):>14}")
        out.append(f"  {'service own startup-to-healthy ms':<44}{'':>14}{fmt(m['service_startup_ms'], 1):>14}")
        out.append(f"  {'  of which Python start-up before the script':<44}{'':>14}"
                   f"{fmt(m['python_startup_ms'], 1):>14}")
        out.append(f"  {'orchestrator load_seconds ms (spawn->healthy)':<44}{'':>14}"
                   f"{fmt(m['orchestrator_load_seconds_ms'], 1):>14}")
        out.append(f"  {'x-modelyard-load-ms':<44}{'':>14}{fmt(m['load_header_ms'], 1):>14}")
        out.append(f"  {'cold-start overhead ms (first byte - own)':<44}{'':>14}{fmt(m['overhead_ms'], 1):>14}")
        out.append("  per run (overhead ms): " + ", ".join(fmt(s["overhead_ms"], 1) for s in result["samples"]))
    out.append("")
    head = f"{'target':<58}{'measured':>14}{'limit':>14}  result"
    out.append(head)
    out.append("-" * len(head))
    for t in targets:
        out.append(f"{t['name']:<58}{t['measured_text']:>14}{t['limit_text']:>14}  {t['result']}")
    missed = [t for t in targets if t["result"] != "PASS"]
    out.append("")
    out.append(f"{len(targets) - len(missed)} of {len(targets)} targets met" +
               (": MISSED " + "; ".join(t["name"] for t in missed) if missed else ""))
    return "\n".join(out)


def evaluate(results: dict[str, Any], cold: dict[str, Any]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []

    def target(name: str, value: float, limit: float, ok_if_below: bool, unit: str, valid: bool,
               show: str | None = None, limit_show: str | None = None) -> None:
        if not valid or value != value:
            result = "MISS (no valid data)"
        elif ok_if_below:
            result = "PASS" if value <= limit else "MISS"
        else:
            result = "PASS" if value >= limit else "MISS"
        op = "<=" if ok_if_below else ">="
        targets.append(
            {
                "name": name,
                "measured": value,
                "limit": limit,
                "result": result,
                "measured_text": show or f"{fmt(value)} {unit}",
                "limit_text": limit_show or f"{op} {limit:g} {unit}",
            }
        )

    def clean(key: str) -> bool:
        entry = results.get(key)
        if not entry:
            return False
        return all(not entry[side]["errors"] and not entry[side]["timed_out"] for side in ("direct", "orchestrator"))

    if "nonstream_c1" in results:
        d, o = results["nonstream_c1"]["direct"], results["nonstream_c1"]["orchestrator"]
        target("added p50 latency, non-streaming, c=1", o["p50_ms"] - d["p50_ms"], TARGET_ADDED_P50_MS, True,
               "ms", clean("nonstream_c1"), limit_show=f"< {TARGET_ADDED_P50_MS:g} ms")
    for key, label in (("nonstream_c1", "c=1"), ("nonstream_c32", "c=32")):
        if key in results:
            o = results[key]["orchestrator"]
            target(f"orchestrator CPU per non-streamed request, {label}", o["cpu_orchestrator_ms_per_req"],
                   TARGET_CPU_NONSTREAM_MS, True, "ms", clean(key))
    if "stream_c32" in results:
        o = results["stream_c32"]["orchestrator"]
        target(f"orchestrator CPU per {CHUNKS}-chunk stream, c=32", o["cpu_orchestrator_ms_per_req"],
               TARGET_CPU_STREAM_MS, True, "ms", clean("stream_c32"))
    if "paced_c256" in results:
        d, o = results["paced_c256"]["direct"], results["paced_c256"]["orchestrator"]
        c = results["paced_c256"]["concurrency"]
        target(f"(extra) orchestrator CPU per {CHUNKS}-chunk paced stream, c={c}", o["cpu_orchestrator_ms_per_req"],
               TARGET_CPU_STREAM_MS, True, "ms", clean("paced_c256"))
        ratio = o["rps"] / d["rps"] if d["rps"] else float("nan")
        target(f"paced streams c={c}: requests/s vs direct", ratio * 100, TARGET_PACED_RPS_RATIO * 100, False, "%",
               clean("paced_c256"), show=f"{ratio * 100:.1f} %")
        ttfc = o["ttfc_p50_ms"] / d["ttfc_p50_ms"] - 1 if d.get("ttfc_p50_ms") else float("nan")
        target(f"paced streams c={c}: time to first chunk p50 vs direct", ttfc * 100,
               (TARGET_PACED_TTFC_RATIO - 1) * 100, True, "%", clean("paced_c256"), show=f"{ttfc * 100:+.1f} %",
               limit_show=f"<= +{(TARGET_PACED_TTFC_RATIO - 1) * 100:g} %")
    for model, result in (cold or {}).items():
        if "error" in result:
            target(f"cold-start overhead, '{model}'", float("nan"), TARGET_COLD_OVERHEAD_MS, True, "ms", False,
                   show="failed", limit_show=f"< {TARGET_COLD_OVERHEAD_MS:g} ms")
            continue
        target(f"cold-start overhead, '{model}' (median of {len(result['samples'])})", result["median"]["overhead_ms"],
               TARGET_COLD_OVERHEAD_MS, True, "ms", True, limit_show=f"< {TARGET_COLD_OVERHEAD_MS:g} ms")
    return targets


# --- main ----------------------------------------------------------------------


async def benchmark(args: argparse.Namespace, workdir: Path, children: list[Child]) -> int:
    began = time.monotonic()
    # SIGTERM cancels the run; main()'s finally stops every process we started.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    ports = {"fast": free_port(), "paced": free_port(), "orch": free_port()}
    direct = {
        "fast": start_upstream(workdir, "direct-fast", ports["fast"], 0.0),
        "paced": start_upstream(workdir, "direct-paced", ports["paced"], PACED_DELAY_MS),
    }
    children.extend(direct.values())
    orch = start_orchestrator(workdir, ports["orch"], args.orchestrator_module)
    children.append(orch)
    base = f"http://127.0.0.1:{ports['orch']}"

    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=60, sock_read=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        for model, child in direct.items():
            await wait_ready(session, f"http://127.0.0.1:{ports[model]}/health", child)
        await wait_ready(session, base + "/ready", orch)
        upstream_pids: dict[str, int] = {}
        for model in ("fast", "paced"):
            info = await admin(session, base, "POST", f"/admin/services/{model}/load")
            upstream_pids[model] = int(info["pid"])
        me = os.getpid()

        selected = [s for s in scenarios(args.scale, args.paced_concurrency) if not args.only or s.key in args.only]
        results: dict[str, Any] = {}
        for scenario in selected:
            print(f"... {scenario.title}: {scenario.requests} requests per side", file=sys.stderr, flush=True)
            d_run = await measure(
                session, f"http://127.0.0.1:{ports[scenario.model]}/v1/chat/completions", scenario,
                {"upstream": direct[scenario.model].pid, "client": me}, args.quiet_wait,
            )
            o_run = await measure(
                session, base + "/v1/chat/completions", scenario,
                {"orchestrator": orch.pid, "upstream": upstream_pids[scenario.model], "client": me},
                args.quiet_wait,
            )
            results[scenario.key] = {
                "title": scenario.title,
                "concurrency": scenario.concurrency,
                "stream": scenario.stream,
                "warmup": scenario.warmup,
                "direct": d_run.summary(),
                "orchestrator": o_run.summary(),
            }

        cold: dict[str, Any] = {}
        if not args.no_cold:
            for model in ("fast", "slowstart"):
                print(f"... cold starts of '{model}': {COLD_STARTS}", file=sys.stderr, flush=True)
                try:
                    cold[model] = await cold_starts(session, base, model, COLD_STARTS)
                except (RuntimeError, KeyError, TypeError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    cold[model] = {"error": f"{type(exc).__name__}: {exc}"}

    targets = evaluate(results, cold)
    meta = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "uvloop": _uvloop_version(),
        "runtime_s": round(time.monotonic() - began, 1),
        "orchestrator_module": args.orchestrator_module,
    }
    print(report(meta, results, cold, targets))
    print(f"\nbenchmark runtime: {meta['runtime_s']:.1f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"meta": meta, "scenarios": results, "cold_start": cold, "targets": targets},
                       indent=2, default=_json_default)
        )
        print(f"results written to {args.json}")
    if args.strict and any(t["result"] != "PASS" for t in targets):
        return 1
    return 0


def _json_default(value: Any) -> Any:
    return str(value)


def _uvloop_version() -> str:
    try:
        import uvloop

        return str(uvloop.__version__)
    except ImportError:
        return "not installed (asyncio loop)"


def run_benchmark(benchmark: Any, args: argparse.Namespace, prefix: str, loop_runner: Any = asyncio.run) -> int:
    """Run the coroutine benchmark(args, workdir, children) in a fresh temp directory (under
    args.tmpdir if the suite has that option), and stop what it started however it ends: the
    children in reverse (an orchestrator started after its upstreams goes first, stopping its
    own services). Exit status: its own; 2 on a RuntimeError (said on stderr); 143 when
    interrupted. The directory is removed unless args.keep."""

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=getattr(args, "tmpdir", None)))
    children: list[Child] = []
    try:
        return loop_runner(benchmark(args, workdir, children))
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("bench: interrupted; stopping what it started", file=sys.stderr)
        return 143
    finally:
        for child in reversed(children):
            child.stop()
        if args.keep:
            print(f"logs and state kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the request counts (default 1)")
    parser.add_argument("--only", action="append", metavar="SCENARIO",
                        help="run only these scenarios: " + ", ".join(s.key for s in scenarios(1.0)))
    parser.add_argument("--quiet-wait", type=float, default=10.0, metavar="SECONDS",
                        help="before each run, wait up to this long for other jobs on the machine to go "
                        "quiet (default 10; 0: do not wait)")
    parser.add_argument("--paced-concurrency", type=int, default=256, metavar="N",
                        help="concurrency of the paced scenario (default 256, the issue's figure)")
    parser.add_argument("--orchestrator-module", default="orchestrator", metavar="MODULE",
                        help="run `python -m MODULE` as the orchestrator, for A/B experiments (default orchestrator)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-start measurement")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (logs, state)")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    if not 1 <= args.paced_concurrency <= 1024:
        parser.error("--paced-concurrency must be in [1, 1024]")
    if not 0 <= args.quiet_wait <= 60:
        parser.error("--quiet-wait must be in [0, 60]")

    try:
        import uvloop

        loop_runner = uvloop.run
    except ImportError:
        loop_runner = asyncio.run
    return run_benchmark(benchmark, args, "modelyard-bench-", loop_runner)


if __name__ == "__main__":
    sys.exit(main())
