"""The systemd unit as install-services.sh renders it: the settings that make
it behave (graceful stop, restarts, no restart loop on a broken config), and
systemd's own verdict (`systemd-analyze verify`) where systemd is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import ROOT


def render(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "systemd/install-services.sh", "--prefix", str(tmp_path / "root"), *args],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120,
    )


def test_the_installed_unit_is_valid_and_stops_gracefully(tmp_path):
    result = render(tmp_path, "--state-dir", str(ROOT / "state"))
    assert result.returncode == 0, result.stderr
    unit = tmp_path / "root/etc/systemd/system/modelyard.service"
    text = unit.read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    python = settings["ExecStart"].split()[0]
    assert os.access(python, os.X_OK) and settings["ExecStart"].endswith("-m orchestrator")
    assert settings["KillMode"] == "mixed" and settings["KillSignal"] == "SIGTERM"
    assert settings["Restart"] == "on-failure" and settings["RestartPreventExitStatus"] == "2"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"  # the orchestrator alone re-reads models.yaml
    assert settings["WorkingDirectory"] == str(ROOT) and "@" not in text
    env_file = tmp_path / "root/etc/modelyard/modelyard.env"
    assert env_file.exists() and oct(env_file.stat().st_mode & 0o777) == "0o600"  # secrets go there
    if shutil.which("systemd-analyze"):
        verdict = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert verdict.returncode == 0, verdict.stderr
        # ... and it does reject a broken unit, so the check above means something.
        broken = tmp_path / "broken.service"
        broken.write_text(text.replace("KillMode=mixed", "KillMode=sometimes").replace(python, "/nonexistent/python"))
        assert subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True).returncode != 0


def test_bad_arguments_are_a_usage_error(tmp_path):
    result = render(tmp_path, "--bogus")
    assert result.returncode == 2 and "usage" in result.stderr.lower()
    result = render(tmp_path, "--user", "no-such-user-here")
    assert result.returncode == 1 and "no such user" in result.stderr
