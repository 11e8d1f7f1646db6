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

# Running, and not a zombie waiting for its parent to collect it.
alive() { kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

lock="$STATE_DIR/orchestrator.lock"
pid="$(cat "$lock" 2>/dev/null || true)"
if [ -z "$pid" ] || ! alive "$pid"; then
  say "no orchestrator is running for $STATE_DIR"
  exit 0
fi
say "stopping the orchestrator (pid $pid); in-flight requests may finish"
kill -TERM "$pid"
for ((i = 0; i < TIMEOUT * 10; i++)); do
  alive "$pid" || { say "stopped"; exit 0; }
  sleep 0.1
done
say "still running after ${TIMEOUT}s: killing it (its reaper stops the services)"
kill -KILL "$pid" 2>/dev/null || true
