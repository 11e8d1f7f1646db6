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
install_chromium() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        sudo -n true 2>/dev/null || die "the browser tests need Debian's chromium package: apt-get install chromium (as root)"
        sudo="sudo -n"
    fi
    say "installing Debian's chromium for the dashboard's browser tests"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q chromium > /dev/null ||
        { $sudo apt-get update -q > /dev/null && $sudo apt-get install -y -q chromium > /dev/null; } ||
        die "apt-get could not install chromium"
}
command -v chromium > /dev/null 2>&1 || install_chromium
export MODELYARD_CHROMIUM="${MODELYARD_CHROMIUM:-$(command -v chromium)}"
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
