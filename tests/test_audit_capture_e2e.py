"""The audit log and the encrypted capture, through a real orchestrator:
who did what is written down and an edited row is caught by the verify
command; request and answer bodies are kept encrypted, readable through the
admin API by those allowed, and the master key can be rotated while the
orchestrator runs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from orchestrator.capture import new_master_key
from tests.conftest import ROOT, fake_model, wait_until
from tests.test_limits import create_key

MARKER = "quokka-saffron-4411"  # only in prompts: finding it in captures.db means plaintext on disk


def cli(module: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def chat(client: Any, key: str | None, model: str = "chat", **body: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    payload = {"model": model, "messages": [{"role": "user", "content": f"say {MARKER}"}], **body}
    return client.post("/v1/chat/completions", json=payload, headers=headers)


def test_the_audit_log_records_admin_actions_and_model_access_and_catches_an_edit(orchestrator,
                                                                                  tmp_path: Path) -> None:
    state = tmp_path / "state"
    admin = create_key(state, "--role", "admin")
    config = {"settings": {"auth": {"enabled": True}}, "models": {"chat": fake_model(), "secret": fake_model()}}
    orch = orchestrator(config, state_dir=state)
    auth = {"Authorization": f"Bearer {admin['key']}"}
    with orch.client() as client:
        made = client.post("/admin/keys", json={"name": "alice", "models": ["chat"]}, headers=auth).json()
        served = chat(client, made["key"])
        assert served.status_code == 200
        assert chat(client, made["key"], model="secret").status_code == 403
        assert client.get("/admin/keys", headers={"Authorization": "Bearer my-0123456789ab-" + "A" * 43}
                          ).status_code == 401
        assert client.post("/admin/services/chat/unload", headers=auth).status_code == 200

        def entries() -> list[dict[str, Any]]:
            return client.get("/admin/audit", params={"format": "json"}, headers=auth).json()["entries"]

        assert wait_until(lambda: len(entries()) >= 6, 5)
        found = entries()
        by_action = {(e["kind"], e["action"], e["status"]): e for e in found}
        created = by_action[("admin", "keys.create", None)]  # the first admin key, made with the CLI
        assert created["actor"] == "cli" and created["detail"]["key_id"] == admin["id"]
        minted = by_action[("admin", "POST /admin/keys", 201)]
        assert minted["actor"] == "t" and minted["key_id"] == admin["id"] and minted["detail"]["key_id"] == made["id"]
        access = by_action[("access", "request", 200)]
        assert (access["actor"], access["key_id"], access["model"]) == ("alice", made["id"], "chat")
        assert access["request_id"] == served.headers["x-request-id"]
        assert by_action[("access", "request", 403)]["model"] is None  # refused before naming a model to them
        refused = by_action[("admin", "GET /admin/keys", 401)]
        assert refused["actor"] == "anonymous" and refused["detail"] == {"code": "invalid_api_key"}
        assert ("admin", "POST /admin/services/chat/unload", 200) in by_action
        # The log holds ids and names, never a key.
        assert admin["key"] not in json.dumps(found) and made["key"] not in json.dumps(found)

        csv_text = client.get("/admin/audit", params={"format": "csv", "since": "2020-01-01"}, headers=auth).text
        assert csv_text.splitlines()[0].startswith("id,time,ts,kind,action")
        assert client.get("/admin/audit/verify", headers=auth).json()["ok"] is True
        member = {"Authorization": f"Bearer {made['key']}"}
        assert client.get("/admin/audit", headers=member).status_code == 403

        def probe() -> list[dict[str, Any]]:  # a valid key without the scope: the entry says whose
            return [e for e in entries() if e["action"] == "GET /admin/audit" and e["status"] == 403]

        assert wait_until(lambda: bool(probe()), 5)
        assert (probe()[0]["actor"], probe()[0]["key_id"]) == ("alice", made["id"])
    orch.stop()

    ok = cli("orchestrator.audit_cli", "--state-dir", str(state), "verify")
    assert ok.returncode == 0 and ok.stdout.startswith("ok: "), ok.stdout + ok.stderr
    with sqlite3.connect(state / "audit.db") as db:  # someone hides that alice used the model
        row = db.execute("SELECT id FROM audit WHERE kind = 'access' AND status = 200").fetchone()[0]
        db.execute("UPDATE audit SET model = 'other' WHERE id = ?", [row])
    broken = cli("orchestrator.audit_cli", "--state-dir", str(state), "verify")
    assert broken.returncode == 1 and f"row {row}" in broken.stdout + broken.stderr


def write_config(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config))


def test_captured_bodies_are_encrypted_readable_by_admins_and_survive_a_key_rotation(orchestrator,
                                                                                     tmp_path: Path) -> None:
    state = tmp_path / "state"
    admin = create_key(state, "--role", "admin")
    member = create_key(state)
    old_key, new_key = tmp_path / "old.key", tmp_path / "new.key"
    old_key.write_text(new_master_key())
    new_key.write_text(new_master_key())
    capture = {"enabled": True, "key_file": str(old_key)}
    config = {"settings": {"auth": {"enabled": True}, "capture": capture}, "models": {"chat": fake_model("--chunks 2")}}
    orch = orchestrator(config, state_dir=state)
    auth = {"Authorization": f"Bearer {admin['key']}"}
    with orch.client() as client:
        plain = chat(client, member["key"])
        streamed = chat(client, member["key"], stream=True)
        assert plain.status_code == streamed.status_code == 200

        def listed() -> list[dict[str, Any]]:
            return client.get("/admin/captures", headers=auth).json()["captures"]

        assert wait_until(lambda: len(listed()) == 2, 5)
        records = {r["request_id"]: r for r in listed()}
        first = records[plain.headers["x-request-id"]]
        assert (first["model"], first["key_id"], first["status"]) == ("chat", member["id"], 200)
        shown = client.get(f"/admin/captures/{first['id']}", headers=auth).json()
        assert shown["request"]["messages"][0]["content"] == f"say {MARKER}"
        assert shown["response"] == plain.json()  # what the client got
        stream_record = records[streamed.headers["x-request-id"]]
        assert stream_record["response_type"].startswith("text/event-stream")
        assert client.get("/admin/captures", headers={"Authorization": f"Bearer {member['key']}"}).status_code == 403
        assert MARKER.encode() not in b"".join(p.read_bytes() for p in state.glob("captures.db*"))

        # Rotation without downtime: the new key becomes current, the old one stays readable; reload.
        write_config(orch.config_path, {**config, "settings": {**config["settings"], "capture": {
            "enabled": True, "key_file": str(new_key), "old_key_files": [str(old_key)]}}})
        assert client.post("/admin/reload", headers=auth).status_code == 200
        assert chat(client, member["key"]).status_code == 200
        assert wait_until(lambda: len(listed()) == 3, 5)
        assert len({r["kek_id"] for r in listed()}) == 2  # the new record is under the new key

        rotated = cli("orchestrator.capture_cli", "--state-dir", str(state), "rotate", "--key-file", str(new_key),
                      "--old-key-file", str(old_key))
        assert rotated.returncode == 0, rotated.stderr
        assert len({r["kek_id"] for r in listed()}) == 1
        # The old key can go now: every record still reads.
        write_config(orch.config_path, {**config, "settings": {**config["settings"], "capture": {
            "enabled": True, "key_file": str(new_key)}}})
        assert client.post("/admin/reload", headers=auth).status_code == 200
        for record in listed():
            assert client.get(f"/admin/captures/{record['id']}", headers=auth).status_code == 200
        # A reload naming a key that is not there is refused, and changes nothing.
        write_config(orch.config_path, {**config, "settings": {**config["settings"], "capture": {
            "enabled": True, "key_file": str(tmp_path / "missing.key")}}})
        refused = client.post("/admin/reload", headers=auth)
        assert refused.status_code == 400 and "settings.capture" in refused.json()["error"]["message"]


def test_the_orchestrator_refuses_to_start_capturing_without_its_key(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    write_config(path, {"settings": {"capture": {"enabled": True, "key_env": "MODELYARD_TEST_NO_SUCH_KEY"}},
                        "models": {}})
    done = cli("orchestrator", "--config", str(path), "--state-dir", str(tmp_path / "state"), "--check")
    assert done.returncode == 2 and "settings.capture" in done.stderr and "MODELYARD_TEST_NO_SUCH_KEY" in done.stderr
