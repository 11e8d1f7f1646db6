#!/usr/bin/env bash
# Fetches the weights of the config's models that name a `source` (a Hugging
# Face repo) into their `model` directory, with huggingface_hub. Needs a
# network (HF_TOKEN for gated repos); models already there are skipped.
#
#   scripts/download-models.sh [--config FILE] [--model ID]...
set -euo pipefail
source "$(dirname "$0")/common.sh"

CONFIG="${MODELYARD_CONFIG:-$ROOT/configs/models.yaml}"
ONLY=()
usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --config) [ $# -ge 2 ] || usage; CONFIG="$2"; shift 2 ;;
    --model) [ $# -ge 2 ] || usage; ONLY+=("$2"); shift 2 ;;
    -h|--help) usage ;;
    *) printf 'modelyard: unknown argument: %s\n' "$1" >&2; usage ;;
  esac
done
[ -x "$ORCH_PY" ] || die "the orchestrator environment is missing; run ./scripts/install.sh first"

# What to fetch: id, repo, revision, directory for each model with a source,
# separated by \x1f (not a tab: `read` would merge an empty revision away).
plan="$(cd "$ROOT" && "$ORCH_PY" -c '
import sys
from core.config import ROOT_DIR, ConfigError, expand, load_config
try:
    config = load_config(sys.argv[1])
except ConfigError as err:
    sys.exit(f"modelyard: invalid configuration\n{err}")
only = set(sys.argv[2:])
unknown = only - set(config.models)
if unknown:
    names = ", ".join(sorted(unknown))
    sys.exit(f"modelyard: no such model in {sys.argv[1]}: {names}")
for model_id, model in config.models.items():
    if (only and model_id not in only) or not model.source:
        continue
    if not model.model or "://" in model.model:
        sys.exit(f"modelyard: model {model_id!r} has a source but no local `model` directory to fetch it into")
    repo, _, revision = model.source.partition("@")
    values = {"STATE_DIR": str(config.state_path()), "ROOT": str(ROOT_DIR), "MODEL_ID": model_id}
    print("\x1f".join([model_id, repo, revision, expand(model.model, values)]))
' "$CONFIG" "${ONLY[@]}")"
if [ -z "$plan" ]; then
  say "nothing to download: no model in $CONFIG names a source"
  exit 0
fi

# huggingface_hub comes with every engine environment (transformers needs it).
PY=""
for engine in vllm transformers embeddings onnx; do
  [ -x "$ENVS_DIR/$engine/bin/python" ] && { PY="$ENVS_DIR/$engine/bin/python"; break; }
done
[ -n "$PY" ] || die "no engine environment to download with; run ./scripts/install.sh first"

failed=0
while IFS=$'\x1f' read -r model_id repo revision dir; do
  say "$model_id: $repo${revision:+@$revision} -> $dir"
  args=(--repo "$repo" --out "$dir")
  [ -n "$revision" ] && args+=(--revision "$revision")
  set +e
  "$PY" "$ROOT/scripts/download_model.py" "${args[@]}"
  code=$?
  set -e
  [ "$code" = 2 ] && exit 2  # no network: the next ones would fail the same way
  [ "$code" = 0 ] || failed=1
done <<< "$plan"
exit "$failed"
