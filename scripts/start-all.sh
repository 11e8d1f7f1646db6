#!/usr/bin/env bash
# Installs whatever is missing, then runs the orchestrator in the foreground.
#
#   scripts/start-all.sh [--config FILE] [--host ADDR] [--port N] [--state-dir DIR]
#
# Stop it with Ctrl-C or scripts/stop-all.sh; its model services stop with it.
set -euo pipefail
source "$(dirname "$0")/common.sh"

config_args=()
args=("$@")
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
exec "$ORCH_PY" -m orchestrator "${args[@]}"
