"""The scripts a user runs: stop-all.sh and the install script's argument handling."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import ROOT, fake_model, instance_processes


def run_script(name: str, *args: str, state_dir=None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if state_dir is not None:
        env["MODELYARD_STATE_DIR"] = str(state_dir)
    return subprocess.run(["bash", f"scripts/{name}", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_stop_all_stops_the_orchestrator_and_its_services(orchestrator):
    orch = orchestrator({"models": {"m": fake_model("--spawn-child")}})
    with orch.client() as client:
        assert client.post("/admin/services/m/load").status_code == 200
    assert len(instance_processes(orch.state_dir)) == 2
    result = run_script("stop-all.sh", state_dir=orch.state_dir)
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stderr
    # uvicorn re-raises SIGTERM after its graceful shutdown; never a SIGKILL here
    assert orch.process.wait(timeout=5) in (0, -15)
    assert '"msg": "service stopped", "model": "m"' in orch.log()  # stopped by the orchestrator itself
    assert instance_processes(orch.state_dir) == []


def test_stop_all_with_nothing_running_says_so(tmp_path):
    result = run_script("stop-all.sh", state_dir=tmp_path)
    assert result.returncode == 0
    assert "no orchestrator is running" in result.stderr


def test_stop_all_does_not_signal_a_stale_pid(tmp_path):
    # A lock file left by a dead orchestrator names a pid that may be reused.
    (tmp_path / "orchestrator.lock").write_text(str(os.getpid()))
    result = run_script("stop-all.sh", "--state-dir", str(tmp_path))
    assert result.returncode == 0
    assert "no orchestrator is running" in result.stderr  # and this test process is still alive


def test_scripts_reject_bad_arguments_with_usage(tmp_path):
    for script, args in [
        ("install.sh", ["--bogus"]),
        ("stop-all.sh", ["--bogus"]),
        ("stop-all.sh", ["--timeout", "1.5"]),
        ("stop-all.sh", ["--timeout", "abc"]),
        ("install.sh", ["--engine"]),
    ]:
        result = run_script(script, *args, state_dir=tmp_path)
        assert result.returncode == 2, (script, args)
        assert "usage" in result.stderr.lower() or "scripts/" in result.stderr


def test_start_all_daemon_then_stop_all_leaves_nothing_running(tmp_path):
    import httpx
    import yaml

    from core.process import free_port

    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": {"m": fake_model("--spawn-child")}}))
    state = tmp_path / "state"
    port = free_port()
    env = {**os.environ, "MODELYARD_STATE_DIR": str(state),
           "MODELYARD_ENVS_DIR": os.environ.get("MODELYARD_ENVS_DIR", str(ROOT / "state" / "envs"))}
    started = subprocess.run(["bash", "scripts/start-all.sh", "--daemon", "--config", str(config), "--port", str(port)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    assert f"modelyard listening on http://127.0.0.1:{port}" in started.stdout
    pid = int((state / "orchestrator.pid").read_text())
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(url + "/admin/services/m/load", timeout=30).status_code == 200
        assert len(instance_processes(state)) == 2  # the service and its child
    finally:
        stopped = subprocess.run(["bash", "scripts/stop-all.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stderr, stopped.stderr
    assert not (state / "orchestrator.pid").exists()
    assert instance_processes(state) == []
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert "modelyard listening on" in (state / "logs" / "orchestrator.log").read_text()


def test_start_all_daemon_reports_a_broken_config(tmp_path):
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  m:\n    engine: warp-drive\n")
    env = {**os.environ, "MODELYARD_STATE_DIR": str(tmp_path / "state"),
           "MODELYARD_ENVS_DIR": os.environ.get("MODELYARD_ENVS_DIR", str(ROOT / "state" / "envs"))}
    result = subprocess.run(["bash", "scripts/start-all.sh", "--daemon", "--config", str(config)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "model 'm', field 'engine'" in result.stderr


def test_the_secret_scan_finds_a_credential_in_any_log_and_says_where() -> None:
    import sys
    import tempfile
    from pathlib import Path

    # Not under tmp_path: scripts/test.sh scans the whole run's temporary files after the suite.
    with tempfile.TemporaryDirectory() as outside:
        scan_a_planted_credential(Path(outside), sys.executable)


def scan_a_planted_credential(tmp_path, python: str) -> None:
    logs = tmp_path / "run" / "test_x0" / "state" / "logs"
    logs.mkdir(parents=True)
    (logs / "chat.log").write_text('{"msg": "Authorization: Bearer [REDACTED]", "key": "sk-[REDACTED]"}\n')
    (tmp_path / "run" / "notes.txt").write_text("my-0123456789ab-" + "A" * 43)  # not a log: not scanned
    scan = [python, "scripts/scan_secrets.py", str(tmp_path / "run")]
    clean = subprocess.run(scan, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0 and "1 log files" in clean.stdout
    leaked = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl"
    (logs / "orchestrator.log.1").write_text(f'{{"msg": "ok"}}\n{{"msg": "token {leaked}"}}\n')  # rotated too
    dirty = subprocess.run(scan, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dirty.returncode == 1
    assert f"{logs / 'orchestrator.log.1'}:2: JWT" in dirty.stderr and leaked not in dirty.stderr
