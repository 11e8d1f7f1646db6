# Shared by the scripts in this folder: paths and a Python 3.11 to build with.
# shellcheck shell=bash
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${MODELYARD_STATE_DIR:-$ROOT/state}"
ENVS_DIR="${MODELYARD_ENVS_DIR:-$STATE_DIR/envs}"
ORCH_PY="$ENVS_DIR/orchestrator/bin/python"

say() { printf '\033[1mmodelyard:\033[0m %s\n' "$*" >&2; }
die() { printf 'modelyard: error: %s\n' "$*" >&2; exit 1; }

find_python() {
  local candidate
  for candidate in "${MODELYARD_PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  die "Python 3.11 is required (set MODELYARD_PYTHON to its path, or install python3.11 and python3.11-venv)"
}
