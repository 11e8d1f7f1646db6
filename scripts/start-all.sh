#!/usr/bin/env bash
# Installs whatever is missing, then runs the orchestrator in the foreground,
# or with --daemon in the background (log: <state>/logs/orchestrator.log, pid:
# <state>/orchestrator.pid), returning once it serves.
#
#   scripts/start-all.sh [--daemon] [--config FILE] [--host ADDR] [--port N] [--state-dir DIR]
#
# Stop it with Ctrl-C or scripts/stop-all.sh; its model services stop with it.
set -euo pipefail
source "$(dirname "$0")/common.sh"

config_args=()
daemon=0
args=()
for arg in "$@"; do
  if [ "$arg" = "--daemon" ]; then daemon=1; else args+=("$arg"); fi
done
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --config) config_args=(--config "${args[$((i + 1))]:-}") ;;
    --state-dir)
      # Absolute, because we run from the checkout; exported for install.sh too.
      STATE_DIR="$(realpath -m "${args[$((i + 1))]:-state}")"
      args[$((i + 1))]="$STATE_DIR"
      export MODELYARD_STATE_DIR="$STATE_DIR"
      ENVS_DIR="${MODELYARD_ENVS_DIR:-$STATE_DIR/envs}"
      ORCH_PY="$ENVS_DIR/orchestrator/bin/python" ;;
  esac
done

"$ROOT/scripts/install.sh" "${config_args[@]}"
cd "$ROOT"
if [ "$daemon" = 0 ]; then
  exec "$ORCH_PY" -m orchestrator "${args[@]}"
fi

log="$STATE_DIR/logs/orchestrator.log"
pidfile="$STATE_DIR/orchestrator.pid"
mkdir -p "$(dirname "$log")"
touch "$log"
offset=$(($(stat -c %s "$log") + 1))  # this start's lines begin here
# Its own session, no terminal: it outlives this shell; stop it with stop-all.sh.
setsid "$ORCH_PY" -m orchestrator "${args[@]}" >> "$log" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$pidfile"
for ((i = 0; i < 600; i++)); do  # up to 60 s
  if tail -c "+$offset" "$log" | grep -q "^modelyard listening on"; then
    say "running in the background (pid $pid); log: $log; stop: ./scripts/stop-all.sh"
    tail -c "+$offset" "$log" | sed -n '/^modelyard listening on/,/^try:/p'
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    rm -f "$pidfile"
    tail -c "+$offset" "$log" | tail -n 20 >&2
    die "the orchestrator exited during start-up (log: $log)"
  fi
  sleep 0.1
done
die "the orchestrator did not start serving within 60 s (pid $pid, log: $log)"
