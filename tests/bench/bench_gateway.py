"""Gateway benchmark: what auth and the drift feed add per request.

Three real orchestrators in one run, the same fast test upstream behind each
(`command` engine): settings.auth off; on, called with a member API key
limited to the model, with a rate limit and a quota (so the key lookup, the
route's scope, the model list, the key's rate bucket and quota count are all
checked); on with settings.auth.jwt, called with an HS256 token carrying a
role and a model list. Both "on" sides give the model a rate limit too; every
limit is far above what the run sends. A fourth runs with auth off and
settings.drift on: the drift service as a sibling, a monitor on the model's
requests (latency, tokens, status, finish reason), so every request's features
go through the feed and are evaluated. The client alternates rounds between them,
so drift in the machine's load falls on all alike, and prints p50 and p99
latency of each at concurrency 1 and 16, what each adds, and the target.

  scripts/bench.sh gateway [--rounds 10] [--requests 200] [--json results.json] [--strict]

This file is a script, not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from core.process import free_port  # noqa: E402
from tests.bench.bench_proxy import CHUNKS, Child, percentile, request_body, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TARGET_ADDED_P50_MS = 0.5
CONCURRENCIES = (1, 16)


MODES = ("off", "key", "jwt", "drift")
TARGET_FEED_MS = 0.1  # what sending a request's features to the drift monitor may add (issue 8)
FEED_MONITOR = {
    "name": "bench", "model": "fast", "source": "requests", "window": {"kind": "sliding", "size": 1000},
    "features": [{"name": name, "kind": kind} for name, kind in (
        ("latency_ms", "numeric"), ("completion_tokens", "numeric"), ("status", "categorical"),
        ("finish_reason", "categorical"))],
}
JWT_SECRET = "bench-secret-" + "x" * 32


def start(workdir: Path, name: str) -> tuple[Child, str]:
    """The orchestrator for one mode, and the credential to call it with."""
    port = free_port()
    upstream = "${PYTHON} tests/bench/upstream.py --port ${PORT}" + f" --chunks {CHUNKS}"
    auth: dict[str, Any] = {"enabled": name not in ("off", "drift")}
    if name == "jwt":
        auth["jwt"] = {"audience": "bench", "secret_env": "MODELYARD_BENCH_JWT_SECRET"}
    config = {
        "settings": {"port": port, "log_level": "warning", "shutdown_grace": 5, "auth": auth,
                     "drift": {"enabled": name == "drift"}},
        "models": {"fast": {"engine": "command", "cmd": upstream, "startup_timeout": 30}},
    }
    if name in ("key", "jwt"):  # a model rate limit far above what the run sends: checked, never refused
        config["models"]["fast"]["rpm"] = 1e9
    state = workdir / f"{name}-state"
    (workdir / f"{name}.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "MODELYARD_STATE_DIR": str(state), "MODELYARD_BENCH_JWT_SECRET": JWT_SECRET,
           "MODELYARD_ENVS_DIR": os.environ.get("MODELYARD_ENVS_DIR", str(ROOT / "state" / "envs"))}
    key = ""
    if name == "jwt":
        claims = {"sub": "bench", "aud": "bench", "exp": int(time.time()) + 3600, "role": "member", "models": ["fast"]}
        key = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    elif name == "key":
        made = subprocess.run(
            [sys.executable, "-m", "orchestrator.keys_cli", "--state-dir", str(state), "--json", "create",
             "--name", "bench", "--role", "member", "--model", "fast", "--rpm", "1000000000",
             "--quota", "1000000000/day"],
            capture_output=True, text=True, check=True, cwd=ROOT, env=env,
        )
        key = json.loads(made.stdout)["key"]
    argv = [sys.executable, "-m", "orchestrator", "--config", str(workdir / f"{name}.yaml")]
    return Child(f"orchestrator-{name}", argv, workdir / f"{name}.log", env), key


async def round_of(session: aiohttp.ClientSession, url: str, key: str, concurrency: int, count: int) -> list[float]:
    """count non-streaming requests by `concurrency` workers; their latencies in seconds."""
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    body = request_body("fast", stream=False)
    latencies: list[float] = []
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            began = time.perf_counter()
            async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url} answered {resp.status}: {await resp.text()}")
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    children: list[Child] = []
    try:
        targets = {}
        for name in MODES:
            child, key = start(workdir, name)
            children.append(child)
            targets[name] = (child, key)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            urls = {}
            for name, (child, key) in targets.items():
                port = yaml.safe_load((workdir / f"{name}.yaml").read_text())["settings"]["port"]
                urls[name] = f"http://127.0.0.1:{port}"
                await wait_ready(session, urls[name] + "/ready", child)
                if name == "drift":  # waits for the drift service to be up
                    async with session.post(urls[name] + "/drift/monitors", json=FEED_MONITOR) as made:
                        if made.status != 201:
                            raise RuntimeError(f"making the drift monitor: {made.status} {await made.text()}")
                await round_of(session, urls[name], key, 4, 50)  # starts the model, warms connections
            results: dict[str, Any] = {}
            for concurrency in CONCURRENCIES:
                samples: dict[str, list[float]] = {name: [] for name in MODES}
                for number in range(args.rounds):
                    order = MODES if number % 2 == 0 else MODES[::-1]
                    for name in order:
                        samples[name] += await round_of(session, urls[name], targets[name][1], concurrency,
                                                        args.requests)
                results[f"c{concurrency}"] = {
                    name: {"requests": len(values), "p50_ms": percentile(values, 50) * 1000,
                           "p99_ms": percentile(values, 99) * 1000}
                    for name, values in samples.items()
                }
            async with session.get(urls["drift"] + "/drift/monitors/bench") as seen:
                results["drift_events_seen"] = (await seen.json())["events_seen"]
            results["feed_us_in_process"] = feed_cost_us()
            return results
    finally:
        for child in children:
            child.stop()


def feed_cost_us(calls: int = 100_000) -> float:
    """What the request path does for the drift feed (endpoint._feed_drift:
    request_features + DriftFeed.record), in process, microseconds per request."""
    from prometheus_client import CollectorRegistry

    from orchestrator.drift_feed import DriftFeed, FeedMetrics, request_features
    from orchestrator.usage import Usage

    async def nowhere() -> str:
        raise RuntimeError("not sending")

    with tempfile.TemporaryDirectory() as folder:
        feed = DriftFeed(Path(folder) / "feed.db", nowhere, FeedMetrics(CollectorRegistry()))
        usage = Usage(prompt_tokens=20, completion_tokens=8, finish_reason="stop")
        began = time.perf_counter()
        for _ in range(calls):
            feed.record("fast", request_features("/v1/chat/completions", "fast", 200, None, 0.0012, 0.0008, False,
                                                 None, None, usage))
            if len(feed._waiting) >= 50_000:  # the pump's job, not timed
                feed._waiting.clear()
        elapsed = time.perf_counter() - began
        feed.db.conn.close()
    return elapsed / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per concurrency (default 10)")
    parser.add_argument("--requests", type=int, default=200, help="requests per round (default 200)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-gateway-") as workdir:
        results = asyncio.run(benchmark(args, Path(workdir)))
    print(f"gateway: auth off, API key, JWT, drift feed; same upstream, {args.rounds} alternating rounds of "
          f"{args.requests} requests, {os.cpu_count()} cores")
    print(f"{'concurrency':>11} {'mode':>5} {'p50 ms':>8} {'added':>8} {'p99 ms':>8}")
    for concurrency in CONCURRENCIES:
        row = results[f"c{concurrency}"]
        for name in MODES:
            row[name]["added_p50_ms"] = row[name]["p50_ms"] - row["off"]["p50_ms"]
            added = "" if name == "off" else f"{row[name]['added_p50_ms']:8.3f}"
            print(f"{concurrency:>11} {name:>5} {row[name]['p50_ms']:8.3f} {added:>8} {row[name]['p99_ms']:8.3f}")
    worst = max(results["c1"][name]["added_p50_ms"] for name in ("key", "jwt"))
    verdict = "PASS" if worst < TARGET_ADDED_P50_MS else "MISS"
    print(f"target: auth adds under {TARGET_ADDED_P50_MS} ms at p50 (concurrency 1, key and JWT): "
          f"{worst:.3f} ms at most  {verdict}")
    feed_added = results["c1"]["drift"]["added_p50_ms"]
    feed_verdict = "PASS" if feed_added < TARGET_FEED_MS else "MISS"
    print(f"drift feed: {results['drift_events_seen']} requests' features reached the monitor; in process the "
          f"request path spends {results['feed_us_in_process']:.2f} us per request on them")
    print(f"target: the drift feed adds under {TARGET_FEED_MS} ms at p50 (concurrency 1): {feed_added:.3f} ms  "
          f"{feed_verdict}")
    verdict = "MISS" if "MISS" in (verdict, feed_verdict) else "PASS"
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "target_ms": TARGET_ADDED_P50_MS,
                                               "verdict": verdict}, indent=2))
    return 1 if (verdict == "MISS" and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
