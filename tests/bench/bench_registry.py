"""Model registry benchmark: what versions and aliases cost (orchestrator/versions.py,
orchestrator/versions_api.py), against a real orchestrator process (auth off,
a temp state directory, so registry.db is a fresh sqlite file) serving one
fake model (tests/support/fake_service.py through the `command` engine).

  create   N sequential POST /admin/registry/models/bench/versions (1.0.0,
           1.0.1, ..., each with the previous as its parent and a small
           metadata dict of training metrics): latency p50/p95/p99/max. Each
           creation is followed by the baselines, so load drift falls on all
           alike: GET /health (the HTTP floor) and the same POST under the
           models.yaml model's own name, which the API refuses (409) after
           reading and validating the body but before the store (HTTP + JSON +
           the request model, no sqlite).
  alias    N PUT /admin/registry/models/bench/aliases/production, each moving
           the alias to another version (a write each time), with the same
           baselines (the refused one: a PUT to a registered name that does
           not exist, 404 from the store before sqlite).
  resolve  chat completions naming `bench@production` vs naming the models.yaml
           id directly, and the id once more as an A/A control (the noise
           between identical sides), in alternating rounds: p50/p99 of each
           and what resolving adds. A fourth side names `steered@production`,
           on which a canary rollout runs (50%, both versions served by the
           same model, each request with its own `user`): what steering and
           counting (orchestrator/experiments/) add beyond resolving an alias.

Targets (the issue): creating a version takes under 50 ms at p99 (the seed
promised under 1 s); resolving on the request path adds nothing beyond noise
(at most the A/A difference, or under 0.1 ms at p50); so does a running
rollout on the alias (at p50, within the same allowance of the alias side).

  scripts/bench.sh registry [--versions 300] [--rounds 10] [--requests 100] [--tmpdir DIR]
                            [--json results.json] [--strict] [--keep]

This file is a script, not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from core.process import free_port  # noqa: E402
from tests.bench.bench_proxy import Child, percentile, run_benchmark, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

TARGET_CREATE_P99_MS = 50.0
SEED_TARGET_CREATE_P99_MS = 1000.0
TARGET_RESOLVE_ADDED_MS = 0.1  # at p50; or no more than the A/A difference, whichever is larger

MODEL = "base"  # the models.yaml id
NAME = "bench"  # the registered model
ALIAS = "production"
FAKE = "${PYTHON} tests/support/fake_service.py --port ${PORT}"
TIMEOUT = aiohttp.ClientTimeout(total=60)
SIDES = ("id", "alias", "id again", "rollout")  # resolve: what each names
STEERED = "steered"  # a registered model with a rollout running on @production


def start(workdir: Path) -> tuple[Child, str]:
    """The orchestrator (auth off, one fake model) and its base URL."""
    port = free_port()
    config = {
        "settings": {"host": "127.0.0.1", "port": port, "log_level": "warning", "shutdown_grace": 5,
                     "auth": {"enabled": False}},
        "models": {MODEL: {"engine": "command", "cmd": FAKE, "startup_timeout": 60}},
    }
    config_path = workdir / "models.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "MODELYARD_STATE_DIR": str(workdir / "state"),
           "MODELYARD_ENVS_DIR": os.environ.get("MODELYARD_ENVS_DIR", str(ROOT / "state" / "envs"))}
    argv = [sys.executable, "-m", "orchestrator", "--config", str(config_path), "--port", str(port)]
    return Child("orchestrator", argv, workdir / "orchestrator.log", env), f"http://127.0.0.1:{port}"


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def timed(self, method: str, path: str, expect: int, body: Any = None) -> float:
        """One request's round trip in seconds; RuntimeError on another status."""
        began = time.perf_counter()
        async with self.session.request(method, self.base + path, json=body, timeout=TIMEOUT) as resp:
            data = await resp.read()
            elapsed = time.perf_counter() - began
            if resp.status != expect:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status} (expected {expect}): {data[:500]!r}")
        return elapsed


def metrics(index: int) -> dict[str, Any]:
    """A small metadata dict, the kind a training run leaves."""
    return {"dataset": "support-tickets-2024-q3", "epochs": 3, "learning_rate": 2e-5,
            "eval": {"loss": round(1.5 - index * 1e-3, 4), "accuracy": round(0.80 + index * 1e-4, 4),
                     "f1": round(0.78 + index * 1e-4, 4)},
            "commit": f"{index:07x}"}


def version_of(index: int) -> str:
    return f"1.{index // 1000}.{index % 1000}"


def summary(values: list[float]) -> dict[str, float]:
    return {"count": len(values), "p50_ms": percentile(values, 50) * 1000, "p95_ms": percentile(values, 95) * 1000,
            "p99_ms": percentile(values, 99) * 1000,
            "max_ms": max(values) * 1000 if values else float("nan")}


async def bench_create(client: Client, count: int) -> dict[str, Any]:
    path = f"/admin/registry/models/{NAME}/versions"
    refused_path = f"/admin/registry/models/{MODEL}/versions"  # a models.yaml name: 409 before the store
    sides: dict[str, list[float]] = {"create": [], "health": [], "refused": []}
    for index in range(count):
        body = {"version": version_of(index), "model": MODEL, "metadata": metrics(index)}
        if index:
            body["parent"] = version_of(index - 1)
        sides["create"].append(await client.timed("POST", path, 201, body))
        sides["health"].append(await client.timed("GET", "/health", 200))
        sides["refused"].append(await client.timed("POST", refused_path, 409, body))
    return {side: summary(values) for side, values in sides.items()}


async def bench_alias(client: Client, count: int, versions: int) -> dict[str, Any]:
    path = f"/admin/registry/models/{NAME}/aliases/{ALIAS}"
    refused_path = f"/admin/registry/models/{NAME}-missing/aliases/{ALIAS}"  # no such name: 404 before sqlite
    sides: dict[str, list[float]] = {"move": [], "health": [], "refused": []}
    for index in range(count):
        body = {"version": version_of(index % versions)}  # consecutive moves name different versions
        sides["move"].append(await client.timed("PUT", path, 200, body))
        sides["health"].append(await client.timed("GET", "/health", 200))
        sides["refused"].append(await client.timed("PUT", refused_path, 404, body))
    return {side: summary(values) for side, values in sides.items()}


async def start_rollout(client: Client) -> None:
    """STEERED@production at 1.0.0 with a rollout to 1.0.1 holding 50% (both served by MODEL: only the
    steering differs from the alias side)."""
    for version in ("1.0.0", "1.0.1"):
        await client.timed("POST", f"/admin/registry/models/{STEERED}/versions", 201,
                           {"version": version, "model": MODEL})
    await client.timed("PUT", f"/admin/registry/models/{STEERED}/aliases/{ALIAS}", 200, {"version": "1.0.0"})
    await client.timed("POST", "/admin/rollouts", 201, {"name": STEERED, "version": "1.0.1", "alias": ALIAS,
                                                        "stages": [50, 100], "dwell_seconds": 7 * 86400})


async def bench_resolve(client: Client, rounds: int, requests: int) -> dict[str, Any]:
    await start_rollout(client)
    names = {"id": MODEL, "alias": f"{NAME}@{ALIAS}", "id again": MODEL, "rollout": f"{STEERED}@{ALIAS}"}
    bodies = {side: {"model": name, "messages": [{"role": "user", "content": "What is the capital of France?"}],
                     "max_tokens": 8} for side, name in names.items()}
    users = iter(range(10**9))  # the rollout side: a user each, placed by hash
    for side in SIDES:  # warm: the model started, connections open, code paths taken
        for _ in range(20):
            await client.timed("POST", "/v1/chat/completions", 200, bodies[side])
    samples: dict[str, list[float]] = {side: [] for side in SIDES}
    for number in range(rounds):
        order = SIDES if number % 2 == 0 else SIDES[::-1]
        for side in order:
            for _ in range(requests):
                body = {**bodies[side], "user": f"u{next(users)}"} if side == "rollout" else bodies[side]
                samples[side].append(await client.timed("POST", "/v1/chat/completions", 200, body))
    results: dict[str, Any] = {side: {**summary(values), "model": names[side]} for side, values in samples.items()}
    direct_p50 = (results["id"]["p50_ms"] + results["id again"]["p50_ms"]) / 2
    direct_p99 = (results["id"]["p99_ms"] + results["id again"]["p99_ms"]) / 2
    results["added_p50_ms"] = results["alias"]["p50_ms"] - direct_p50
    results["added_p99_ms"] = results["alias"]["p99_ms"] - direct_p99
    results["noise_p50_ms"] = abs(results["id"]["p50_ms"] - results["id again"]["p50_ms"])
    results["noise_p99_ms"] = abs(results["id"]["p99_ms"] - results["id again"]["p99_ms"])
    results["steering_p50_ms"] = results["rollout"]["p50_ms"] - results["alias"]["p50_ms"]
    results["steering_p99_ms"] = results["rollout"]["p99_ms"] - results["alias"]["p99_ms"]
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    meta = results["meta"]
    print(f"registry: one orchestrator (auth off), one fake model ('{MODEL}', command engine), registered model "
          f"'{NAME}'; {meta['cores']} cores (client, orchestrator and model share them)")
    print(f"registry.db in a temp state directory under {meta['state_under']} (--tmpdir)")
    create, alias, resolve = results["create"], results["alias"], results["resolve"]
    columns = f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}"

    def row(label: str, figures: dict[str, float]) -> None:
        print(f"{label:>44} {figures['count']:>6} {figures['p50_ms']:>8.2f} {figures['p95_ms']:>8.2f} "
              f"{figures['p99_ms']:>8.2f} {figures['max_ms']:>8.2f}")

    print(f"\ncreate: {args.versions} versions, sequential, each with its parent and training metrics; "
          "each followed by the baselines")
    print(f"{'':>44} {'count':>6} {columns}")
    row("POST .../versions (201)", create["create"])
    row("baseline: GET /health", create["health"])
    row("baseline: same POST, refused before store", create["refused"])
    print(f"  creation beyond GET /health at p50: {create['create']['p50_ms'] - create['health']['p50_ms']:.2f} ms; "
          f"beyond the refused POST: {create['create']['p50_ms'] - create['refused']['p50_ms']:.2f} ms "
          "(the store: checks, one sqlite transaction, the cache)")
    print(f"\nalias: {args.versions} moves of @{ALIAS}, each to another version; each followed by the baselines")
    print(f"{'':>44} {'count':>6} {columns}")
    row(f"PUT .../aliases/{ALIAS} (200)", alias["move"])
    row("baseline: GET /health", alias["health"])
    row("baseline: PUT to an unknown name (404)", alias["refused"])
    print(f"  a move beyond GET /health at p50: {alias['move']['p50_ms'] - alias['health']['p50_ms']:.2f} ms")
    print(f"\nresolve: POST /v1/chat/completions (non-streaming), {args.rounds} alternating rounds of "
          f"{args.requests} per side, sequential")
    print(f"{'side':>10} {'model':>20} {'count':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for side in SIDES:
        figures = resolve[side]
        print(f"{side:>10} {figures['model']:>20} {figures['count']:>6} {figures['p50_ms']:>8.3f} "
              f"{figures['p99_ms']:>8.3f}")
    print(f"  resolving adds {resolve['added_p50_ms']:+.3f} ms at p50, {resolve['added_p99_ms']:+.3f} ms at p99 "
          f"(vs the mean of both id sides); A/A noise between the id sides: {resolve['noise_p50_ms']:.3f} ms at p50, "
          f"{resolve['noise_p99_ms']:.3f} ms at p99")
    print(f"  a running rollout on the alias adds {resolve['steering_p50_ms']:+.3f} ms at p50, "
          f"{resolve['steering_p99_ms']:+.3f} ms at p99 (vs the alias side)")

    created_p99 = create["create"]["p99_ms"]
    allowed = max(TARGET_RESOLVE_ADDED_MS, resolve["noise_p50_ms"])
    targets = [
        {"name": "version creation p99", "value": created_p99, "limit": TARGET_CREATE_P99_MS, "unit": "ms",
         "result": "PASS" if created_p99 < TARGET_CREATE_P99_MS else "MISS"},
        {"name": "version creation p99, the seed's promise", "value": created_p99,
         "limit": SEED_TARGET_CREATE_P99_MS, "unit": "ms",
         "result": "PASS" if created_p99 < SEED_TARGET_CREATE_P99_MS else "MISS"},
        {"name": f"name@{ALIAS} resolution added at p50 (within max(A/A noise, {TARGET_RESOLVE_ADDED_MS:g} ms))",
         "value": resolve["added_p50_ms"], "limit": allowed, "unit": "ms",
         "result": "PASS" if resolve["added_p50_ms"] <= allowed else "MISS", "relation": "<="},
        {"name": f"a rollout on the alias, added at p50 (within max(A/A noise, {TARGET_RESOLVE_ADDED_MS:g} ms))",
         "value": resolve["steering_p50_ms"], "limit": allowed, "unit": "ms",
         "result": "PASS" if resolve["steering_p50_ms"] <= allowed else "MISS", "relation": "<="},
    ]
    print("\ntargets:")
    for target in targets:
        print(f"  {target['name']}: {target['value']:.3f} {target['unit']} (target {target.get('relation', '<')} "
              f"{target['limit']:,g} {target['unit']})  {target['result']}")
    return targets


async def benchmark(args: argparse.Namespace, workdir: Path, children: list[Child]) -> int:
    child, base = start(workdir)
    children.append(child)
    began = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await wait_ready(session, base + "/ready", child, limit_s=120)
        results: dict[str, Any] = {"meta": {"cores": os.cpu_count(), "python": sys.version.split()[0],
                                            "versions": args.versions, "rounds": args.rounds,
                                            "requests": args.requests, "state_under": str(workdir.parent),
                                            "start_s": time.perf_counter() - began}}
        client = Client(session, base)
        for _ in range(20):  # warm the connection and the health route
            await client.timed("GET", "/health", 200)
        results["create"] = await bench_create(client, args.versions)
        results["alias"] = await bench_alias(client, args.versions, args.versions)
        results["resolve"] = await bench_resolve(client, args.rounds, args.requests)
        if child.popen.poll() is not None:
            raise RuntimeError(f"the orchestrator exited:\n{child.log_tail()}")
    results["meta"]["total_s"] = time.perf_counter() - began
    targets = report(results, args)
    print(f"\n(orchestrator ready in {results['meta']['start_s']:.1f} s; run took {results['meta']['total_s']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "targets": targets}, indent=2, default=str))
        print(f"results written to {args.json}")
    return 1 if args.strict and any(target["result"] != "PASS" for target in targets) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=300, metavar="N",
                        help="versions created, and alias moves made (default 300)")
    parser.add_argument("--rounds", type=int, default=10, metavar="N",
                        help="alternating rounds of the resolution comparison (default 10)")
    parser.add_argument("--requests", type=int, default=100, metavar="N",
                        help="chat completions per side per round (default 100)")
    parser.add_argument("--tmpdir", metavar="DIR",
                        help="where the temp state directory (registry.db) goes (default: the system's temp "
                        "directory; /dev/shm takes the disk's fsync per commit out of the figures)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (orchestrator log, state)")
    args = parser.parse_args(argv)
    if not 2 <= args.versions <= 100_000:
        parser.error("--versions must be in [2, 100000]")
    if args.rounds < 1 or args.requests < 1:
        parser.error("--rounds and --requests must be positive")

    return run_benchmark(benchmark, args, "modelyard-bench-registry-")


if __name__ == "__main__":
    sys.exit(main())
