#!/usr/bin/env bash
# Stops the orchestrator of this state directory and, with it, its services.
#
#   scripts/stop-all.sh [--timeout SECONDS]
set -euo pipefail
source "$(dirname "$0")/common.sh"

TIMEOUT=30
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) [ $# -ge 2 ] || die "--timeout needs a number"; TIMEOUT="$2"; shift 2 ;;
    *) printf 'usage: %s [--timeout SECONDS]\n' "$0" >&2; exit 2 ;;
  esac
done

lock="$STATE_DIR/orchestrator.lock"
pid="$(cat "$lock" 2>/dev/null || true)"
if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
  say "no orchestrator is running for $STATE_DIR"
  exit 0
fi
say "stopping the orchestrator (pid $pid); in-flight requests may finish"
kill -TERM "$pid"
for ((i = 0; i < TIMEOUT * 10; i++)); do
  kill -0 "$pid" 2>/dev/null || { say "stopped"; exit 0; }
  sleep 0.1
done
say "still running after ${TIMEOUT}s: killing it (its reaper stops the services)"
kill -KILL "$pid" 2>/dev/null || true
