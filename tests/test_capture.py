"""Encrypted capture of request and response bodies (orchestrator/capture.py,
capture_cli.py, capture_api.py): bodies come back exactly, never lie in the
file in clear, and any tampering, a missing key or a cut-short body is
reported as such."""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.http_errors import install_error_handlers  # noqa: E402
from core.times import parse_time  # noqa: E402
from orchestrator import capture_cli  # noqa: E402
from orchestrator.capture import (  # noqa: E402
    CHUNK_BYTES,
    CaptureNotFound,
    CaptureStore,
    CaptureUnreadable,
    Keyring,
    key_id,
    load_master_key,
    new_master_key,
)
from orchestrator.capture_api import build_capture_router  # noqa: E402

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
MARKER = b"zebra-marmalade-7f3a"  # appears only in bodies: finding it in the file means plaintext leaked


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "captures.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[CaptureStore]:
    opened = CaptureStore(db_path, Keyring(KEY_A))
    yield opened
    opened.close()


def save(store: CaptureStore, request: bytes = b'{"prompt": "hi"}', response: bytes = b'{"text": "yo"}',
         **fields: object) -> None:
    defaults: dict[str, object] = {"request_id": "req-1", "model": "m1", "route": "/v1/completions",
                                   "key_id": "k1", "status": 200}
    store.save(**{**defaults, **fields}, request_body=request, response_body=response)  # type: ignore[arg-type]


def only_id(store: CaptureStore) -> int:
    assert store.flush()
    records = store.list()
    assert len(records) == 1
    return records[0]["id"]


def sql(path: Path, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(statement, params).fetchall()


# --- round trip and confidentiality ------------------------------------------------


def test_round_trip_json_and_large_binary(store: CaptureStore) -> None:
    request = json.dumps({"messages": [{"role": "user", "content": MARKER.decode()}]}).encode()
    big = os.urandom(1_000_000)
    save(store, request, big, response_type="application/octet-stream")
    record = store.read(only_id(store))
    assert record["request"] == request
    assert record["response"] == big
    assert (record["model"], record["route"], record["key_id"], record["status"]) == ("m1", "/v1/completions",
                                                                                        "k1", 200)
    assert record["request_bytes"] == len(request) and record["response_bytes"] == len(big)
    assert not record["truncated"]
    assert record["time"].endswith("Z") and record["kek_id"] == key_id(KEY_A)
    chunks = sql(store.path, "SELECT COUNT(*) FROM chunks WHERE part = 'response'")[0][0]
    assert chunks == -(-len(big) // CHUNK_BYTES) > 1


def test_empty_bodies_round_trip(store: CaptureStore) -> None:
    save(store, b"", b"")
    record = store.read(only_id(store))
    assert record["request"] == b"" and record["response"] == b""


def test_file_holds_no_plaintext(store: CaptureStore, db_path: Path) -> None:
    save(store, b'{"content": "' + MARKER + b'"}', MARKER * 1000)
    assert store.flush()
    files = list(db_path.parent.glob("captures.db*"))
    assert db_path in files and all(MARKER not in file.read_bytes() for file in files)
    store.close()
    assert MARKER not in db_path.read_bytes()
    assert oct(db_path.stat().st_mode & 0o777) == oct(0o600)


def test_truncated_at_max_bytes(db_path: Path) -> None:
    store = CaptureStore(db_path, Keyring(KEY_A), max_bytes=100_000)
    body = os.urandom(250_000)
    save(store, b"{}", body)
    record = store.read(only_id(store))
    store.close()
    assert record["truncated"] is True
    assert record["response"] == body[:100_000]
    assert record["response_bytes"] == 250_000  # the size as received


def test_unknown_id(store: CaptureStore) -> None:
    with pytest.raises(CaptureNotFound, match="no capture with id 42"):
        store.read(42)


# --- tampering ---------------------------------------------------------------------


@pytest.fixture
def big_record(store: CaptureStore) -> int:
    save(store, b'{"a": 1}', os.urandom(5 * CHUNK_BYTES + 123))
    record_id = only_id(store)
    store.read(record_id)  # readable before anything is touched
    return record_id


def test_flipped_byte_detected(store: CaptureStore, big_record: int) -> None:
    [(ciphertext,)] = sql(store.path, "SELECT ciphertext FROM chunks WHERE part = 'response' AND idx = 2")
    altered = bytearray(ciphertext)  # type: ignore[arg-type]
    altered[10] ^= 1
    sql(store.path, "UPDATE chunks SET ciphertext = ? WHERE part = 'response' AND idx = 2", (bytes(altered),))
    with pytest.raises(CaptureUnreadable, match="response chunk 2 does not authenticate"):
        store.read(big_record)


def test_swapped_chunks_detected(store: CaptureStore, big_record: int) -> None:
    for old, new in ((1, -1), (2, 1), (-1, 2)):
        sql(store.path, "UPDATE chunks SET idx = ? WHERE part = 'response' AND idx = ?", (new, old))
    with pytest.raises(CaptureUnreadable, match="response chunk 1 does not authenticate"):
        store.read(big_record)


def test_missing_final_chunk_detected(store: CaptureStore, big_record: int) -> None:
    sql(store.path, "DELETE FROM chunks WHERE part = 'response' AND idx = 5")
    with pytest.raises(CaptureUnreadable, match="cut short"):
        store.read(big_record)
    sql(store.path, "UPDATE chunks SET final = 1 WHERE part = 'response' AND idx = 4")  # a forged flag: still caught
    with pytest.raises(CaptureUnreadable, match="response chunk 4 does not authenticate"):
        store.read(big_record)


def test_chunk_moved_between_records_detected(store: CaptureStore) -> None:
    save(store, b"{}", b'{"first": 1}', request_id="r1")
    save(store, b"{}", b'{"second": 2}', request_id="r2")
    assert store.flush()
    first, second = sorted(record["id"] for record in store.list())
    [(nonce, ciphertext)] = sql(store.path, "SELECT nonce, ciphertext FROM chunks WHERE record_id = ? AND "
                                            "part = 'response'", (first,))
    sql(store.path, "UPDATE chunks SET nonce = ?, ciphertext = ? WHERE record_id = ? AND part = 'response'",
        (nonce, ciphertext, second))
    with pytest.raises(CaptureUnreadable, match="does not authenticate"):
        store.read(second)
    assert store.read(first)["response"] == b'{"first": 1}'


def test_altered_wrapped_key_detected(store: CaptureStore) -> None:
    save(store)
    record_id = only_id(store)
    sql(store.path, "UPDATE records SET wrapped_dek = zeroblob(48) WHERE id = ?", (record_id,))
    with pytest.raises(CaptureUnreadable, match="data key does not authenticate .* altered"):
        store.read(record_id)


# --- keys and rotation ---------------------------------------------------------------


def test_rotation_rewraps_under_the_new_key(store: CaptureStore) -> None:
    bodies = [os.urandom(3000 * n) for n in range(1, 6)]
    for n, body in enumerate(bodies):
        save(store, b"{}", body, request_id=f"a{n}")
    assert store.flush()
    chunks_before = sql(store.path, "SELECT record_id, part, idx, nonce, ciphertext FROM chunks ORDER BY 1, 2, 3")
    store.set_keyring(Keyring(KEY_B, [KEY_A]))
    save(store, b"{}", b'{"new": true}', request_id="b0")
    assert store.flush()
    assert store.rotate(batch=2) == 5
    assert {kid for (kid,) in sql(store.path, "SELECT kek_id FROM records")} == {key_id(KEY_B)}
    chunks_after = sql(store.path, "SELECT record_id, part, idx, nonce, ciphertext FROM chunks ORDER BY 1, 2, 3")
    assert chunks_after[:len(chunks_before)] == chunks_before  # data untouched: only the DEKs were re-wrapped
    assert store.rotate() == 0

    store.set_keyring(Keyring(KEY_B))
    read = {record["request_id"]: store.read(record["id"])["response"] for record in store.list()}
    assert read == {**{f"a{n}": body for n, body in enumerate(bodies)}, "b0": b'{"new": true}'}

    store.set_keyring(Keyring(KEY_A))
    some = store.list()[0]["id"]
    with pytest.raises(CaptureUnreadable, match=f"under key {key_id(KEY_B)}, which is not configured") as caught:
        store.read(some)
    assert caught.value.kek_id == key_id(KEY_B)


def test_rotation_refuses_unknown_keys(store: CaptureStore) -> None:
    save(store)
    assert store.flush()
    store.set_keyring(Keyring(KEY_B))  # A is not given as an old key
    with pytest.raises(CaptureUnreadable, match=f"{key_id(KEY_A)} .*not configured.*nothing was re-wrapped"):
        store.rotate()
    assert sql(store.path, "SELECT kek_id FROM records") == [(key_id(KEY_A),)]


def test_keyring_shows_ids_never_keys() -> None:
    ring = Keyring(KEY_B, [KEY_A])
    assert ring.current_id == key_id(KEY_B) and len(ring.current_id) == 16
    assert ring.get(key_id(KEY_A)) == KEY_A
    assert KEY_A.hex() not in repr(ring) and KEY_B.hex() not in repr(ring)
    with pytest.raises(KeyError):
        ring.get("0" * 16)
    with pytest.raises(ValueError):
        Keyring(b"short")


def test_load_master_key_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = bytes([0xFB] * 32)  # its base64 has + and /, its urlsafe base64 - and _
    hex_file = tmp_path / "hex"
    hex_file.write_text(f"  {key.hex().upper()}\n")
    assert load_master_key(str(hex_file), None) == key
    monkeypatch.setenv("CAP_STD", base64.b64encode(key).decode())
    monkeypatch.setenv("CAP_URL", base64.urlsafe_b64encode(key).decode().rstrip("=") + "\n")
    assert load_master_key(None, "CAP_STD") == key
    assert load_master_key(env="CAP_URL") == key
    assert len(new_master_key()) == 64 and bytes.fromhex(new_master_key())


def test_load_master_key_rejections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short_hex = "ab12" * 15 + "cd"  # 62 hex characters
    bad = tmp_path / "bad"
    bad.write_text(short_hex)
    with pytest.raises(ValueError) as caught:
        load_master_key(str(bad), None)
    assert str(bad) in str(caught.value) and "62 hex characters" in str(caught.value)
    assert short_hex not in str(caught.value) and "ab12" not in str(caught.value)
    short_b64 = base64.b64encode(b"sixteen byte key").decode()
    monkeypatch.setenv("CAP_SHORT", short_b64)
    with pytest.raises(ValueError, match="CAP_SHORT.*16 bytes") as caught:
        load_master_key(None, "CAP_SHORT")
    assert short_b64 not in str(caught.value)
    monkeypatch.setenv("CAP_JUNK", "not a key at all!")
    with pytest.raises(ValueError, match="CAP_JUNK.*neither") as caught:
        load_master_key(None, "CAP_JUNK")
    assert "not a key" not in str(caught.value)
    with pytest.raises(ValueError, match="CAP_UNSET.*not set"):
        load_master_key(None, "CAP_UNSET")
    with pytest.raises(ValueError, match=f"{tmp_path / 'missing'} does not exist"):
        load_master_key(str(tmp_path / "missing"), None)
    with pytest.raises(ValueError, match="not both"):
        load_master_key(str(bad), "CAP_SHORT")
    with pytest.raises(ValueError, match="either"):
        load_master_key(None, None)


# --- the writer ----------------------------------------------------------------------


def test_concurrent_saves_all_readable(store: CaptureStore) -> None:
    def worker(thread: int) -> None:
        for n in range(25):
            save(store, f'{{"t": {thread}, "n": {n}}}'.encode(), os.urandom(n * 700), request_id=f"{thread}-{n}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.flush(timeout=30)
    records = store.list(limit=1000)
    assert len(records) == 200
    for record in records:
        read = store.read(record["id"])
        thread, n = map(int, record["request_id"].split("-"))
        assert json.loads(read["request"]) == {"t": thread, "n": n} and len(read["response"]) == n * 700


def test_save_never_raises_and_logs_no_body(store: CaptureStore, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="modelyard.capture"):
        store.save(request_id="bad", model="m", route="/r", key_id=None, status=200,
                   request_body=MARKER.decode(), response_body=b"")  # type: ignore[arg-type]
        store.set_keyring(None)
        save(store, MARKER, MARKER, request_id="nokey")
        assert store.flush()
    assert "bad" in caplog.text and "nokey" in caplog.text
    assert MARKER.decode() not in caplog.text
    assert store.list() == []


def test_list_filters_and_prune(store: CaptureStore) -> None:
    save(store, model="m1", key_id="k1")
    save(store, model="m2", key_id="k2")
    assert store.flush()
    assert [record["model"] for record in store.list(model="m2")] == ["m2"]
    assert [record["key_id"] for record in store.list(key_id="k1")] == ["k1"]
    assert len(store.list(limit=1)) == 1
    assert store.list(since=parse_time("2999-01-01")) == []
    assert len(store.list(until=parse_time("2999-01-01T00:00:00Z"))) == 2
    assert store.prune(parse_time("2000-01-01")) == 0
    assert store.prune(parse_time("2999-01-01")) == 2
    assert store.list() == [] and sql(store.path, "SELECT COUNT(*) FROM chunks") == [(0,)]


# --- the admin API -------------------------------------------------------------------


def client_for(store: CaptureStore | None) -> TestClient:
    app = FastAPI()
    install_error_handlers(app, "orchestrator")
    app.include_router(build_capture_router())
    app.state.captures = store
    return TestClient(app)


def test_api_list_and_show(store: CaptureStore) -> None:
    save(store, b'{"prompt": "hello"}', b"\x00\x01binary", response_type="application/octet-stream")
    record_id = only_id(store)
    client = client_for(store)
    listed = client.get("/admin/captures", params={"model": "m1", "since": "1970-01-01"})
    assert listed.status_code == 200
    [shown] = listed.json()["captures"]
    assert shown["id"] == record_id and "request" not in shown
    assert client.get("/admin/captures", params={"model": "other"}).json() == {"captures": []}
    detail = client.get(f"/admin/captures/{record_id}").json()
    assert detail["request"] == {"prompt": "hello"}
    assert detail["response"] == {"base64": base64.b64encode(b"\x00\x01binary").decode(),
                                  "content_type": "application/octet-stream"}
    assert client.get("/admin/captures", params={"since": "soon"}).json()["error"]["param"] == "since"


def test_api_errors(store: CaptureStore) -> None:
    client = client_for(store)
    missing = client.get("/admin/captures/999")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "capture_not_found"
    save(store)
    record_id = only_id(store)
    store.set_keyring(Keyring(KEY_B))
    unreadable = client.get(f"/admin/captures/{record_id}")
    assert unreadable.status_code == 409 and unreadable.json()["error"]["code"] == "capture_unreadable"
    assert key_id(KEY_A) in unreadable.json()["error"]["message"]
    disabled = client_for(None).get("/admin/captures")
    assert disabled.status_code == 404 and disabled.json()["error"]["code"] == "capture_disabled"
    assert "settings.capture.enabled" in disabled.json()["error"]["message"]


# --- the CLI -------------------------------------------------------------------------


def test_cli_new_key_list_show(store: CaptureStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert capture_cli.main(["new-key"]) == 0
    made = capsys.readouterr().out.strip()
    assert len(made) == 64 and bytes.fromhex(made)
    save(store, b'{"prompt": "hello"}', b"plain words", response_type="text/plain")
    record_id = only_id(store)
    state = ["--state-dir", str(tmp_path)]
    assert capture_cli.main([*state, "list"]) == 0
    assert "m1" in capsys.readouterr().out
    key_file = tmp_path / "a.key"
    key_file.write_text(KEY_A.hex())
    assert capture_cli.main([*state, "show", str(record_id), "--key-file", str(key_file)]) == 0
    out = capsys.readouterr().out
    assert '"prompt": "hello"' in out and "<11 bytes of content-type text/plain>" in out
    assert capture_cli.main([*state, "--json", "show", str(record_id), "--part", "request",
                             "--key-file", str(key_file)]) == 0
    assert json.loads(capsys.readouterr().out)["request"] == {"prompt": "hello"}


def test_cli_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    assert capture_cli.main(["--state-dir", str(empty), "list"]) == 2
    assert "no capture database" in capsys.readouterr().err
    assert not (empty / "captures.db").exists()
    CaptureStore(tmp_path / "captures.db", None).close()
    assert capture_cli.main(["--state-dir", str(tmp_path), "show", "1", "--key-env", "CAP_NOT_SET"]) == 2
    assert "CAP_NOT_SET" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # show without a key
        capture_cli.main(["--state-dir", str(tmp_path), "show", "1"])
    assert exited.value.code == 2


def test_cli_rotate_in_another_process(store: CaptureStore, tmp_path: Path) -> None:
    for n in range(3):
        save(store, b"{}", f'{{"n": {n}}}'.encode(), request_id=f"r{n}")
    assert store.flush()
    (tmp_path / "a.key").write_text(base64.b64encode(KEY_A).decode())
    (tmp_path / "b.key").write_text(KEY_B.hex())
    done = subprocess.run([sys.executable, "-m", "orchestrator.capture_cli", "--state-dir", str(tmp_path), "--json",
                           "rotate", "--key-file", str(tmp_path / "b.key"), "--old-key-file", str(tmp_path / "a.key")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"rewrapped": 3, "kek_id": key_id(KEY_B)}
    store.set_keyring(Keyring(KEY_B))
    assert sorted(store.read(record["id"])["response"] for record in store.list()) == [
        b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
