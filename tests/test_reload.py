"""Hot reload of models.yaml (SIGHUP and POST /admin/reload) on a running
orchestrator: added, removed and changed models take effect, changed running
services are drained and restarted, in-flight requests finish, and a broken
file changes nothing."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx
import yaml

from tests.conftest import fake_model, wait_until


def chat(client: httpx.Client, model: str, **extra: Any) -> httpx.Response:
    return client.post(
        "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    )


def rewrite(orch, config: dict[str, Any]) -> None:
    orch.config_path.write_text(yaml.safe_dump(config))


def in_background(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(value=fn()))
    thread.start()
    return thread, result


def test_sighup_adds_a_model(orchestrator):
    config = {"models": {"a": fake_model()}}
    orch = orchestrator(config)
    with orch.client() as client:
        assert chat(client, "b").status_code == 404
        config["models"]["b"] = fake_model(aliases=["bee"])
        rewrite(orch, config)
        orch.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: chat(client, "bee").status_code == 200, 10), orch.log()
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["a", "b"]
    assert '"msg": "configuration reloaded"' in orch.log() and '"added": ["b"]' in orch.log()


def test_a_removed_model_finishes_its_requests_then_is_gone(orchestrator):
    orch = orchestrator({"models": {"a": fake_model(), "b": fake_model()}})
    with orch.client() as client:
        slow, result = in_background(lambda: chat(client, "b", fake_delay_ms=1500))
        assert wait_until(lambda: orch.services()["b"]["in_flight"] == 1, 10)
        pid = orch.services()["b"]["pid"]
        rewrite(orch, {"models": {"a": fake_model()}})
        report = client.post("/admin/reload?drain=10")
        slow.join()
        assert report.status_code == 200 and report.json()["removed"] == ["b"]
        assert result["value"].status_code == 200  # drained, not cut
        gone = chat(client, "b")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
        assert "b" not in orch.services()
    assert not wait_until(lambda: _alive(pid), 0.1)


def test_a_changed_running_model_is_drained_and_restarted(orchestrator):
    config = {"models": {"m": fake_model("--chunks 2")}}
    orch = orchestrator(config)
    with orch.client() as client:
        assert chat(client, "m").status_code == 200
        old_pid = orch.services()["m"]["pid"]
        slow, old_result = in_background(lambda: chat(client, "m", fake_delay_ms=1500))
        assert wait_until(lambda: orch.services()["m"]["in_flight"] == 1, 10)
        config["models"]["m"] = fake_model("--chunks 3")
        rewrite(orch, config)
        reload, report = in_background(lambda: client.post("/admin/reload?drain=10"))
        time.sleep(0.3)
        # Sent during the drain: waits for it, then gets the new version.
        during = chat(client, "m", stream=True)
        reload.join()
        slow.join()
        assert old_result["value"].status_code == 200
        assert report["value"].json() == {
            "added": [], "removed": [], "changed": ["m"], "updated": [], "restart_required": []
        }
        assert during.status_code == 200 and during.text.count("data: {") == 3  # three chunks: the new flags
        new = orch.services()["m"]
        assert new["pid"] != old_pid and new["state"] == "ready"
    assert not _alive(old_pid)


def test_a_broken_file_changes_nothing(orchestrator):
    config = {"models": {"a": fake_model()}}
    orch = orchestrator(config)
    with orch.client() as client:
        assert chat(client, "a").status_code == 200
        orch.config_path.write_text("models:\n  a:\n    engine: warp-drive\n")
        response = client.post("/admin/reload")
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "invalid_config" and "model 'a', field 'engine'" in error["message"]
        orch.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: '"msg": "reload rejected"' in orch.log(), 10)
        assert chat(client, "a").status_code == 200  # still serving the old configuration
        assert orch.process.poll() is None


def test_policy_changes_apply_in_place_without_a_restart(orchestrator):
    config = {"models": {"m": fake_model(ttl=0)}}
    orch = orchestrator(config)
    with orch.client() as client:
        assert chat(client, "m").status_code == 200
        pid = orch.services()["m"]["pid"]
        config["models"]["m"] = fake_model(ttl=1, priority=5, aliases=["em"])
        rewrite(orch, config)
        report = client.post("/admin/reload").json()
        assert (report["changed"], report["updated"]) == ([], ["m"])
        assert chat(client, "em").status_code == 200  # the new alias, on the same process
        assert orch.services()["m"]["pid"] == pid
    assert wait_until(lambda: orch.services()["m"]["state"] == "stopped", 5)  # the new ttl


def test_settings_apply_except_those_needing_a_restart(orchestrator):
    config = {"settings": {"memory_budget_gb": 8}, "models": {"a": fake_model()}}
    orch = orchestrator(config)
    rewrite(orch, {"settings": {"memory_budget_gb": 6, "port": 1234}, "models": {"a": fake_model()}})
    with orch.client() as client:
        report = client.post("/admin/reload").json()
        assert report["restart_required"] == ["port"]
        pools = client.get("/admin/services").json()["pools"]
        assert pools[0]["name"] == "host" and pools[0]["budget_gb"] == 6
        assert chat(client, "a").status_code == 200
    assert "1234" not in orch.url


def test_a_file_without_models_is_refused(orchestrator):
    orch = orchestrator({"models": {"a": fake_model()}})
    orch.config_path.write_text("")  # as an editor may leave it for a moment
    with orch.client() as client:
        response = client.post("/admin/reload")
        assert response.status_code == 409 and response.json()["error"]["code"] == "reload_refused"
        assert chat(client, "a").status_code == 200


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
