#!/usr/bin/env bash
# Proxy benchmark: a fast OpenAI-compatible test upstream driven directly and
# through the orchestrator, side by side; prints latency, requests/s, time to
# first chunk, the orchestrator's CPU per request and the targets (PASS/MISS).
#
#   scripts/bench.sh [--json results.json] [--scale 0.5] [--only SCENARIO] [--strict]
#
# Runs with the orchestrator's environment ($ENVS_DIR/orchestrator); set
# MODELYARD_BENCH_PYTHON to use another interpreter (it needs aiohttp, psutil,
# pyyaml and the orchestrator's requirements).
set -euo pipefail
source "$(dirname "$0")/common.sh"

ORCH_PY="${MODELYARD_BENCH_PYTHON:-$ORCH_PY}"
[ -x "$ORCH_PY" ] || die "no Python at $ORCH_PY: run ./scripts/install.sh first, or set MODELYARD_BENCH_PYTHON"
cd "$ROOT"
exec "$ORCH_PY" tests/bench/bench_proxy.py "$@"
