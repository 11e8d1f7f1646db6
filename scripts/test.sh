#!/usr/bin/env bash
# Installs what the tests need (the appliance's own install plus test tools)
# and runs the whole suite. Arguments go to pytest.
#
#   scripts/test.sh [PYTEST ARGS...]
set -euo pipefail
source "$(dirname "$0")/common.sh"

"$ROOT/scripts/install.sh" --test --engine vllm --engine transformers --engine embeddings --engine onnx --engine diffusers --engine musicgen
cd "$ROOT"
export MODELYARD_TRANSFORMERS_PYTHON="$ENVS_DIR/transformers/bin/python"
export MODELYARD_SMOLLM2_DIR="$STATE_DIR/models/smollm2-135m"
exec "$ORCH_PY" -m pytest -p no:cacheprovider "$@"
