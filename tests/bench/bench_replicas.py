"""Local replicas benchmark: what `replicas: {local: N}` buys when the model is
the bottleneck (orchestrator/routing/router.py spreading a model's requests
over its N local services), against a real orchestrator process (auth off, a
temp state directory, no GPU inventory: every service sits in host memory)
serving fake models (tests/support/fake_service.py through the `command`
engine) that answer after a fixed delay and take one request at a time
(`max_concurrency: 1`, `max_queue: 1000`).

  scale     three models alike but for their replicas: `one` (no replicas:
            one service), `two` (`replicas: {local: 2}`) and `four`
            (`replicas: {local: 4}`), with the default strategy
            (least_outstanding). Every service is loaded first (POST
            /admin/services/{id}/load) and warmed. Then, in alternating
            rounds (so load drift falls on all alike), C concurrent clients
            send R chat completions each to one model: requests/s and latency
            p50/p99 per model, the speedup of two and four over one, and how
            many requests each service answered (its own /stats).
  overhead  at concurrency 1, a model with `replicas: {local: 1}` (every
            request through the router) vs the same model without replicas,
            and that model once more as an A/A control (the noise between
            identical sides), in alternating rounds; no delay in the service:
            p50/p99 of each and what routing adds.

Targets (the feature): two replicas serve at least 1.8x the requests/s of one,
four at least 3.2x; routing through the router adds under 0.2 ms at p50 (or no
more than the A/A difference, whichever is larger).

  scripts/bench.sh replicas [--clients 8] [--requests 25] [--rounds 4] [--delay-ms 20]
                            [--overhead-rounds 10] [--overhead-requests 150] [--tmpdir DIR]
                            [--json results.json] [--strict] [--keep]

This file is a script, not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import asyncio
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
from tests.bench.bench_proxy import Child, admin, percentile, run_benchmark, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

TARGET_SPEEDUP = {"two": 1.8, "four": 3.2}  # requests/s over `one`'s, at least
TARGET_ROUTING_ADDED_MS = 0.2  # at p50; or no more than the A/A difference, whichever is larger

SCALE = {"one": None, "two": 2, "four": 4}  # the scale models: their replicas (None: no `replicas:`)
DIRECT = "direct"  # the overhead side's model without replicas
ROUTED = "routed"  # the same with replicas: {local: 1}
OVERHEAD = ("direct", "routed", "direct again")  # the overhead sides
FAKE = "${PYTHON} tests/support/fake_service.py --port ${PORT}"
TIMEOUT = aiohttp.ClientTimeout(total=120)
CHAT = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8}


def model_entry(delay_ms: float, local: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"engine": "command", "cmd": f"{FAKE} --response-delay-ms {delay_ms:g}",
                             "startup_timeout": 60, "max_concurrency": 1, "max_queue": 1000}
    if local is not None:
        entry["replicas"] = {"local": local}
    return entry


def start(workdir: Path, delay_ms: float) -> tuple[Child, str]:
    """The orchestrator (auth off, no GPU inventory, the fake models) and its base URL."""
    port = free_port()
    models = {name: model_entry(delay_ms, local) for name, local in SCALE.items()}
    models[DIRECT] = model_entry(0, None)
    models[ROUTED] = model_entry(0, 1)
    config = {
        "settings": {"host": "127.0.0.1", "port": port, "log_level": "warning", "shutdown_grace": 5,
                     "auth": {"enabled": False}},
        "models": models,
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
        self.bodies = {model: json.dumps({"model": model, **CHAT}).encode()
                       for model in [*SCALE, DIRECT, ROUTED]}

    async def chat(self, model: str) -> float:
        """One chat completion's round trip in seconds; RuntimeError unless HTTP 200."""
        began = time.perf_counter()
        async with self.session.post(self.base + "/v1/chat/completions", data=self.bodies[model],
                                     headers={"content-type": "application/json"}, timeout=TIMEOUT) as resp:
            data = await resp.read()
            elapsed = time.perf_counter() - began
            if resp.status != 200:
                raise RuntimeError(f"{model}: HTTP {resp.status}: {data[:500]!r}")
        return elapsed


async def services_of(session: aiohttp.ClientSession, base: str) -> dict[str, dict[str, Any]]:
    """Every service in GET /admin/services, by id."""
    return {service["id"]: service for service in (await admin(session, base, "GET", "/admin/services"))["services"]}


async def served(session: aiohttp.ClientSession, service: dict[str, Any]) -> int:
    """Requests the service's own process answered (the fake service counts them)."""
    async with session.get(f"http://127.0.0.1:{service['port']}/stats", timeout=TIMEOUT) as resp:
        return int((await resp.json())["requests"])


def summary(values: list[float]) -> dict[str, float]:
    return {"count": len(values), "p50_ms": percentile(values, 50) * 1000, "p99_ms": percentile(values, 99) * 1000}


async def burst(client: Client, model: str, clients: int, requests: int) -> tuple[float, list[float]]:
    """clients concurrent clients sending requests each, one after another: the wall time and every latency."""
    async def one_client() -> list[float]:
        return [await client.chat(model) for _ in range(requests)]

    began = time.perf_counter()
    latencies = await asyncio.gather(*(one_client() for _ in range(clients)))
    return time.perf_counter() - began, [value for values in latencies for value in values]


async def warm(client: Client, session: aiohttp.ClientSession, clients: int) -> dict[str, list[str]]:
    """Load every service, then send traffic to every model: the services by model."""
    services = await services_of(session, client.base)
    by_model: dict[str, list[str]] = {}
    for service_id, service in services.items():
        by_model.setdefault(service.get("model") or service_id, []).append(service_id)
    wanted = {*SCALE, DIRECT, ROUTED}
    missing = wanted - set(by_model)
    if missing:
        raise RuntimeError(f"no service for {sorted(missing)} in GET /admin/services")
    for model, local in SCALE.items():
        if len(by_model[model]) != (local or 1):
            raise RuntimeError(f"model '{model}' has services {by_model[model]}, expected {local or 1}")
    for model in sorted(wanted):
        for service_id in sorted(by_model[model]):
            await admin(session, client.base, "POST", f"/admin/services/{service_id}/load")
    for model in SCALE:
        await burst(client, model, clients, 3)
    for model in (DIRECT, ROUTED):
        for _ in range(30):
            await client.chat(model)
    return by_model


async def bench_scale(client: Client, session: aiohttp.ClientSession, by_model: dict[str, list[str]],
                      args: argparse.Namespace) -> dict[str, Any]:
    services = await services_of(session, client.base)
    before = {sid: await served(session, services[sid]) for model in SCALE for sid in by_model[model]}
    walls: dict[str, float] = {model: 0.0 for model in SCALE}
    samples: dict[str, list[float]] = {model: [] for model in SCALE}
    order = list(SCALE)
    for number in range(args.rounds):
        for model in (order if number % 2 == 0 else order[::-1]):
            wall, latencies = await burst(client, model, args.clients, args.requests)
            walls[model] += wall
            samples[model].extend(latencies)
    results: dict[str, Any] = {}
    for model in SCALE:
        share = {sid: await served(session, services[sid]) - before[sid] for sid in sorted(by_model[model])}
        results[model] = {**summary(samples[model]), "rps": len(samples[model]) / walls[model],
                          "wall_s": walls[model], "services": len(by_model[model]), "served": share}
    for model in SCALE:
        results[model]["speedup"] = results[model]["rps"] / results["one"]["rps"]
    return results


async def bench_overhead(client: Client, rounds: int, requests: int) -> dict[str, Any]:
    names = {"direct": DIRECT, "routed": ROUTED, "direct again": DIRECT}
    samples: dict[str, list[float]] = {side: [] for side in OVERHEAD}
    for number in range(rounds):
        for side in (OVERHEAD if number % 2 == 0 else OVERHEAD[::-1]):
            for _ in range(requests):
                samples[side].append(await client.chat(names[side]))
    results: dict[str, Any] = {side: {**summary(values), "model": names[side]} for side, values in samples.items()}
    direct_p50 = (results["direct"]["p50_ms"] + results["direct again"]["p50_ms"]) / 2
    direct_p99 = (results["direct"]["p99_ms"] + results["direct again"]["p99_ms"]) / 2
    results["added_p50_ms"] = results["routed"]["p50_ms"] - direct_p50
    results["added_p99_ms"] = results["routed"]["p99_ms"] - direct_p99
    results["noise_p50_ms"] = abs(results["direct"]["p50_ms"] - results["direct again"]["p50_ms"])
    results["noise_p99_ms"] = abs(results["direct"]["p99_ms"] - results["direct again"]["p99_ms"])
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    meta = results["meta"]
    print(f"replicas: one orchestrator (auth off, no GPU inventory: services in host memory), fake models "
          f"(command engine), max_concurrency 1; {meta['cores']} cores (client, orchestrator and services share "
          "them)")
    scale, overhead = results["scale"], results["overhead"]
    print(f"\nscale: POST /v1/chat/completions (non-streaming), the service answering after {args.delay_ms:g} ms; "
          f"{args.rounds} alternating rounds of {args.clients} concurrent clients x {args.requests} requests per "
          "model")
    print(f"{'model':>6} {'replicas':>9} {'count':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'speedup':>8}  "
          "served per service")
    for model, local in SCALE.items():
        figures = scale[model]
        share = " ".join(f"{sid}:{count}" for sid, count in figures["served"].items())
        print(f"{model:>6} {'-' if local is None else local:>9} {figures['count']:>6} {figures['rps']:>8.1f} "
              f"{figures['p50_ms']:>8.2f} {figures['p99_ms']:>8.2f} {figures['speedup']:>7.2f}x  {share}")
    ideal = 1000 / args.delay_ms
    print(f"  one service at a time answers at most {ideal:.0f} requests/s ({args.delay_ms:g} ms each); "
          f"`one` reached {scale['one']['rps'] / ideal:.0%} of that")
    print(f"\noverhead: POST /v1/chat/completions (non-streaming), no delay, {args.overhead_rounds} alternating "
          f"rounds of {args.overhead_requests} per side, sequential")
    print(f"{'side':>14} {'model':>8} {'count':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for side in OVERHEAD:
        figures = overhead[side]
        print(f"{side:>14} {figures['model']:>8} {figures['count']:>6} {figures['p50_ms']:>8.3f} "
              f"{figures['p99_ms']:>8.3f}")
    print(f"  routing (replicas: {{local: 1}}) adds {overhead['added_p50_ms']:+.3f} ms at p50, "
          f"{overhead['added_p99_ms']:+.3f} ms at p99 (vs the mean of both direct sides); A/A noise between the "
          f"direct sides: {overhead['noise_p50_ms']:.3f} ms at p50, {overhead['noise_p99_ms']:.3f} ms at p99")

    targets = []
    for model, limit in TARGET_SPEEDUP.items():
        value = scale[model]["speedup"]
        targets.append({"name": f"{model} ({SCALE[model]} local replicas) requests/s over one's", "value": value,
                        "limit": limit, "unit": "x", "relation": ">=",
                        "result": "PASS" if value >= limit else "MISS"})
    allowed = max(TARGET_ROUTING_ADDED_MS, overhead["noise_p50_ms"])
    targets.append({"name": f"routing added at p50 (within max(A/A noise, {TARGET_ROUTING_ADDED_MS:g} ms))",
                    "value": overhead["added_p50_ms"], "limit": allowed, "unit": "ms", "relation": "<=",
                    "result": "PASS" if overhead["added_p50_ms"] <= allowed else "MISS"})
    print("\ntargets:")
    for target in targets:
        print(f"  {target['name']}: {target['value']:.3f} {target['unit']} (target {target['relation']} "
              f"{target['limit']:,.3g} {target['unit']})  {target['result']}")
    if meta["restarted"]:
        print(f"\nwarning: services restarted or stopped during the run: {', '.join(meta['restarted'])}")
    return targets


async def benchmark(args: argparse.Namespace, workdir: Path, children: list[Child]) -> int:
    child, base = start(workdir, args.delay_ms)
    children.append(child)
    began = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await wait_ready(session, base + "/ready", child, limit_s=120)
        results: dict[str, Any] = {"meta": {"cores": os.cpu_count(), "python": sys.version.split()[0],
                                            "clients": args.clients, "requests": args.requests,
                                            "rounds": args.rounds, "delay_ms": args.delay_ms,
                                            "overhead_rounds": args.overhead_rounds,
                                            "overhead_requests": args.overhead_requests,
                                            "start_s": time.perf_counter() - began}}
        client = Client(session, base)
        by_model = await warm(client, session, args.clients)
        results["meta"]["warm_s"] = time.perf_counter() - began
        results["scale"] = await bench_scale(client, session, by_model, args)
        results["overhead"] = await bench_overhead(client, args.overhead_rounds, args.overhead_requests)
        if child.popen.poll() is not None:
            raise RuntimeError(f"the orchestrator exited:\n{child.log_tail()}")
        services = await services_of(session, base)
        results["meta"]["restarted"] = sorted(sid for sid, service in services.items()
                                              if service.get("starts") != 1 or service.get("state") != "ready")
    results["meta"]["total_s"] = time.perf_counter() - began
    targets = report(results, args)
    print(f"\n(orchestrator ready in {results['meta']['start_s']:.1f} s, services loaded and warm at "
          f"{results['meta']['warm_s']:.1f} s; run took {results['meta']['total_s']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "targets": targets}, indent=2, default=str))
        print(f"results written to {args.json}")
    return 1 if args.strict and any(target["result"] != "PASS" for target in targets) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8, metavar="N",
                        help="concurrent clients in the scale comparison (default 8)")
    parser.add_argument("--requests", type=int, default=25, metavar="N",
                        help="requests each client sends per model per round (default 25)")
    parser.add_argument("--rounds", type=int, default=4, metavar="N",
                        help="alternating rounds of the scale comparison (default 4)")
    parser.add_argument("--delay-ms", type=float, default=20.0, metavar="MS",
                        help="how long the scale models' service takes per answer (default 20)")
    parser.add_argument("--overhead-rounds", type=int, default=10, metavar="N",
                        help="alternating rounds of the routing-overhead comparison (default 10)")
    parser.add_argument("--overhead-requests", type=int, default=150, metavar="N",
                        help="sequential requests per side per round of the overhead comparison (default 150)")
    parser.add_argument("--tmpdir", metavar="DIR",
                        help="where the temp state directory goes (default: the system's temp directory)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (orchestrator log, state)")
    args = parser.parse_args(argv)
    if min(args.clients, args.requests, args.rounds, args.overhead_rounds, args.overhead_requests) < 1:
        parser.error("--clients, --requests, --rounds, --overhead-rounds and --overhead-requests must be positive")
    if not 1 <= args.delay_ms <= 10_000:
        parser.error("--delay-ms must be in [1, 10000]")

    return run_benchmark(benchmark, args, "modelyard-bench-replicas-")


if __name__ == "__main__":
    sys.exit(main())
