#!/usr/bin/env bash
# Installs what the tests need (the appliance's own install plus test tools)
# and runs the whole suite. Arguments go to pytest.
#
#   scripts/test.sh [PYTEST ARGS...]
set -euo pipefail
source "$(dirname "$0")/common.sh"

"$ROOT/scripts/install.sh" --test --engine vllm --engine transformers --engine embeddings --engine onnx --engine diffusers --engine musicgen --engine drift --engine simulator
cd "$ROOT"

# The dashboard's browser tests (tests/test_dashboard_browser.py) drive Debian's
# Chromium through Playwright; Playwright's own browser download is never used.
# Where it cannot be installed, the other tests still run and the browser tests fail saying why.
install_chromium() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        sudo -n true 2>/dev/null || { say "warning: cannot install chromium (not root, no sudo): the browser tests will fail; apt-get install chromium, or set MODELYARD_CHROMIUM"; return 0; }
        sudo="sudo -n"
    fi
    say "installing Debian's chromium for the dashboard's browser tests"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q chromium > /dev/null ||
        { $sudo apt-get update -q > /dev/null && $sudo apt-get install -y -q chromium > /dev/null; } ||
        say "warning: apt-get could not install chromium: the browser tests will fail"
}
if [ -z "${MODELYARD_CHROMIUM:-}" ]; then
    command -v chromium > /dev/null 2>&1 || install_chromium
    MODELYARD_CHROMIUM="$(command -v chromium || echo /usr/bin/chromium)"
fi
export MODELYARD_CHROMIUM
# Screenshots and other files tests keep for people to look at (the default folder holds this run's only).
if [ -z "${MODELYARD_ARTIFACTS:-}" ]; then
    export MODELYARD_ARTIFACTS="$STATE_DIR/test-artifacts"
    rm -rf "$MODELYARD_ARTIFACTS"
fi
export MODELYARD_TRANSFORMERS_PYTHON="$ENVS_DIR/transformers/bin/python"
export MODELYARD_SMOLLM2_DIR="$STATE_DIR/models/smollm2-135m"
# Every test's temporary files (the orchestrators' and services' logs among them) under one
# directory, so that the logs of the whole run can be searched for secrets afterwards.
RUN_DIR="$STATE_DIR/test-run"
rm -rf "$RUN_DIR" && mkdir -p "$RUN_DIR"  # only this run's logs are scanned
status=0
"$ORCH_PY" -m pytest -p no:cacheprovider --basetemp "$RUN_DIR" "$@" || status=$?
"$ORCH_PY" scripts/scan_secrets.py "$RUN_DIR" || status=$((status ? status : 1))
say "test artefacts (the dashboard's screenshots): $MODELYARD_ARTIFACTS"
exit "$status"
