#!/usr/bin/env bash
# Stops the orchestrator of a state directory and, with it, its services.
#
#   scripts/stop-all.sh [--state-dir DIR] [--timeout SECONDS]
set -euo pipefail
source "$(dirname "$0")/common.sh"

TIMEOUT=30
usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || { echo "modelyard: --timeout needs whole seconds" >&2; usage; }
               TIMEOUT="$2"; shift 2 ;;
    --state-dir) [ $# -ge 2 ] || usage; STATE_DIR="$(realpath -m "$2")"; shift 2 ;;
    -h|--help) usage ;;
    *) printf 'modelyard: unknown argument: %s\n' "$1" >&2; usage ;;
  esac
done

lock="$STATE_DIR/orchestrator.lock"
trap 'rm -f "$STATE_DIR/orchestrator.pid"' EXIT  # written by start-all.sh --daemon
# The orchestrator holds an exclusive lock on this file while it runs: if we
# can take it, nothing runs (and the pid inside may belong to anyone by now).
if [ ! -f "$lock" ] || flock -n "$lock" true; then
  say "no orchestrator is running for $STATE_DIR"
  exit 0
fi
pid="$(cat "$lock")"
say "stopping the orchestrator (pid $pid); in-flight requests may finish"
kill -TERM "$pid"
for ((i = 0; i < TIMEOUT * 10; i++)); do
  flock -n "$lock" true && { say "stopped"; exit 0; }
  sleep 0.1
done
say "still running after ${TIMEOUT}s: killing it (its reaper stops the services)"
kill -KILL "$pid" 2>/dev/null || true
