#!/usr/bin/env bash
# modelyard on RunPod (docs/RUNPOD_TEMPLATE.md).
#
#   scripts/prepare-template.sh --image              at image build: the environments, baked in
#   scripts/prepare-template.sh [--start] [OPTIONS]  on the pod: state on the volume, then serve
#
#   --workspace DIR  the network volume (default /workspace)
#   --port N         the port to serve on (default: the config's, 9000)
#   --start          after preparing, run the orchestrator in the foreground (the pod's command)
#
# On the pod, everything that must survive a restart lives on the volume:
# DIR/modelyard/models.yaml (copied from configs/runpod/models.yaml the first
# time; edit it there), DIR/modelyard/state (databases, logs, model weights),
# and DIR/modelyard/admin-key, the first admin API key (mode 600, made once,
# never printed). The engine environments come from the image
# (MODELYARD_ENVS_DIR, /opt/modelyard/envs) or, without it, are built on the volume.
set -euo pipefail
source "$(dirname "$0")/common.sh"

WORKSPACE="/workspace"
MODE="prepare"
PORT_ARGS=()
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --image) MODE="image"; shift ;;
    --start) MODE="start"; shift ;;
    --workspace) [ $# -ge 2 ] || usage; WORKSPACE="$2"; shift 2 ;;
    --port) [ $# -ge 2 ] || usage; PORT_ARGS=(--port "$2"); shift 2 ;;
    -h|--help) usage ;;
    *) printf 'modelyard: unknown argument: %s\n' "$1" >&2; usage ;;
  esac
done

TEMPLATE_CONFIG="$ROOT/configs/runpod/models.yaml"
if [ "$MODE" = image ]; then
  # Every engine the template's config uses (and the test tools: none), without models:
  # weights go to the volume at the first start, not into the image.
  "$ROOT/scripts/install.sh" --config "$TEMPLATE_CONFIG" --no-model
  exit 0
fi

[ -d "$WORKSPACE" ] || die "no volume at $WORKSPACE: attach a network volume there (or give --workspace DIR)"
HOME_DIR="$(realpath -m "$WORKSPACE/modelyard")"
export MODELYARD_STATE_DIR="$HOME_DIR/state"
STATE_DIR="$MODELYARD_STATE_DIR"
ENVS_DIR="${MODELYARD_ENVS_DIR:-$STATE_DIR/envs}"
ORCH_PY="$ENVS_DIR/orchestrator/bin/python"
CONFIG="$HOME_DIR/models.yaml"
mkdir -p "$STATE_DIR"
if [ ! -f "$CONFIG" ]; then
  cp "$TEMPLATE_CONFIG" "$CONFIG"
  say "wrote $CONFIG (the pod's models.yaml: edit it there)"
fi

# What is missing (environments when the image has none, the default models' weights).
"$ROOT/scripts/install.sh" --config "$CONFIG"

# The first admin key, once: in a file on the volume only the pod's user can read.
KEY_FILE="$HOME_DIR/admin-key"
if [ ! -s "$KEY_FILE" ]; then
  cd "$ROOT"
  (umask 077 && "$ORCH_PY" -m orchestrator.keys_cli --state-dir "$STATE_DIR" --json create \
    --name runpod-admin --role admin --owner prepare-template.sh |
    "$ORCH_PY" -c 'import json, sys; print(json.load(sys.stdin)["key"])' > "$KEY_FILE.new")
  mv "$KEY_FILE.new" "$KEY_FILE"
  say "made the first admin key: it is in $KEY_FILE (read it there; it is not printed)"
fi

if [ "$MODE" = start ]; then
  exec "$ROOT/scripts/start-all.sh" --config "$CONFIG" --state-dir "$STATE_DIR" "${PORT_ARGS[@]}"
fi
say "prepared: start with $0 --start (the pod's command)"
