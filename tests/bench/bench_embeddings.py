"""Embeddings benchmark (issue "Real engines"): requests/s of the embeddings
engine serving the real all-MiniLM-L6-v2, with dynamic batching on
(max_batch_size 32; max_wait_ms 0, the default, and 5) and off
(max_batch_size 1), at concurrency
1 and 32, in the same run. Each request carries one text, as a RAG indexer or
a search box sends them: short queries, then longer passages. The same model
converted by models/onnx/convert.py and served by the onnx engine (ONNX
Runtime, CPU provider) runs next, batching off and on: PyTorch vs ONNX Runtime
in the same run. Target: batching
at least 3x the requests/s at 32 on queries. On a CPU the gain shrinks as texts
grow: the model's arithmetic, not per-call overhead, then sets the pace
(models/embeddings/README.md has the figures).

The engine is a real process started as the orchestrator would (one variant at
a time, so they never share the CPU), driven over HTTP by aiohttp in closed
loop: each client sends its next request when its last one is answered.

  python tests/bench/bench_embeddings.py [--requests N] [--json FILE] [--strict]

This file is a script, not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from core.process import free_port  # noqa: E402
from tests.bench.bench_proxy import percentile  # noqa: E402

TARGET_SPEEDUP = 3.0
WORDS = ("model serving gpu memory request batch latency token vector search index query document "
         "cat dog market river mountain city music image language answer question orchestrator").split()


# Texts of uneven length, as real traffic has: search queries (3-12 words) and
# short passages (20-60 words, a RAG indexer's chunks).
PROFILES = {"queries": (3, 12), "passages": (20, 60)}


def corpus(count: int, profile: str = "queries", seed: int = 7) -> list[str]:
    low, high = PROFILES[profile]
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(count)]


def start_engine(engine: str, model_dir: Path, log: Path, *argv: str) -> tuple[subprocess.Popen[bytes], str]:
    python = Path(os.environ.get(f"MODELYARD_{engine.upper()}_PYTHON", ROOT / f"state/envs/{engine}/bin/python"))
    if not python.exists():
        sys.exit(f"bench: no {engine} environment at {python}; run ./scripts/install.sh --engine {engine}")
    port = free_port()
    command = [str(python), str(ROOT / f"models/{engine}/server.py"), "--port", str(port),
               "--model-path", str(model_dir), "--model-id", "bench", *argv]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    return process, f"http://127.0.0.1:{port}"


async def wait_healthy(session: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"bench: engine exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            async with session.get(url + "/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    sys.exit("bench: engine not healthy within 120 s")


async def drive(session: aiohttp.ClientSession, url: str, texts: list[str], concurrency: int) -> dict[str, Any]:
    """Closed loop over texts (one per request); the first concurrency*2 are warm-up."""
    warmup = concurrency * 2
    queue = list(enumerate(texts))
    latencies: list[float] = []
    errors = 0
    window: dict[str, float] = {}

    async def client() -> None:
        nonlocal errors
        while queue:
            index, text = queue.pop(0)
            if index == warmup:
                window["start"] = time.perf_counter()
            began = time.perf_counter()
            async with session.post(url + "/v1/embeddings", json={"model": "bench", "input": text}) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
            if index >= warmup:
                latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - window["start"]
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def convert_to_onnx(model_dir: Path, out: Path) -> Path:
    """The same model through models/onnx/convert.py (checked against PyTorch)."""
    python = Path(os.environ.get("MODELYARD_ONNX_PYTHON", ROOT / "state/envs/onnx/bin/python"))
    if not python.exists():
        sys.exit(f"bench: no onnx environment at {python}; run ./scripts/install.sh --engine onnx")
    command = [str(python), str(ROOT / "models/onnx/convert.py"), "--model", str(model_dir), "--out", str(out),
               "--tensorrt", "off"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"bench: ONNX conversion failed:\n{done.stderr[-2000:]}")
    return out


async def measure_variant(engine: str, model_dir: Path, workdir: Path, label: str, argv: list[str],
                          requests: int) -> dict[str, Any]:
    log = workdir / f"{label}.log"
    process, url = start_engine(engine, model_dir, log, *argv)
    try:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
            await wait_healthy(session, url, process, log)
            runs = {}
            for profile in PROFILES:
                for concurrency in (1, 32):
                    count = (requests // 4 if concurrency == 1 else requests) + concurrency * 2
                    texts = corpus(count, profile)
                    runs[f"{profile}@{concurrency}"] = await drive(session, url, texts, concurrency)
            async with session.get(url + "/health") as response:
                batching = (await response.json())["batching"]
        return {"label": label, "args": argv, "runs": runs, "batching": batching}
    finally:
        process.terminate()
        process.wait(30)


def report(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    print(f"{'variant':<20}{'texts':<10}{'conc':>5}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for result in results:
        for key, run in result["runs"].items():
            profile, concurrency = key.split("@")
            print(f"{result['label']:<20}{profile:<10}{concurrency:>5}{run['requests_per_s']:>10.1f}"
                  f"{run['p50_ms']:>10.1f}{run['p99_ms']:>10.1f}{run['errors']:>8}")
        print(f"{'':<20}mean batch {result['batching']['mean_batch']}, largest {result['batching']['largest_batch']}")
    by_label = {r["label"]: r["runs"] for r in results}
    speedups = {
        profile: by_label["batching on"][f"{profile}@32"]["requests_per_s"]
        / by_label["batching off"][f"{profile}@32"]["requests_per_s"]
        for profile in PROFILES
    }
    errors = sum(run["errors"] for r in results for run in r["runs"].values())
    print()
    for profile, speedup in speedups.items():
        print(f"batching on / off at concurrency 32, {profile}: {speedup:.2f}x")
    def rate(label: str, profile: str, concurrency: int) -> float:
        return by_label[label][f"{profile}@{concurrency}"]["requests_per_s"]

    for concurrency in (1, 32):
        ratios = ", ".join(
            f"{profile} {rate('onnx, batching on', profile, concurrency) / rate('batching on', profile, concurrency):.2f}x"
            for profile in PROFILES
        )
        print(f"ONNX Runtime / PyTorch (both batching on, CPU) at concurrency {concurrency}: {ratios}")
    verdicts = [
        {"target": f"batching >= {TARGET_SPEEDUP:.0f}x requests/s at concurrency 32 (queries)",
         "value": round(speedups["queries"], 2), "pass": speedups["queries"] >= TARGET_SPEEDUP},
        {"target": "no failed requests", "value": errors, "pass": errors == 0},
    ]
    print()
    for verdict in verdicts:
        print(f"{'PASS' if verdict['pass'] else 'MISS'}  {verdict['target']}: {verdict['value']}")
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=640, help="measured requests at concurrency 32 (a quarter at 1)"
    )
    parser.add_argument("--model-dir", type=Path, default=Path(os.environ.get(
        "MODELYARD_MINILM_DIR", ROOT / "state/models/all-minilm-l6-v2")))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if not (args.model_dir / "modules.json").exists():
        sys.exit(f"bench: no sentence-transformers model at {args.model_dir}; run ./scripts/install.sh")
    print(f"embeddings benchmark: all-MiniLM-L6-v2 on {os.cpu_count()} CPU cores ({platform.processor() or 'cpu'}), "
          f"{args.requests} requests at concurrency 32, one text each")
    variants = [
        ("batching off", ["--max-batch-size", "1"]),
        ("batching on", ["--max-batch-size", "32", "--max-wait-ms", "0"]),
        ("on, wait 5 ms", ["--max-batch-size", "32", "--max-wait-ms", "5"]),
    ]
    onnx_variants = [
        ("onnx, batching off", ["--max-batch-size", "1"]),
        ("onnx, batching on", ["--max-batch-size", "32", "--max-wait-ms", "0"]),
    ]
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        onnx_dir = convert_to_onnx(args.model_dir, Path(tmp) / "onnx")
        results = [asyncio.run(measure_variant("embeddings", args.model_dir, Path(tmp), label, extra, args.requests))
                   for label, extra in variants]
        results += [asyncio.run(measure_variant("onnx", onnx_dir, Path(tmp), label, extra, args.requests))
                    for label, extra in onnx_variants]
    verdicts = report(results)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "verdicts": verdicts}, indent=2))
    return 1 if args.strict and not all(v["pass"] for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
