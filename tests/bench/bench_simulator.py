"""Simulator benchmark (models/simulator/): how fast it predicts and searches,
and how close its predictions come to vLLM measured on this host in the same
run.

  speed     one full simulate() of Llama-3.1-70B on 8 x H100-SXM (catalog),
            quantizations none/fp8/int4 (a space of 27,648 configurations, so
            the genetic search), seed fixed, median of --runs runs:
            - with the heuristic alone (predictor None);
            - with a regressor trained on the shipped records as predictor. It
              corrects only devices it has records of (host-cpu), so on the
              H100s the heuristic's numbers stand; it is also timed on this
              host's CPU for SmolLM2-135M (216 configurations, the genetic
              search forced), where every configuration goes through XGBoost,
              beside the heuristic alone on the same space;
            - memory validation: validate_parallelism + memory_breakdown of one
              configuration (median over many calls).
            Baseline in the same run: the exhaustive search over the same
            70B space (time, evaluations), and whether the genetic search found
            its optimum (the same best Evaluation.key()), with seed 0 and over
            seeds 0-19.
  accuracy  SmolLM2-135M on vLLM-CPU, started as the appliance starts it
            (models/vllm/server.py ... -- --max-model-len 2048), measured with
            models/simulator/benchmark.py's run_sweep at concurrency 1, 4 and
            16, input/output tokens 128/64 and 512/128 (at least --requests
            requests per point; a warm-up request first). This host's CPU is
            measured afresh (hardware.measure_cpu on a temp state directory)
            before vLLM starts, and again while vLLM idles: the first figure
            feeds the predictions, since vLLM-CPU's idle process at times
            keeps about a core busy (seen here in some seconds, not in
            others), which on a 2-core host halves the matmul rate the second
            one sees (both are printed, with the cores busy just before each). The deployment is vLLM's CPU defaults
            (engine_defaults("cpu")). Predicted vs measured TTFT, TPOT and total
            throughput: (a) the heuristic alone, (b) the regressor trained on
            the shipped records less those of the point predicted (same
            concurrency and lengths). Also the leave-one-out error over every
            shipped record. The heuristic's CPU constants (PROFILES["cpu"])
            were fitted to the shipped records of this same host, so its
            figures are not out-of-sample; the regressor's are.
            With --skip-measure, or where the vLLM environment or the model is
            missing (said so, not an error), the shipped records of the same
            points stand in for the measurement, each predicted with its own
            recorded device and deployment.

Targets (the issue): heuristic simulation under 1 s (the seed's: 10 s),
regressor plus genetic search under 10 s (seed: 60 s), memory validation under
50 ms (seed: 1 s); predictions within 25% of the measurement for the heuristic
and 15% for the regressor (PASS/MISS per point; the mean absolute error per
metric is the target --strict judges).

  scripts/bench.sh simulator [--runs N] [--requests N] [--skip-measure] [--model-dir DIR]
                             [--quiet-wait S] [--json results.json] [--strict] [--keep]

Runs with the simulator's environment (state/envs/simulator: numpy, xgboost,
deap, httpx); vLLM runs with state/envs/vllm (MODELYARD_VLLM_PYTHON overrides
it), the model is state/models/smollm2-135m (MODELYARD_SMOLLM2_DIR). It writes
nothing under state/. About 2 minutes on 2 cores with the measurement (vLLM
takes 30-60 s to start), 10 s without.

This file is a script, not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from models.simulator.benchmark import BenchmarkError, PointResult, SweepPoint, run_sweep  # noqa: E402
from models.simulator.deployment import (  # noqa: E402
    Deployment,
    Topology,
    Workload,
    engine_defaults,
    validate_parallelism,
)
from models.simulator.hardware import Device, load_catalog, measure_cpu  # noqa: E402
from models.simulator.heuristic import PROFILES, predict  # noqa: E402
from models.simulator.memory import memory_breakdown  # noqa: E402
from models.simulator.model_spec import ModelSpec, load_model_spec  # noqa: E402
from models.simulator.records import Record, shipped_records  # noqa: E402
from models.simulator.regressor import Regressor, leave_one_out  # noqa: E402
from models.simulator.search import space_size  # noqa: E402
from models.simulator.simulate import DeviceOutcome, SpaceLimits, build_space, simulate  # noqa: E402

try:
    from core.process import free_port
except ImportError:  # core.process needs aiohttp and psutil, which the simulator's environment lacks

    def free_port() -> int:
        """A port nothing listens on right now (the kernel picks it), as core.process.free_port."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


# The targets, seconds: ours, and the seed design's.
SPEED_TARGETS = {"heuristic": (1.0, 10.0), "regressor": (10.0, 60.0), "memory": (0.05, 1.0)}
HEURISTIC_TOLERANCE = 0.25
REGRESSOR_TOLERANCE = 0.15

FIXTURES = ROOT / "tests" / "fixtures" / "hf_configs"
BIG_MODEL = "Llama-3.1-70B"
BIG_DEVICE, BIG_COUNT = "H100-SXM", 8
QUANTIZATIONS = (None, "fp8", "int4")
SEED = 0
SEED_SWEEP = 20  # seeds 0..19: how often the genetic search finds the exhaustive optimum
# A chat service: 1k-token prompts, 256-token answers, 32 users; the first token within 1 s,
# 30 tokens/s each, an answer within 15 s.
BIG_WORKLOAD = Workload(1024, 256, concurrency=32, target_ttft_ms=1000, target_throughput_per_user=30,
                        target_e2e_latency_s=15)
CPU_WORKLOAD = Workload(128, 64, concurrency=16, target_ttft_ms=2000, target_throughput_per_user=20)
MEMORY_CALLS = 2000
MEMORY_DEPLOYMENT = Deployment(tensor_parallel=8, max_num_seqs=256, block_size=16, quantization="fp8")

CONCURRENCIES = (1, 4, 16)
LENGTHS = ((128, 64), (512, 128))
METRICS = (("ttft_ms", "TTFT", "ms"), ("tpot_ms", "TPOT", "ms"), ("total_throughput", "total throughput", "tokens/s"))
MODEL_ID = "smollm2"
MAX_MODEL_LEN = "2048"
HEALTH_LIMIT_S = 240.0
QUIET_CORES = 0.3  # other processes kept more cores than this busy: a CPU measurement taken then is suspect
STOP_GRACE_S = 20.0


def vllm_python() -> Path:
    """vLLM's interpreter: MODELYARD_VLLM_PYTHON, else $MODELYARD_ENVS_DIR/vllm."""
    if os.environ.get("MODELYARD_VLLM_PYTHON"):
        return Path(os.environ["MODELYARD_VLLM_PYTHON"])
    state = Path(os.environ.get("MODELYARD_STATE_DIR", ROOT / "state"))
    return Path(os.environ.get("MODELYARD_ENVS_DIR", state / "envs")) / "vllm" / "bin" / "python"


def default_model_dir() -> Path:
    return Path(os.environ.get("MODELYARD_SMOLLM2_DIR", ROOT / "state" / "models" / "smollm2-135m"))


def missing_for_measurement(model_dir: Path) -> list[str]:
    """What a real measurement needs and this host lacks, in words (empty: nothing)."""
    missing = []
    python = vllm_python()
    if not python.exists():
        missing.append(f"no vLLM environment at {python} (./scripts/install.sh --engine vllm, "
                       "or set MODELYARD_VLLM_PYTHON)")
    if not (model_dir / "config.json").is_file():
        missing.append(f"no SmolLM2-135M model at {model_dir} (no config.json; ./scripts/install.sh downloads it, "
                       "or set MODELYARD_SMOLLM2_DIR)")
    elif not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin")):
        missing.append(f"no weights (*.safetensors or *.bin) in {model_dir}")
    return missing


# --- speed -------------------------------------------------------------------


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy since boot (/proc/stat; nan where there is none)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait
    except (OSError, ValueError, IndexError):
        return float("nan")


def busy_cores(seconds: float = 2.0) -> float:
    """Cores the whole machine kept busy over the next `seconds` (this process sleeps meanwhile)."""
    before = machine_busy_s()
    time.sleep(seconds)
    return max(0.0, machine_busy_s() - before) / seconds


def group_cpu_s(pgid: int | None) -> float:
    """CPU seconds used so far by the live processes of process group pgid (0 for None)."""
    if pgid is None:
        return 0.0
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid:  # state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


class Others:
    """Cores other processes (not this one, nor process group `pgid`) kept busy since it was made.
    /proc/stat counts in ticks (10 ms), so only a window of a second or more gives a usable figure."""

    def __init__(self, pgid: int | None = None) -> None:
        self.pgid = pgid
        self.busy, self.ours, self.group = machine_busy_s(), time.process_time(), group_cpu_s(pgid)
        self.began = time.perf_counter()

    def cores(self) -> float:
        ours = time.process_time() - self.ours + group_cpu_s(self.pgid) - self.group
        return max(0.0, machine_busy_s() - self.busy - ours) / (time.perf_counter() - self.began)


def timed(run: Callable[[], Any], runs: int) -> dict[str, Any]:
    """The median seconds of `runs` runs, every run's, and the last run's result."""
    seconds, result = [], None
    for _ in range(runs):
        began = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - began)
    return {"median_s": statistics.median(seconds), "runs_s": seconds, "result": result}


def outcome_summary(outcome: DeviceOutcome) -> dict[str, Any]:
    result = outcome.result
    best = result.best[0] if result.best else None
    prediction = best.detail["prediction"] if best else None
    return {"method": result.method, "space": result.space_size, "evaluations": result.evaluations,
            "invalid": result.invalid, "generations": result.generations,
            "best_key": list(best.key()) if best else None, "best_config": best.config if best else None,
            "best_method": prediction.method if prediction else None}


def speed_target(name: str, kind: str, value: float) -> dict[str, Any]:
    ours, seed = SPEED_TARGETS[kind]
    return {"name": name, "value": value, "unit": "s", "limit": ours, "seed_limit": seed,
            "result": "PASS" if value < ours else "MISS", "seed_result": "PASS" if value < seed else "MISS"}


def bench_speed(args: argparse.Namespace, cpu: Device, small: ModelSpec, records: list[Record]) -> dict[str, Any]:
    big = load_model_spec(FIXTURES / BIG_MODEL, BIG_MODEL)
    h100 = Topology(load_catalog()[BIG_DEVICE], devices_per_node=BIG_COUNT)
    host = Topology(cpu)
    limits = SpaceLimits(quantizations=QUANTIZATIONS)
    results: dict[str, Any] = {"big_space": space_size(build_space(big, h100, limits)),
                               "cpu_space": space_size(build_space(small, host, limits))}

    def run_big(predictor: Any, method: str = "auto", seed: int | None = SEED) -> DeviceOutcome:
        return simulate(big, [h100], BIG_WORKLOAD, limits=limits, predictor=predictor, method=method,
                        seed=seed)[0]

    def run_cpu(predictor: Any) -> DeviceOutcome:
        # 216 configurations: "auto" would go exhaustive; the genetic search is what is timed.
        return simulate(small, [host], CPU_WORKLOAD, limits=limits, predictor=predictor, method="genetic",
                        seed=SEED)[0]

    others = Others()
    began = time.perf_counter()
    regressor = Regressor.train(records)
    results["train_s"] = time.perf_counter() - began
    results["trained_on"] = regressor.trained_on

    def with_regressor(m: Any, t: Any, d: Any, w: Any, h: Any) -> Any:
        return regressor.predict(m, t, d, w, h)

    rows = {
        "heuristic_big": (lambda: run_big(None)),
        "regressor_big": (lambda: run_big(with_regressor)),
        "heuristic_cpu": (lambda: run_cpu(None)),
        "regressor_cpu": (lambda: run_cpu(with_regressor)),
    }
    rows["exhaustive_big"] = lambda: run_big(None, method="exhaustive", seed=None)
    for key, run in rows.items():
        figures = timed(run, 1 if key == "exhaustive_big" else args.runs)
        outcome = figures.pop("result")
        results[key] = {**figures, **outcome_summary(outcome)}
    optimum = results["exhaustive_big"]["best_key"]
    results["ga_found_optimum"] = results["heuristic_big"]["best_key"] == optimum
    found, evaluations = 0, []
    for seed in range(SEED_SWEEP):
        summary = outcome_summary(run_big(None, method="genetic", seed=seed))
        found += summary["best_key"] == optimum
        evaluations.append(summary["evaluations"])
    results["seed_sweep"] = {"seeds": SEED_SWEEP, "found": found, "mean_evaluations": statistics.mean(evaluations)}

    calls = []
    for _ in range(MEMORY_CALLS):
        began = time.perf_counter()
        reasons = validate_parallelism(big, h100, MEMORY_DEPLOYMENT)
        memory = memory_breakdown(big, h100, MEMORY_DEPLOYMENT, BIG_WORKLOAD)
        calls.append(time.perf_counter() - began)
    results["memory"] = {"median_s": statistics.median(calls), "p99_s": sorted(calls)[int(0.99 * len(calls))],
                         "calls": len(calls), "reasons": reasons, "fits": memory.fits,
                         "per_device_gb": memory.total_gb}
    results["other_cores"] = others.cores()
    results["targets"] = [
        speed_target("heuristic simulation (70B, 8 x H100, genetic)", "heuristic",
                     results["heuristic_big"]["median_s"]),
        speed_target("regressor + genetic search (70B, 8 x H100)", "regressor", results["regressor_big"]["median_s"]),
        speed_target("regressor + genetic search (SmolLM2, host-cpu)", "regressor",
                     results["regressor_cpu"]["median_s"]),
        speed_target("memory validation (one configuration)", "memory", results["memory"]["median_s"]),
    ]
    return results


# --- the measurement -----------------------------------------------------------


class StartError(RuntimeError):
    """vLLM did not become healthy; log_tail holds the end of its log."""

    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(message)
        self.log_tail = log_tail


class VllmServer:
    """vLLM through the appliance's launcher, in its own process group (vLLM starts engine-core children)."""

    def __init__(self, model_dir: Path, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "vllm.log"
        argv = [str(vllm_python()), str(ROOT / "models" / "vllm" / "server.py"), "--port", str(self.port),
                "--model-path", str(model_dir), "--model-id", MODEL_ID, "--", "--max-model-len", MAX_MODEL_LEN]
        with self.log.open("wb") as log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=ROOT, start_new_session=True)
        self.pgid = self.popen.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def wait_healthy(self) -> float:
        """Seconds until GET /health answered 200; RuntimeError if vLLM exits or takes too long."""
        began = time.perf_counter()
        with httpx.Client(timeout=5, trust_env=False) as client:
            while time.perf_counter() - began < HEALTH_LIMIT_S:
                if self.popen.poll() is not None:
                    raise StartError(f"vLLM exited with {self.popen.returncode} before it was healthy",
                                     self.log_tail())
                try:
                    if client.get(self.url + "/health").status_code == 200:
                        return time.perf_counter() - began
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        raise StartError(f"vLLM not healthy within {HEALTH_LIMIT_S:g} s", self.log_tail())

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL to what is left after STOP_GRACE_S."""
        try:
            os.killpg(self.pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 5
        while self._group_alive() and time.monotonic() < deadline and self.popen.poll() is not None:
            time.sleep(0.1)  # the engine-core children follow their parent
        if self._group_alive():
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait()


def measure_host(directory: Path, quiet_wait: float = 0.0) -> dict[str, Any]:
    """A fresh measurement of this CPU (an empty state directory: no cached figures), with the cores
    other processes kept busy just before it; first waiting up to quiet_wait seconds for them to go quiet."""
    deadline = time.monotonic() + quiet_wait
    busy = busy_cores()
    while busy > QUIET_CORES and time.monotonic() < deadline:
        busy = busy_cores()
    began = time.perf_counter()
    device = measure_cpu(directory)
    return {"device": device, "busy_before": busy, "seconds": time.perf_counter() - began}


def measure(args: argparse.Namespace, workdir: Path, servers: list[VllmServer]) -> dict[str, Any]:
    """Measure this CPU, start vLLM, measure the CPU again while it idles, sweep the points, stop it."""
    quiet = measure_host(workdir / "state-quiet", args.quiet_wait)
    server = VllmServer(args.model_dir, workdir)
    servers.append(server)
    print(f"starting vLLM on port {server.port} (models/vllm/server.py ... -- --max-model-len {MAX_MODEL_LEN}) ...",
          flush=True)
    start_s = server.wait_healthy()
    print(f"vLLM healthy after {start_s:.1f} s; measuring this CPU again while it idles ...", flush=True)
    idle = measure_host(workdir / "state-idle")
    points = [SweepPoint(concurrency, i, o) for i, o in LENGTHS for concurrency in CONCURRENCIES]
    print(f"sweeping {len(points)} points ...", flush=True)
    began, others = time.perf_counter(), Others(server.pgid)
    results: list[PointResult] = asyncio.run(run_sweep(server.url, MODEL_ID, points,
                                                       requests_per_point=args.requests))
    sweep_s, other_cores = time.perf_counter() - began, others.cores()
    server.stop()
    servers.remove(server)
    return {"quiet": quiet, "idle": idle, "start_s": start_s, "sweep_s": sweep_s, "other_cores": other_cores,
            "points": [result.as_dict() for result in results]}


# --- accuracy ------------------------------------------------------------------


def point_key(workload: Workload) -> tuple[int, int, int]:
    return workload.concurrency, workload.input_tokens, workload.output_tokens


def shipped_points(records: list[Record]) -> list[Record]:
    """The shipped records of the bench's points, at vLLM's CPU defaults, in the sweep's order."""
    default = engine_defaults("cpu")
    by_key = {point_key(r.workload): r for r in records if r.deployment == default}
    wanted = [(c, i, o) for i, o in LENGTHS for c in CONCURRENCIES]
    return [by_key[key] for key in wanted if key in by_key]


def bench_accuracy(records: list[Record], cases: list[dict[str, Any]]) -> dict[str, Any]:
    """cases: {model, device, deployment, workload, measured{metric}, ...}; predictions per metric."""
    regressors: dict[tuple[int, int, int], Regressor] = {}
    rows = []
    for case in cases:
        key = point_key(case["workload"])
        if key not in regressors:
            regressors[key] = Regressor.train([r for r in records if point_key(r.workload) != key])
        topology = Topology(case["device"])
        heuristic = predict(case["model"], topology, case["deployment"], case["workload"])
        corrected = regressors[key].predict(case["model"], topology, case["deployment"], case["workload"], heuristic)
        if corrected.method != "regressor":
            raise RuntimeError(f"the regressor did not correct device {case['device'].name!r}")
        row: dict[str, Any] = {"concurrency": key[0], "input_tokens": key[1], "output_tokens": key[2],
                               "trained_on": regressors[key].trained_on}
        for metric, _, _ in METRICS:
            measured = case["measured"][metric]
            h, r = getattr(heuristic, metric), getattr(corrected, metric)
            row[metric] = {"measured": measured, "heuristic": h, "regressor": r,
                           "heuristic_error": h / measured - 1, "regressor_error": r / measured - 1}
        rows.append(row)
    means = {metric: {method: statistics.mean(abs(row[metric][f"{method}_error"]) for row in rows)
                      for method in ("heuristic", "regressor")} for metric, _, _ in METRICS}
    return {"rows": rows, "mean_abs_error": means}


# --- report --------------------------------------------------------------------


def fmt_s(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} us"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_value(value: float) -> str:
    return f"{value:,.1f}" if value < 10_000 else f"{value:,.0f}"


def verdict(error: float, tolerance: float) -> str:
    return "PASS" if abs(error) <= tolerance else "MISS"


def report_speed(speed: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nspeed: simulate() of {BIG_MODEL} on {BIG_COUNT} x {BIG_DEVICE} (catalog), quantizations "
          f"none/fp8/int4, {speed['big_space']:,} configurations, seed {SEED}; median of {args.runs} runs")
    w = BIG_WORKLOAD
    print(f"  workload: {w.input_tokens}/{w.output_tokens} tokens, {w.concurrency} users; targets TTFT "
          f"{w.target_ttft_ms:g} ms, {w.target_throughput_per_user:g} tokens/s per user, e2e "
          f"{w.target_e2e_latency_s:g} s")
    print(f"{'search':<44} {'median':>9} {'evals':>6} {'invalid':>7} {'gens':>4}  "
          f"{'best (error, $/Mtok, tok/s/user)':<34} method")
    labels = (("heuristic_big", "genetic, heuristic"), ("regressor_big", "genetic, regressor (heuristic stands)"),
              ("exhaustive_big", "baseline: exhaustive, heuristic"))
    for key, label in labels:
        row = speed[key]
        best = row["best_key"]
        shown = f"({best[0]:g}, {best[1]:.3f}, {-best[2]:.1f})" if best else "none"
        print(f"{label:<44} {fmt_s(row['median_s']):>9} {row['evaluations']:>6,} {row['invalid']:>7,} "
              f"{row['generations']:>4}  {shown:<34} {row['best_method'] or '-'}")
    ga, ex = speed["heuristic_big"], speed["exhaustive_big"]
    print(f"  genetic best:    {ga['best_config']}")
    print(f"  exhaustive best: {ex['best_config']}")
    sweep = speed["seed_sweep"]
    print(f"  the genetic search found the exhaustive optimum with seed {SEED}: "
          f"{'yes' if speed['ga_found_optimum'] else 'no'}; over seeds 0-{sweep['seeds'] - 1}: "
          f"{sweep['found']} of {sweep['seeds']} (mean {sweep['mean_evaluations']:.0f} evaluations, "
          f"{sweep['mean_evaluations'] / ex['evaluations']:.1%} of the space); genetic "
          f"{ex['median_s'] / ga['median_s']:.1f}x faster than exhaustive")
    print(f"\nSmolLM2-135M on this host's CPU (host-cpu, {speed['cpu_space']} configurations, genetic search forced; "
          f"the regressor corrects every one)")
    print(f"{'search':<44} {'median':>9} {'evals':>6} {'invalid':>7} {'gens':>4}  method")
    for key, label in (("heuristic_cpu", "baseline: genetic, heuristic"), ("regressor_cpu", "genetic, regressor")):
        row = speed[key]
        print(f"{label:<44} {fmt_s(row['median_s']):>9} {row['evaluations']:>6,} {row['invalid']:>7,} "
              f"{row['generations']:>4}  {row['best_method']}")
    per_config = (speed["regressor_cpu"]["median_s"] - speed["heuristic_cpu"]["median_s"]) \
        / max(speed["regressor_cpu"]["evaluations"], 1)
    print(f"  the regressor adds {fmt_s(per_config)} per configuration; training it on {speed['trained_on']} "
          f"records took {fmt_s(speed['train_s'])} (once, not per simulation)")
    memory = speed["memory"]
    print(f"\nmemory validation: validate_parallelism + memory_breakdown of {BIG_MODEL}, tensor parallel 8, fp8, "
          f"max_num_seqs 256 on {BIG_DEVICE}: median {fmt_s(memory['median_s'])}, p99 {fmt_s(memory['p99_s'])} "
          f"over {memory['calls']} calls ({memory['per_device_gb']:.1f} GB per device, "
          f"{'fits' if memory['fits'] else 'does not fit'})")
    noisy = speed["other_cores"] > QUIET_CORES
    print(f"  other processes kept {speed['other_cores']:.2f} cores busy over these timings"
          + (": the figures are noisy" if noisy else ""))
    print(f"\n{'speed target':<50} {'median':>9} {'ours':>8} {'':>4} {'seed':>8}")
    flag = "  (noisy)" if noisy else ""
    for target in speed["targets"]:
        print(f"{target['name']:<50} {fmt_s(target['value']):>9} {'< ' + fmt_s(target['limit']):>8} "
              f"{target['result']:>4} {'< ' + fmt_s(target['seed_limit']):>8} {target['seed_result']:>4}{flag}")


def report_measurement(measured: dict[str, Any]) -> None:
    noisy = measured["other_cores"] > QUIET_CORES
    print(f"\nmeasured: vLLM healthy after {measured['start_s']:.1f} s; sweep took {measured['sweep_s']:.1f} s; "
          f"other processes (not vLLM, not this client) kept {measured['other_cores']:.2f} cores busy meanwhile"
          + (": the measurement is noisy" if noisy else ""))
    print(f"{'conc':>4} {'in/out':>8} {'requests':>8} {'failed':>6} {'prompt tok':>10} {'output tok':>10} "
          f"{'TTFT ms':>9} {'TPOT ms':>8} {'e2e s':>7} {'tok/s/user':>10} {'total tok/s':>11}")
    for p in measured["points"]:
        print(f"{p['concurrency']:>4} {p['input_tokens']:>4}/{p['output_tokens']:<3} {p['requests']:>8} "
              f"{p['failed']:>6} {p['prompt_tokens']:>10.1f} {p['completion_tokens']:>10.1f} {p['ttft_ms']:>9.1f} "
              f"{p['tpot_ms']:>8.2f} {p['e2e_latency_s']:>7.2f} {p['throughput_per_user']:>10.1f} "
              f"{p['total_throughput']:>11.1f}")


def report_accuracy(accuracy: dict[str, Any], source: str) -> list[dict[str, Any]]:
    targets = []
    h_tol, r_tol = HEURISTIC_TOLERANCE, REGRESSOR_TOLERANCE
    for metric, title, unit in METRICS:
        print(f"\n{title} ({unit}), predicted vs {source}")
        print(f"{'conc':>4} {'in/out':>8} {'measured':>10} {'heuristic':>10} {'error':>7} {f'<={h_tol:.0%}':>5} "
              f"{'regressor':>10} {'error':>7} {f'<={r_tol:.0%}':>5}")
        for row in accuracy["rows"]:
            v = row[metric]
            print(f"{row['concurrency']:>4} {row['input_tokens']:>4}/{row['output_tokens']:<3} "
                  f"{fmt_value(v['measured']):>10} {fmt_value(v['heuristic']):>10} {v['heuristic_error']:>+7.1%} "
                  f"{verdict(v['heuristic_error'], h_tol):>5} {fmt_value(v['regressor']):>10} "
                  f"{v['regressor_error']:>+7.1%} {verdict(v['regressor_error'], r_tol):>5}")
        means = accuracy["mean_abs_error"][metric]
        print(f"{'mean |error|':>24} {'':>10} {means['heuristic']:>7.1%} {verdict(means['heuristic'], h_tol):>5} "
              f"{'':>10} {means['regressor']:>7.1%} {verdict(means['regressor'], r_tol):>5}")
        for method, tolerance in (("heuristic", h_tol), ("regressor", r_tol)):
            targets.append({"name": f"{title}: {method}, mean |error|", "value": means[method], "unit": "share",
                            "limit": tolerance, "result": verdict(means[method], tolerance)})
    return targets


def report_loo(loo: dict[str, Any]) -> None:
    print(f"\nleave-one-out over all {loo['records']} shipped records (each predicted by a regressor trained on "
          "the others), mean |error|:")
    names = list(loo["mean_abs_pct_error"]["heuristic"])
    print(f"{'method':<30}" + "".join(f"{name:>20}" for name in names))
    for method, label in (("heuristic", "heuristic (in-sample)"), ("regressor", "regressor (left out)")):
        print(f"{label:<30}" + "".join(f"{loo['mean_abs_pct_error'][method][name]:>19.1f}%" for name in names))


def describe_device(device: Device) -> str:
    return (f"{device.bandwidth_gbps:g} GB/s memory bandwidth (numpy copy), {device.fp16_tflops:g} TFLOPS "
            f"(float32 matmul), {device.memory_gb:g} GiB")


# --- main ------------------------------------------------------------------------


def benchmark(args: argparse.Namespace, workdir: Path, servers: list[VllmServer]) -> int:
    began = time.perf_counter()
    records = shipped_records()
    if not records:
        raise RuntimeError("no shipped records (models/simulator/data/measured.jsonl)")
    cpu_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor() or platform.machine()) \
        if Path("/proc/cpuinfo").is_file() else platform.machine()
    print(f"simulator benchmark: {os.cpu_count()} cores ({cpu_name}), Python {sys.version.split()[0]}, "
          f"{len(records)} shipped records")
    status = 0
    results: dict[str, Any] = {"meta": {"cores": os.cpu_count(), "cpu": cpu_name, "runs": args.runs,
                                        "requests": args.requests, "model_dir": str(args.model_dir)}}
    notes: list[str] = []

    measured = None
    if args.skip_measure:
        notes.append("--skip-measure: the shipped records stand in for a measurement")
    else:
        missing = missing_for_measurement(args.model_dir)
        if missing:
            notes += [f"not measured: {what}" for what in missing]
            notes.append("the shipped records stand in for a measurement (as with --skip-measure)")
        else:
            try:
                measured = measure(args, workdir, servers)
            except (RuntimeError, BenchmarkError, OSError) as exc:
                tail = f"; vLLM's log ends:\n{exc.log_tail}" if isinstance(exc, StartError) else ""
                print(f"bench: the measurement failed: {exc}{tail}", file=sys.stderr)
                notes.append(f"not measured: the measurement failed ({str(exc).splitlines()[0]}); the shipped "
                             "records stand in for it")
                status = 2
            finally:
                for server in list(servers):
                    server.stop()
                    servers.remove(server)
    for note in notes:
        print(f"note: {note}")

    quiet = measured["quiet"] if measured is not None else measure_host(workdir / "state-quiet", args.quiet_wait)
    device = quiet["device"]
    print(f"this CPU, measured afresh{' before vLLM started' if measured is not None else ''} "
          f"({quiet['busy_before']:.2f} cores busy just before): {describe_device(device)}; the predictions use it")
    if quiet["busy_before"] > QUIET_CORES:
        print(f"warning: other processes kept {quiet['busy_before']:.2f} cores busy before that measurement "
              "(--quiet-wait did not see them go quiet): its TFLOPS figure, and the predictions, are suspect")
    if measured is not None:
        idle = measured["idle"]
        print(f"this CPU, measured again while vLLM idled ({idle['busy_before']:.2f} cores busy just before, "
              f"vLLM's idle process included): {describe_device(idle['device'])}; not used")
    results["host_cpu"] = quiet
    shipped_device = records[0].device
    print(f"the shipped records' CPU: {describe_device(shipped_device)}")

    small = load_model_spec(args.model_dir if (args.model_dir / "config.json").is_file()
                            else FIXTURES / "SmolLM2-135M", "smollm2-135m")
    speed = bench_speed(args, device, small, records)
    results["speed"] = speed
    report_speed(speed, args)

    deployment = engine_defaults("cpu")
    if measured is not None:
        report_measurement(measured)
        cases = [{"model": small, "device": device, "deployment": deployment,
                  "workload": Workload(p["input_tokens"], p["output_tokens"], p["concurrency"]), "measured": p}
                 for p in measured["points"]]
        source = "measured in this run"
        results["measured"] = measured
    else:
        chosen = shipped_points(records)
        cases = [{"model": r.model, "device": r.device, "deployment": r.deployment, "workload": r.workload,
                  "measured": r.measured} for r in chosen]
        source = "the shipped records (their own device figures)"
    profile = PROFILES["cpu"]
    print(f"\naccuracy: SmolLM2-135M on vLLM-CPU, deployment {deployment.engine_args()}")
    print(f"  heuristic: heuristic.PROFILES['cpu'] (bandwidth x{profile.bandwidth_efficiency:g}, compute "
          f"x{profile.compute_efficiency:g}, step {profile.step_overhead_ms:g} ms + {profile.layer_overhead_ms:g} ms "
          f"per layer, attention x{profile.attention_efficiency:g}) was FITTED to the shipped records of this same "
          "host, so its figures are not out-of-sample")
    print("  regressor: trained on the shipped records less those of the point predicted (same concurrency and "
          "lengths): out-of-sample")
    accuracy = bench_accuracy(records, cases)
    results["accuracy"] = {"source": source, **accuracy}
    accuracy_targets = report_accuracy(accuracy, source)

    loo = leave_one_out(records)
    results["leave_one_out"] = {"records": loo["records"], "mean_abs_pct_error": loo["mean_abs_pct_error"]}
    report_loo(loo)

    targets = speed["targets"] + accuracy_targets
    results["targets"] = targets
    results["notes"] = notes
    print("\ntargets:")
    for target in speed["targets"]:
        print(f"  {target['name']}: {fmt_s(target['value'])} (target < {fmt_s(target['limit'])}; the seed's "
              f"< {fmt_s(target['seed_limit'])}: {target['seed_result']})  {target['result']}")
    for target in accuracy_targets:
        print(f"  {target['name']}: {target['value']:.1%} (target <= {target['limit']:.0%}, vs {source})  "
              f"{target['result']}")
    for note in notes:
        print(f"  note: {note}")
    results["meta"]["total_s"] = time.perf_counter() - began
    print(f"\n(run took {results['meta']['total_s']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=_json_default))
        print(f"results written to {args.json}")
    if status:
        return status
    return 1 if args.strict and any(target["result"] != "PASS" for target in targets) else 0


def _json_default(value: Any) -> Any:
    if isinstance(value, Device):
        return value.as_dict()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, metavar="N",
                        help="runs per timed simulation, the median is reported (default 5)")
    parser.add_argument("--requests", type=int, default=3, metavar="N",
                        help="requests per measured point, at least its concurrency (default 3)")
    parser.add_argument("--quiet-wait", type=float, default=30.0, metavar="SECONDS",
                        help="before measuring this CPU, wait up to this long for other processes to go quiet "
                        f"(under {QUIET_CORES:g} cores busy; default 30, 0: do not wait)")
    parser.add_argument("--skip-measure", action="store_true",
                        help="do not start vLLM: compare the predictions with the shipped records of the same points")
    parser.add_argument("--model-dir", type=Path, default=default_model_dir(),
                        help="the SmolLM2-135M model directory (default $MODELYARD_SMOLLM2_DIR, else "
                        "state/models/smollm2-135m)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (vLLM's log)")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 100:
        parser.error("--runs must be in [1, 100]")
    if not 1 <= args.requests <= 1000:
        parser.error("--requests must be in [1, 1000]")
    if not 0 <= args.quiet_wait <= 600:
        parser.error("--quiet-wait must be in [0, 600]")

    def on_term(signum: int, frame: Any) -> None:
        print("bench: terminated; stopping what it started", file=sys.stderr)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="modelyard-bench-simulator-"))
    servers: list[VllmServer] = []
    try:
        return benchmark(args, workdir, servers)
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; stopping what it started", file=sys.stderr)
        return 130
    finally:
        for server in servers:
            server.stop()
        if args.keep:
            print(f"temp directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
