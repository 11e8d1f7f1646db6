"""The audit log: the hash chain holds under concurrent writers and across
restarts, and every kind of tampering shows in verify(); exports, the CLI
and the admin router return exactly the rows asked for."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.http_errors import install_error_handlers
from core.times import parse_time
from orchestrator import audit_cli
from orchestrator.audit import EXPORTED, GENESIS, AuditLog, AuditReader, chain_hash
from orchestrator.audit_api import build_audit_router

ROOT = Path(__file__).resolve().parent.parent


def filled(path: Path, count: int, spaced: bool = False) -> AuditLog:
    """An audit log with count access entries, numbered in detail.n; spaced:
    each a few milliseconds apart, so every ts differs."""
    log = AuditLog(path)
    for n in range(count):
        log.record("access", "request", actor=f"key-{n % 3}", key_id=f"id{n % 3}", model=f"model-{n % 2}",
                   route="POST /v1/chat/completions", status=200, request_id=f"req-{n}", detail={"n": n})
        if spaced:
            time.sleep(0.003)
    log.flush()
    return log


def rows(path: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM audit ORDER BY id").fetchall()


def tamper(path: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(sql, params)
    conn.close()


async def test_concurrent_records_form_one_chain(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")

    def from_thread(source: int) -> None:
        for n in range(250):
            log.record("access", "request", actor=f"thread-{source}", detail={"source": f"t{source}", "n": n})

    async def from_coroutine(source: int) -> None:
        for n in range(100):
            log.record("admin", "models.load", actor="cli", model=f"m{source}",
                       detail={"source": f"c{source}", "n": n})
            await asyncio.sleep(0)

    threads = [threading.Thread(target=from_thread, args=(source,)) for source in range(4)]
    for thread in threads:
        thread.start()
    await asyncio.gather(*(from_coroutine(source) for source in range(4)))
    for thread in threads:
        thread.join()
    log.flush()

    result = log.verify()
    assert result.ok, result.problem
    assert result.checked == 1400
    stored = rows(tmp_path / "audit.db")
    assert [row["id"] for row in stored] == list(range(1, 1401))
    assert result.head == stored[-1]["hash"]
    assert stored[0]["prev_hash"] == GENESIS
    # Each source's entries arrive whole and in the order it recorded them.
    by_source: dict[str, list[int]] = {}
    for row in stored:
        detail = json.loads(row["detail"])
        by_source.setdefault(detail["source"], []).append(detail["n"])
    expected = {f"t{s}": list(range(250)) for s in range(4)} | {f"c{s}": list(range(100)) for s in range(4)}
    assert by_source == expected
    log.close()


@pytest.mark.parametrize(("column", "value"), [("status", 500), ("model", "other-model"), ("detail", '{"n":99}'),
                                               ("ts", 0.5)])
def test_an_edited_row_is_reported(tmp_path: Path, column: str, value: object) -> None:
    path = tmp_path / "audit.db"
    filled(path, 10).close()
    assert AuditReader(path).verify().ok
    tamper(path, f"UPDATE audit SET {column} = ? WHERE id = 5", value)

    result = AuditReader(path).verify()
    assert not result.ok
    assert result.row_id == 5
    assert result.checked == 4
    assert "row 5" in result.problem and "edited" in result.problem
    assert result.head == rows(path)[3]["hash"]


def test_a_deleted_middle_row_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    filled(path, 10).close()
    tamper(path, "DELETE FROM audit WHERE id = 4")

    result = AuditReader(path).verify()
    assert (result.ok, result.row_id, result.checked) == (False, 5, 3)
    assert "row 4" in result.problem and "deleted" in result.problem


def test_rows_deleted_at_the_end_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    filled(path, 10).close()
    tamper(path, "DELETE FROM audit WHERE id >= 9")

    result = AuditReader(path).verify()
    assert (result.ok, result.row_id, result.checked) == (False, 9, 8)
    assert "rows 9 to 10" in result.problem

    # Writing on does not paper over the gap.
    log = filled(path, 2)
    assert [row["id"] for row in rows(path)][-2:] == [11, 12]
    assert log.verify().row_id == 11
    log.close()


def test_an_edited_row_with_a_recomputed_hash_is_caught_at_the_next(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    filled(path, 10).close()
    row = dict(rows(path)[4])
    assert row["id"] == 5
    row["status"] = 204
    tamper(path, "UPDATE audit SET status = ?, hash = ? WHERE id = 5", 204, chain_hash(row["prev_hash"], row))

    result = AuditReader(path).verify()
    assert (result.ok, result.row_id, result.checked) == (False, 6, 5)
    assert "row 5" in result.problem and "recomputed" in result.problem


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    filled(path, 5).close()
    log = filled(path, 5)
    log.record("admin", "reload", actor="cli")
    log.close()

    stored = rows(path)
    assert [row["id"] for row in stored] == list(range(1, 12))
    assert stored[5]["prev_hash"] == stored[4]["hash"]
    result = AuditReader(path).verify()
    assert (result.ok, result.checked, result.head) == (True, 11, stored[-1]["hash"])
    assert stored[-1]["kind"] == "admin" and stored[-1]["action"] == "reload"


def test_exports_hold_exactly_the_period(tmp_path: Path) -> None:
    log = filled(tmp_path / "audit.db", 10, spaced=True)
    stamps = [row["ts"] for row in rows(tmp_path / "audit.db")]
    assert len(set(stamps)) == 10
    since, until = stamps[2], stamps[7]  # rows 3..7 by ts; 8 is excluded

    jsonl = io.StringIO()
    assert log.export(jsonl, "jsonl", since=since, until=until) == 5
    lines = [json.loads(line) for line in jsonl.getvalue().splitlines()]
    assert [line["id"] for line in lines] == [3, 4, 5, 6, 7]
    assert list(lines[0]) == list(EXPORTED)
    assert lines[0]["detail"] == {"n": 2} and lines[0]["request_id"] == "req-2" and lines[0]["status"] == 200
    assert lines[0]["time"].endswith("Z")
    assert abs(datetime.fromisoformat(lines[0]["time"].replace("Z", "+00:00")).timestamp() - since) < 0.001

    table = io.StringIO()
    assert log.export(table, "csv", since=since, until=until) == 5
    parsed = list(csv.DictReader(io.StringIO(table.getvalue())))
    assert list(parsed[0]) == list(EXPORTED)
    assert [int(row["id"]) for row in parsed] == [3, 4, 5, 6, 7]
    assert json.loads(parsed[-1]["detail"]) == {"n": 6}
    assert float(parsed[0]["ts"]) == since and parsed[0]["key_id"] == "id2" and parsed[0]["tenant"] == ""

    assert [entry["id"] for entry in log.entries(since=since, until=until, model="model-1")] == [4, 6]
    assert [entry["id"] for entry in log.entries(limit=3)] == [1, 2, 3]
    log.close()


def test_record_never_raises_and_keeps_odd_values(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    log.record("access", "request", status="not a status", model=42, detail={"when": datetime(2026, 1, 1)})  # type: ignore[arg-type]
    log.record("access", "request", actor="bad \udcff surrogate")
    log.flush()
    first, second = log.entries()
    assert first["status"] is None and first["model"] == "42" and first["detail"] == {"when": "2026-01-01 00:00:00"}
    assert second["actor"] == "bad ? surrogate"
    assert log.verify().ok
    log.close()


def test_a_failed_write_is_retried_not_lost(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(tmp_path / "audit.db")
    real_write, calls = log._write, []

    def failing_once(batch: list) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        real_write(batch)

    log._write = failing_once  # type: ignore[method-assign]
    for n in range(3):
        log.record("admin", "keys.create", actor="cli", key_id=f"k{n}")
    log.flush()
    assert len(calls) >= 2
    assert [entry["key_id"] for entry in log.entries()] == ["k0", "k1", "k2"]
    assert "could not write" in caplog.text
    log.close()


def test_cli_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.db"
    filled(path, 3).close()
    head = rows(path)[-1]["hash"]

    assert audit_cli.main(["--state-dir", str(tmp_path), "verify"]) == 0
    assert capsys.readouterr().out.strip() == f"ok: 3 entries, head {head}"

    tamper(path, "UPDATE audit SET actor = 'someone-else' WHERE id = 2")
    assert audit_cli.main(["--state-dir", str(tmp_path), "verify"]) == 1
    out = capsys.readouterr().out
    assert "broken at row 2" in out and "edited" in out
    assert audit_cli.main(["--state-dir", str(tmp_path), "--json", "verify"]) == 1
    assert json.loads(capsys.readouterr().out)["row_id"] == 2


def test_cli_verify_in_a_process(tmp_path: Path) -> None:
    filled(tmp_path / "audit.db", 4).close()
    done = subprocess.run([sys.executable, "-m", "orchestrator.audit_cli", "--state-dir", str(tmp_path), "verify"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: 4 entries, head ")


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    filled(tmp_path / "audit.db", 4).close()
    output = tmp_path / "out.csv"
    assert audit_cli.main(["--state-dir", str(tmp_path), "export", "--format", "csv", "--output", str(output),
                           "--since", "2000-01-01", "--until", "2999-01-01T00:00:00Z"]) == 0
    assert "4 entries written" in capsys.readouterr().err
    assert [row["request_id"] for row in csv.DictReader(output.open(newline=""))] == [f"req-{n}" for n in range(4)]

    assert audit_cli.main(["--state-dir", str(tmp_path), "export", "--until", "2000-01-01"]) == 0
    assert capsys.readouterr().out == ""


def test_cli_missing_database_and_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert audit_cli.main(["--state-dir", str(tmp_path), "verify"]) == 2
    err = capsys.readouterr().err
    assert f"no audit log at {tmp_path.resolve() / 'audit.db'}" in err
    assert not (tmp_path / "audit.db").exists()

    filled(tmp_path / "audit.db", 1).close()
    with pytest.raises(SystemExit) as exit_:
        audit_cli.main(["--state-dir", str(tmp_path), "export", "--since", "last tuesday"])
    assert exit_.value.code == 2
    assert "'last tuesday' is neither unix seconds nor an ISO date" in capsys.readouterr().err

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "audit.db").write_text("not a database")
    assert audit_cli.main(["--state-dir", str(tmp_path / "other"), "verify"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_parse_time() -> None:
    assert parse_time("1793000000") == 1793000000.0
    assert parse_time("1793000000.5") == 1793000000.5
    assert parse_time("2026-11-01") == parse_time("2026-11-01T00:00:00Z") == 1793491200.0
    assert parse_time("2026-11-01T12:00:00") == 1793491200.0 + 12 * 3600
    assert parse_time("2026-11-01T12:00:00+02:00") == 1793491200.0 + 10 * 3600
    for bad in ("", "soon", "nan", "2026-13-01"):
        with pytest.raises(ValueError):
            parse_time(bad)


def client_for(log: AuditReader) -> TestClient:
    app = FastAPI()
    install_error_handlers(app, "test")
    app.include_router(build_audit_router())
    app.state.audit = log
    return TestClient(app)


def test_api_lists_and_downloads(tmp_path: Path) -> None:
    log = filled(tmp_path / "audit.db", 6, spaced=True)
    stamps = [row["ts"] for row in rows(tmp_path / "audit.db")]
    client = client_for(log)

    body = client.get("/admin/audit", params={"since": stamps[1], "until": stamps[4]}).json()
    assert [entry["id"] for entry in body["entries"]] == [2, 3, 4]
    assert body["entries"][0]["detail"] == {"n": 1} and body["truncated"] is False
    body = client.get("/admin/audit", params={"limit": 2}).json()
    assert [entry["id"] for entry in body["entries"]] == [1, 2] and body["truncated"] is True

    response = client.get("/admin/audit", params={"format": "csv", "since": stamps[3]})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith('attachment; filename="modelyard-audit-')
    assert response.headers["content-disposition"].endswith('.csv"')
    assert [int(row["id"]) for row in csv.DictReader(io.StringIO(response.text))] == [4, 5, 6]

    response = client.get("/admin/audit", params={"format": "jsonl", "until": stamps[2]})
    assert response.headers["content-type"] == "application/x-ndjson"
    assert [json.loads(line)["id"] for line in response.text.splitlines()] == [1, 2]
    log.close()


def test_api_rejects_bad_parameters(tmp_path: Path) -> None:
    log = filled(tmp_path / "audit.db", 1)
    client = client_for(log)
    for params, param in (({"since": "yesterday-ish"}, "since"), ({"until": "2026-02-30"}, "until"),
                          ({"format": "xml"}, "format"), ({"limit": 0}, "limit"),
                          ({"since": "2026-02-01", "until": "2026-01-01"}, "until")):
        response = client.get("/admin/audit", params=params)
        assert response.status_code == 400, params
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_request", param)
    log.close()


def test_api_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    log = filled(path, 3)
    client = client_for(log)
    assert client.get("/admin/audit/verify").json() == {"ok": True, "checked": 3, "head": rows(path)[-1]["hash"],
                                                       "problem": None, "row_id": None}
    tamper(path, "UPDATE audit SET model = 'x' WHERE id = 3")
    response = client.get("/admin/audit/verify")
    assert response.status_code == 200
    assert (response.json()["ok"], response.json()["row_id"]) == (False, 3)
    log.close()
