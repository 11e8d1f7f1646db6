"""The simulator as users run it: a sibling service of a real orchestrator
(settings.simulator.enabled), its API on the orchestrator's port behind
auth, and a benchmark job that measures a model through the orchestrator
with the simulator's own credential, stores its records and retrains."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, fake_model
from tests.support.engine_process import engine_python
from tests.test_limits import create_key

SMOLLM2_CONFIG = ROOT / "tests" / "fixtures" / "hf_configs" / "SmolLM2-135M"


def envs() -> dict[str, str]:
    """The installed engine environments, for an orchestrator on a state directory of its own."""
    return {"MODELYARD_ENVS_DIR": str(engine_python("simulator").parent.parent.parent)}


def finished_job(client: httpx.Client, job_id: str, headers: dict[str, str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/simulator/benchmarks/{job_id}", headers=headers).json()
        if job["state"] != "running":
            return job
        time.sleep(0.2)
    raise AssertionError(f"benchmark job {job_id} still running after {timeout} s")


def test_the_simulator_is_served_behind_auth_and_measures_through_the_orchestrator(orchestrator,
                                                                                    tmp_path: Path) -> None:
    state = tmp_path / "state"
    admin = create_key(state, "--role", "admin")
    config = {"settings": {"auth": {"enabled": True}, "simulator": {"enabled": True}},
              "models": {"tiny": fake_model("--chunks 6", model=str(SMOLLM2_CONFIG)),
                         "other": fake_model()}}
    orch = orchestrator(config, state_dir=state, extra_env=envs())
    auth = {"Authorization": f"Bearer {admin['key']}"}
    with orch.client() as client:
        member = client.post("/admin/keys", json={"name": "m", "role": "member"}, headers=auth).json()
        refused = client.get("/simulator/hardware", headers={"Authorization": f"Bearer {member['key']}"})
        assert refused.status_code == 403 and "simulator:read" in refused.json()["error"]["message"]
        assert client.get("/simulator/hardware").status_code == 401

        hardware = client.get("/simulator/hardware", headers=auth)  # waits for the service to be up
        assert hardware.status_code == 200, hardware.text
        assert [d["name"] for d in hardware.json()["host"]] == ["host-cpu"]

        run = client.post("/simulator/run", headers=auth,
                          json={"model": "tiny", "input_tokens": 128, "output_tokens": 32, "concurrency": 4})
        assert run.status_code == 200, run.text
        workflow = run.json()["workflow_id"]
        page = client.get("/simulator/recommendations", params={"workflow_id": workflow}, headers=auth)
        assert page.status_code == 200 and page.json()["data"][0]["device"] == "host-cpu"

        # The same through the modelyard command.
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--url", orch.url, "--api-key", admin["key"],
                               "simulate", "tiny", "--input-tokens", "128", "--output-tokens", "32",
                               "--concurrency", "4", "--ttft-ms", "100000"],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("tiny: 128 tokens in, 32 out, 4 at once (run ")
        assert "\nhost-cpu  1x1" in done.stdout and "host-cpu x1: exhaustive search" in done.stdout

        # A key allowed the simulator but not the model cannot have the model measured.
        limited = client.post("/admin/keys", headers=auth, json={
            "name": "sim", "role": "viewer", "scopes": ["simulator:read", "simulator:write"], "models": ["other"]}
        ).json()
        denied = client.post("/simulator/benchmarks", json={"model": "tiny"},
                             headers={"Authorization": f"Bearer {limited['key']}"})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "model_not_allowed"

        # The job's requests reach the model through this orchestrator, with auth on: the
        # simulator's own credential is the only way they get in.
        started = client.post("/simulator/benchmarks", headers=auth, json={
            "model": "tiny", "concurrency": [1, 2], "lengths": [{"input_tokens": 16, "output_tokens": 6}]})
        assert started.status_code == 202, started.text
        job = finished_job(client, started.json()["id"], auth, 120)
        assert job["state"] == "done", job
        assert job["records"] == 2
        errors = job["evaluation"]["mean_abs_pct_error"]
        assert set(errors) == {"heuristic", "regressor"} and errors["regressor"]["ttft_ms"] >= 0
        regressor = client.get("/simulator/regressor", headers=auth).json()
        assert regressor["stored_records"] == 2
        assert regressor["trained_on"] == regressor["shipped_records"] + 2

        entries = client.get("/admin/audit", params={"format": "json"}, headers=auth).json()["entries"]
        assert any(e["action"] == "POST /simulator/benchmarks" and e["status"] == 202 for e in entries)
        # The measured requests were counted under the simulator's own name.
        usage = client.get("/admin/usage", params={"group_by": "key"}, headers=auth)
        assert usage.status_code == 200 and "internal:simulator" in usage.text, usage.text


def test_with_the_simulator_off_its_routes_say_how_to_turn_it_on(orchestrator, tmp_path: Path) -> None:
    orch = orchestrator({"models": {"chat": fake_model()}}, state_dir=tmp_path / "state", extra_env=envs())
    with orch.client() as client:
        answer = client.post("/simulator/run", json={})
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "simulator_disabled"
        assert "settings.simulator.enabled" in answer.json()["error"]["message"]


def test_a_benchmark_job_is_cancelled_at_once_even_mid_point(orchestrator, tmp_path: Path) -> None:
    config = {"settings": {"simulator": {"enabled": True}},
              "models": {"slow": fake_model("--chunks 40 --chunk-delay-ms 250", model=str(SMOLLM2_CONFIG))}}
    orch = orchestrator(config, state_dir=tmp_path / "state", extra_env=envs())
    with orch.client() as client:
        started = client.post("/simulator/benchmarks", json={
            "model": "slow", "concurrency": [2], "lengths": [{"input_tokens": 16, "output_tokens": 40}]})
        assert started.status_code == 202, started.text
        job_id = started.json()["id"]
        time.sleep(1.0)  # the warm-up is under way: one answer takes 10 s
        assert client.delete(f"/simulator/benchmarks/{job_id}").status_code == 200
        job = finished_job(client, job_id, {}, 5)
        assert job["state"] == "cancelled" and job["records"] == 0 and job["error"] is None
        again = client.delete(f"/simulator/benchmarks/{job_id}")
        assert again.status_code == 409 and again.json()["error"]["code"] == "job_not_running"
        entries = client.get("/admin/audit", params={"format": "json"}).json()["entries"]
        assert any(e["action"] == f"DELETE /simulator/benchmarks/{job_id}" for e in entries)
