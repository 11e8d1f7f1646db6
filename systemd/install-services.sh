#!/usr/bin/env bash
# Installs modelyard as a systemd service (run as root), after installing what
# it needs (scripts/install.sh).
#
#   systemd/install-services.sh [--user NAME] [--config FILE] [--state-dir DIR]
#                               [--prefix DIR] [--no-start] [--print]
#
# --prefix DIR writes etc/systemd/system/modelyard.service and
# etc/modelyard/modelyard.env under DIR instead of / (and starts nothing);
# --print only prints the unit. Logs: journalctl -u modelyard -f
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"

RUN_AS="${SUDO_USER:-$(id -un)}"
CONFIG="$ROOT/configs/models.yaml"
PREFIX=""
START=1
PRINT=0
usage() { echo 'usage:' >&2; sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --user) [ $# -ge 2 ] || usage; RUN_AS="$2"; shift 2 ;;
    --config) [ $# -ge 2 ] || usage; CONFIG="$(realpath -m "$2")"; shift 2 ;;
    --state-dir) [ $# -ge 2 ] || usage; STATE_DIR="$(realpath -m "$2")"; ENVS_DIR="${MODELYARD_ENVS_DIR:-$STATE_DIR/envs}"
                 ORCH_PY="$ENVS_DIR/orchestrator/bin/python"; shift 2 ;;
    --prefix) [ $# -ge 2 ] || usage; PREFIX="$(realpath -m "$2")"; START=0; shift 2 ;;
    --no-start) START=0; shift ;;
    --print) PRINT=1; shift ;;
    -h|--help) usage ;;
    *) printf 'modelyard: unknown argument: %s\n' "$1" >&2; usage ;;
  esac
done
id "$RUN_AS" >/dev/null 2>&1 || die "no such user: $RUN_AS"

ENV_FILE="/etc/modelyard/modelyard.env"
render() {
  sed -e "s|@ROOT@|$ROOT|g" -e "s|@USER@|$RUN_AS|g" -e "s|@STATE_DIR@|$STATE_DIR|g" \
      -e "s|@CONFIG@|$CONFIG|g" -e "s|@ENV_FILE@|$ENV_FILE|g" -e "s|@PYTHON@|$ORCH_PY|g" \
      "$ROOT/systemd/modelyard.service.in"
}
if [ "$PRINT" = 1 ]; then render; exit 0; fi

[ -x "$ORCH_PY" ] || MODELYARD_STATE_DIR="$STATE_DIR" "$ROOT/scripts/install.sh" --config "$CONFIG"
"$ORCH_PY" -m orchestrator --config "$CONFIG" --check >/dev/null || die "fix $CONFIG first"

unit="$PREFIX/etc/systemd/system/modelyard.service"
env_file="$PREFIX$ENV_FILE"
mkdir -p "$(dirname "$unit")" "$(dirname "$env_file")"
render > "$unit"
if [ ! -f "$env_file" ]; then
  cat > "$env_file" <<'ENV'
# Environment for the modelyard service (KEY=value lines; secrets belong here,
# readable by root only). Examples:
# MODELYARD_CONFIG=/path/to/models.yaml
# HF_TOKEN=...
ENV
  chmod 600 "$env_file"
fi
say "installed $unit"
if [ "$START" = 1 ]; then
  systemctl daemon-reload
  systemctl enable --now modelyard
  say "started: systemctl status modelyard; logs: journalctl -u modelyard -f"
fi
