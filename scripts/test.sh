#!/usr/bin/env bash
# Installs what the tests need (the appliance's own install plus test tools)
# and runs the whole suite. Arguments go to pytest.
#
#   scripts/test.sh [PYTEST ARGS...]
set -euo pipefail
source "$(dirname "$0")/common.sh"

"$ROOT/scripts/install.sh" --test --engine vllm --engine transformers --engine embeddings --engine onnx --engine diffusers --engine musicgen --engine drift --engine simulator
cd "$ROOT"
export MODELYARD_TRANSFORMERS_PYTHON="$ENVS_DIR/transformers/bin/python"
export MODELYARD_SMOLLM2_DIR="$STATE_DIR/models/smollm2-135m"
# Every test's temporary files (the orchestrators' and services' logs among them) under one
# directory, so that the logs of the whole run can be searched for secrets afterwards.
RUN_DIR="$STATE_DIR/test-run"
rm -rf "$RUN_DIR" && mkdir -p "$RUN_DIR"  # only this run's logs are scanned
status=0
"$ORCH_PY" -m pytest -p no:cacheprovider --basetemp "$RUN_DIR" "$@" || status=$?
"$ORCH_PY" scripts/scan_secrets.py "$RUN_DIR" || status=$((status ? status : 1))
exit "$status"
