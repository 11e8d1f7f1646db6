"""The RunPod template (docs/RUNPOD_TEMPLATE.md): scripts/prepare-template.sh
puts the config, the state and the first admin key on the volume and serves
on every address with auth on; the image's build step finds its environments;
the Dockerfile copies what exists and runs what the doc says. No image is
built here: these machines have no Docker daemon."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
from pathlib import Path

import httpx
import yaml

from core.process import free_port
from tests.conftest import ROOT, instance_processes, wait_until
from tests.support.engine_process import engine_python

SCRIPT = ROOT / "scripts" / "prepare-template.sh"
DOCKERFILE = ROOT / "configs" / "runpod" / "Dockerfile"
TEMPLATE = ROOT / "configs" / "runpod" / "models.yaml"


def installed() -> dict[str, str]:
    """The installed environments (the image's /opt/modelyard/envs, here)."""
    return {**os.environ, "MODELYARD_ENVS_DIR": str(engine_python("drift").parent.parent.parent)}


def prepared_volume(tmp_path: Path) -> Path:
    """A volume whose state already holds the default models (linked, not converted again)."""
    workspace = tmp_path / "workspace"
    state = workspace / "modelyard" / "state"
    state.mkdir(parents=True)
    models = Path(os.environ.get("MODELYARD_SMOLLM2_DIR", ROOT / "state" / "models" / "smollm2-135m")).parent
    (state / "models").symlink_to(models)
    return workspace


def test_the_pod_serves_from_the_volume_with_auth_and_a_key_made_once(tmp_path: Path) -> None:
    workspace = prepared_volume(tmp_path)
    home = workspace / "modelyard"
    port = free_port()
    log = tmp_path / "pod.log"
    with log.open("w") as out:
        pod = subprocess.Popen([str(SCRIPT), "--workspace", str(workspace), "--port", str(port), "--start"],
                               cwd=tmp_path, env=installed(), stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: "modelyard listening on" in log.read_text() or pod.poll() is not None, 180)
        assert pod.poll() is None, log.read_text()
        assert f"listening on http://0.0.0.0:{port}" in log.read_text()  # RunPod's proxy reaches every address
        assert yaml.safe_load((home / "models.yaml").read_text()) == yaml.safe_load(TEMPLATE.read_text())
        key_file = home / "admin-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert re.fullmatch(r"my-[0-9a-f]{12}-\S+", key) and key not in log.read_text()
        assert (home / "state" / "keys.db").exists() and (home / "state" / "logs").is_dir()

        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/admin/services", timeout=10).status_code == 401
        admin = {"Authorization": f"Bearer {key}"}
        services = httpx.get(url + "/admin/services", headers=admin, timeout=10).json()["services"]
        assert {s["id"] for s in services} == {"smollm2-135m", "all-minilm-l6-v2"}
        drift = httpx.get(url + "/drift/monitors", headers=admin, timeout=60)  # the sibling runs too
        assert drift.status_code == 200, drift.text
        hardware = httpx.get(url + "/simulator/hardware", headers=admin, timeout=60)
        assert hardware.status_code == 200, hardware.text
    finally:
        pod.send_signal(signal.SIGTERM)
        pod.wait(60)
    assert wait_until(lambda: not instance_processes(home / "state"), 15)

    # The next start (a restarted pod) keeps the volume's key and config as they are.
    again = subprocess.run([str(SCRIPT), "--workspace", str(workspace)], cwd=tmp_path, env=installed(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert key_file.read_text().strip() == key and "made the first admin key" not in again.stderr


def test_without_a_volume_it_says_so(tmp_path: Path) -> None:
    done = subprocess.run([str(SCRIPT), "--workspace", str(tmp_path / "missing")], env=installed(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "attach a network volume" in done.stderr
    usage = subprocess.run([str(SCRIPT), "--frob"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "prepare-template.sh --image" in usage.stderr


def test_the_image_build_step_installs_environments_and_no_weights(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = subprocess.run([str(SCRIPT), "--image"], env={**installed(), "MODELYARD_STATE_DIR": str(state)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not (state / "models").exists()  # weights go to the volume at the first start


def test_the_dockerfile_copies_what_exists_and_runs_the_template() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM (\S+)", text, re.M)
    assert base and ":" in base.group(1) and not base.group(1).endswith(":latest")  # a pinned base
    for sources in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for source in sources.split():
            assert (ROOT / source).exists(), source
    assert "scripts/prepare-template.sh --image" in text
    port = yaml.safe_load(TEMPLATE.read_text())["settings"]["port"]
    assert re.search(rf"^EXPOSE {port}$", text, re.M)
    assert f"http://127.0.0.1:{port}/health" in text
    assert re.search(r'^CMD \["scripts/prepare-template.sh", "--start"\]$', text, re.M)
    assert os.access(SCRIPT, os.X_OK)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "state" in ignored and ".git" in ignored  # gigabytes of environments stay out of the context
