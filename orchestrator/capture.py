"""Optional capture of request and response bodies, encrypted at rest in
<state>/captures.db.

Bodies hold whatever clients send (prompts, documents, personal data), so the
file must be useless to whoever copies it without the key: a backup, a stolen
disk, a debugging tarball. Envelope encryption, with AES-GCM from
`cryptography` (no home-made crypto):

- Every record gets a random 256-bit data key (DEK). Its bodies are cut into
  64 KiB chunks, each sealed under the DEK with a fresh random 96-bit nonce and
  associated data naming the record uuid, the part (request/response), the
  chunk's index and whether it is the last one: a chunk swapped, reordered,
  moved to another record, or a tail cut off no longer authenticates. One DEK
  seals a few hundred chunks at most, so random nonces cannot collide.
- The DEK is stored wrapped (AES-GCM again) under a master key (KEK) that is
  never stored here: the operator gives it as a file or an environment
  variable. The wrap is bound to the record uuid and the KEK's id.
- Changing the master key re-wraps the DEKs only (`rotate`): the bulk data is
  never re-encrypted. A Keyring holds the current key (new records) and older
  ones (still readable until rotated).

Metadata (time, model, route, API key id, status, sizes) stays in clear so
records can be listed and pruned without a key; bodies never do. This guards
data at rest only: the running orchestrator holds the key.

The hot path only enqueues (`save`); a daemon thread encrypts and writes in
batches, in its own connection (WAL: readers and the CLI in another process
go on meanwhile).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.config import CaptureSettings
from core.storage import open_database
from core.times import iso_time

log = logging.getLogger("modelyard.capture")

KEY_BYTES = 32
NONCE_BYTES = 12
CHUNK_BYTES = 64 * 1024
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024  # beyond this much waiting to be written, records are dropped
PARTS = ("request", "response")
BUSY_TIMEOUT_S = 30.0
BATCH_RECORDS = 32
BATCH_BYTES = 32 * 1024 * 1024
DROP_LOG_INTERVAL_S = 10.0

# Domain separation: each use of a key or hash says what it is for.
_KEY_ID_CONTEXT = b"modelyard-capture-key-id"
_WRAP_CONTEXT = b"modelyard-capture-dek-v1"
_CHUNK_CONTEXT = b"modelyard-capture-chunk-v1"
_HEX = re.compile(r"[0-9a-fA-F]+")

METADATA_COLUMNS = ("id, uuid, ts, request_id, model, route, key_id, status, request_type, response_type, "
                    "request_bytes, response_bytes, truncated, kek_id")


class CaptureNotFound(LookupError):
    """No capture record with that id."""


class CaptureUnreadable(Exception):
    """A record that cannot be decrypted: its key is not configured (kek_id
    says which one is needed), or it fails authentication (altered)."""

    def __init__(self, message: str, record_id: int | None = None, kek_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.record_id = record_id
        self.kek_id = kek_id


class RotationIncomplete(CaptureUnreadable):
    """rotate() re-wrapped what it could; `failed` maps the ids it could not to why."""

    def __init__(self, rewrapped: int, failed: dict[int, str]) -> None:
        shown = "; ".join(list(failed.values())[:5]) + ("; ..." if len(failed) > 5 else "")
        super().__init__(f"re-wrapped {rewrapped} record(s); {len(failed)} left as they were: {shown}")
        self.rewrapped = rewrapped
        self.failed = failed


# --- master keys --------------------------------------------------------------


def new_master_key() -> str:
    """A fresh master key as 64 hex characters."""
    return secrets.token_hex(KEY_BYTES)


def key_id(key: bytes) -> str:
    """A name for a master key that is safe to store and show."""
    return hashlib.sha256(_KEY_ID_CONTEXT + key).hexdigest()[:16]


def load_master_key(file: str | None = None, env: str | None = None) -> bytes:
    """The 32-byte master key from exactly one of a file and an environment
    variable, written as 64 hex characters or base64 (standard or urlsafe).
    ValueError says which source and what is wrong, never what it holds."""
    if (file is None) == (env is None):
        raise ValueError("give the capture key either as a file or as an environment variable"
                         + (", not both" if file is not None else ""))
    if file is not None:
        return _parse_key(_read_key_file(file), f"capture key file {file}")
    assert env is not None
    value = os.environ.get(env)
    if value is None:
        raise ValueError(f"environment variable {env} (capture key) is not set")
    return _parse_key(value, f"environment variable {env} (capture key)")


def _read_key_file(file: str) -> str:
    try:
        raw = Path(file).expanduser().read_bytes()
    except FileNotFoundError:
        raise ValueError(f"capture key file {file} does not exist") from None
    except OSError as exc:
        raise ValueError(f"capture key file {file} cannot be read: {exc.strerror or type(exc).__name__}") from None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"capture key file {file} holds binary data; write the key as 64 hex characters "
                         "(python -m orchestrator.capture_cli new-key makes one)") from None


def _parse_key(text: str, source: str) -> bytes:
    text = text.strip()
    if not text:
        raise ValueError(f"{source} is empty")
    if len(text) == 2 * KEY_BYTES and _HEX.fullmatch(text):
        return bytes.fromhex(text)
    decoded = _base64(text)
    if decoded is not None and len(decoded) == KEY_BYTES:
        return decoded
    if _HEX.fullmatch(text):
        raise ValueError(f"{source} holds {len(text)} hex characters; a capture key is {2 * KEY_BYTES} "
                         f"({KEY_BYTES} bytes)")
    if decoded is not None:
        raise ValueError(f"{source} decodes as base64 to {len(decoded)} bytes; a capture key is {KEY_BYTES} bytes")
    raise ValueError(f"{source} is neither {2 * KEY_BYTES} hex characters nor base64 of {KEY_BYTES} bytes")


def _base64(text: str) -> bytes | None:
    """Standard or urlsafe base64, padding optional; None when it is neither."""
    standard = text.replace("-", "+").replace("_", "/")
    standard += "=" * (-len(standard) % 4)
    try:
        return base64.b64decode(standard, validate=True)
    except (binascii.Error, ValueError):
        return None


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise ValueError(f"a capture key is {KEY_BYTES} bytes")
    return bytes(key)


class Keyring:
    """The current master key (new records, rotation target) and older ones
    (still readable). Shows key ids only, never keys."""

    def __init__(self, current: bytes, previous: Sequence[bytes] = ()) -> None:
        self._current = _check_key(current)
        self.current_id = key_id(self._current)
        self._keys = {key_id(key): key for key in map(_check_key, previous)}
        self._keys[self.current_id] = self._current

    @property
    def current(self) -> bytes:
        return self._current

    @property
    def ids(self) -> tuple[str, ...]:
        """Every configured key id, the current one first."""
        return (self.current_id, *(kid for kid in self._keys if kid != self.current_id))

    def get(self, kid: str) -> bytes:
        """The key with that id; KeyError when it is not configured."""
        return self._keys[kid]

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __repr__(self) -> str:
        return f"Keyring(current={self.current_id}, configured={list(self.ids)})"


# --- sealing and opening ------------------------------------------------------


def _wrap_aad(record_uuid: str, kek_id: str) -> bytes:
    return b"\0".join((_WRAP_CONTEXT, record_uuid.encode(), kek_id.encode()))


def _chunk_aad(record_uuid: str, part: str, idx: int, final: bool) -> bytes:
    return b"\0".join((_CHUNK_CONTEXT, record_uuid.encode(), part.encode(),
                       idx.to_bytes(8, "big") + (b"\1" if final else b"\0")))


def _wrap(dek: bytes, record_uuid: str, keyring: Keyring) -> tuple[bytes, bytes]:
    """(nonce, wrapped DEK) under the current master key."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(keyring.current).encrypt(nonce, dek, _wrap_aad(record_uuid, keyring.current_id))


def _unwrap(record: dict[str, Any], keyring: Keyring | None) -> bytes:
    """The record's DEK; CaptureUnreadable saying which key is missing or that it was altered."""
    record_id, kek_id = record["id"], record["kek_id"]
    try:
        if keyring is None:
            raise KeyError(kek_id)
        kek = keyring.get(kek_id)
    except KeyError:
        configured = ", ".join(keyring.ids) if keyring is not None else "none"
        raise CaptureUnreadable(f"capture {record_id} is under key {kek_id}, which is not configured "
                                f"(configured: {configured})", record_id, kek_id) from None
    try:
        return AESGCM(kek).decrypt(record["wrap_nonce"], record["wrapped_dek"], _wrap_aad(record["uuid"], kek_id))
    except InvalidTag:
        raise CaptureUnreadable(f"capture {record_id}: its data key does not authenticate under key {kek_id}; "
                                "the record was altered", record_id, kek_id) from None


def _seal_body(aead: AESGCM, record_uuid: str, part: str, body: bytes) -> Iterator[tuple[int, bytes, bytes, int]]:
    """(idx, nonce, ciphertext, final) per chunk; an empty body is one empty chunk,
    so that a part with no chunks at all is recognisably cut."""
    count = max(1, -(-len(body) // CHUNK_BYTES))
    for idx in range(count):
        final = idx == count - 1
        nonce = os.urandom(NONCE_BYTES)
        piece = body[idx * CHUNK_BYTES:(idx + 1) * CHUNK_BYTES]
        yield idx, nonce, aead.encrypt(nonce, piece, _chunk_aad(record_uuid, part, idx, final)), int(final)


def _open_body(aead: AESGCM, record: dict[str, Any], part: str, chunks: list[dict[str, Any]]) -> bytes:
    """The part's plaintext from its chunks (sorted by idx); CaptureUnreadable if any
    is missing, out of place or altered. The final flag checked is the one sealed
    in, not the stored column: the column only sharpens the message."""
    record_id = record["id"]

    def unreadable(why: str) -> CaptureUnreadable:
        return CaptureUnreadable(f"capture {record_id}: {why}", record_id, record["kek_id"])

    if not chunks:
        raise unreadable(f"the {part} has no chunks (deleted)")
    for position, chunk in enumerate(chunks):
        if chunk["idx"] != position:
            raise unreadable(f"{part} chunk {position} is missing")
    if not chunks[-1]["final"]:
        raise unreadable(f"the {part} ends before its final chunk (cut short)")
    last = len(chunks) - 1
    pieces = []
    for position, chunk in enumerate(chunks):
        aad = _chunk_aad(record["uuid"], part, position, position == last)
        try:
            pieces.append(aead.decrypt(chunk["nonce"], chunk["ciphertext"], aad))
        except InvalidTag:
            raise unreadable(f"{part} chunk {position} does not authenticate: altered, reordered, moved from "
                             "another record, or the body was cut short") from None
    return b"".join(pieces)


@dataclass(slots=True)
class _Pending:
    """A record on its way to the writer thread, still in clear."""

    uuid: str
    ts: float
    request_id: str | None
    model: str | None
    route: str | None
    key_id: str | None
    status: int | None
    request_type: str
    response_type: str
    request_body: bytes  # already cut to max_bytes
    response_body: bytes
    request_size: int  # the sizes before the cut
    response_size: int
    cost: int  # bytes it holds


def _seal(item: _Pending, keyring: Keyring, max_bytes: int) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """The records row and the chunks rows (without record_id) of one record."""
    request, response = item.request_body[:max_bytes], item.response_body[:max_bytes]  # max_bytes may have shrunk
    dek = AESGCM.generate_key(bit_length=256)
    wrap_nonce, wrapped = _wrap(dek, item.uuid, keyring)
    record = {
        "uuid": item.uuid, "ts": item.ts, "request_id": item.request_id, "model": item.model, "route": item.route,
        "key_id": item.key_id, "status": item.status, "request_type": item.request_type,
        "response_type": item.response_type, "request_bytes": item.request_size,
        "response_bytes": item.response_size,
        "truncated": int(len(request) < item.request_size or len(response) < item.response_size),
        "kek_id": keyring.current_id, "wrapped_dek": wrapped, "wrap_nonce": wrap_nonce,
    }
    aead = AESGCM(dek)
    chunks = [(part, *sealed) for part, body in zip(PARTS, (request, response), strict=True)
              for sealed in _seal_body(aead, item.uuid, part, body)]
    return record, chunks


# --- presentation ---------------------------------------------------------------


def is_json_type(content_type: str | None) -> bool:
    mime = (content_type or "").split(";")[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: Python reads them, JSON has none


def parse_json(body: bytes) -> Any:
    """The body as JSON; ValueError when it is not (including cut-short JSON)."""
    return json.loads(body, parse_constant=_no_constants)


def present_body(body: bytes, content_type: str | None) -> Any:
    """A body for a JSON answer: parsed when it is JSON, else base64 with its type."""
    if is_json_type(content_type):
        with contextlib.suppress(ValueError):
            return parse_json(body)
    return {"base64": base64.b64encode(body).decode("ascii"), "content_type": content_type}


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    shown = {name: row[name] for name in METADATA_COLUMNS.split(", ")}
    shown["time"] = iso_time(row["ts"])
    shown["truncated"] = bool(row["truncated"])
    return shown


# --- the store ------------------------------------------------------------------


def _create_tables(db: sqlite_utils.Database) -> None:
    # AUTOINCREMENT: an id an operator wrote down never names another record after a prune.
    db.execute("""
        CREATE TABLE records (
            id INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT NOT NULL UNIQUE, ts REAL NOT NULL,
            request_id TEXT, model TEXT, route TEXT, key_id TEXT, status INTEGER,
            request_type TEXT, response_type TEXT, request_bytes INTEGER NOT NULL, response_bytes INTEGER NOT NULL,
            truncated INTEGER NOT NULL DEFAULT 0, kek_id TEXT NOT NULL, wrapped_dek BLOB NOT NULL,
            wrap_nonce BLOB NOT NULL)""")
    db.execute("CREATE INDEX records_ts ON records (ts)")
    db.execute("""
        CREATE TABLE chunks (
            record_id INTEGER NOT NULL, part TEXT NOT NULL, idx INTEGER NOT NULL, nonce BLOB NOT NULL,
            ciphertext BLOB NOT NULL, final INTEGER NOT NULL, PRIMARY KEY (record_id, part, idx))""")


MIGRATIONS = [_create_tables]


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, list(params))
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _owner_only(path: Path) -> None:
    """Metadata is in clear: keep the files to their owner."""
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        with contextlib.suppress(OSError):
            os.chmod(path.with_name(name), 0o600)


def _as_bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)  # a copy: the caller may reuse its buffer
    raise TypeError(f"a body must be bytes, not {type(body).__name__}")


def keyring_of(settings: CaptureSettings) -> Keyring:
    """The keyring settings.capture names: its current key and the old ones
    (ValueError naming the source that is missing or wrong)."""
    current = load_master_key(settings.key_file, settings.key_env)
    old = [load_master_key(file=f) for f in settings.old_key_files]
    old += [load_master_key(env=e) for e in settings.old_key_envs]
    return Keyring(current, old)


class CaptureStore:
    """Encrypted request/response records in one sqlite file. keyring None:
    metadata only (list, prune); save, read and rotate need a key."""

    def __init__(self, path: Path, keyring: Keyring | None, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES) -> None:
        if max_bytes < 0 or max_pending_bytes < 0:
            raise ValueError("max_bytes and max_pending_bytes must be at least 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_pending_bytes = max_pending_bytes
        self._db = open_database(self.path, MIGRATIONS)
        self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _owner_only(self.path)
        self._db_lock = threading.Lock()  # the reading connection serves one thread at a time
        self._keyring = keyring
        self._keyring_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._state = threading.Condition()  # guards the counters and the writer below
        self._submitted = self._finished = self._pending_bytes = self._dropped = 0
        self._last_drop_log = 0.0
        self._writer: threading.Thread | None = None
        self._closed = False

    # --- keys ---------------------------------------------------------------

    @property
    def keyring(self) -> Keyring | None:
        with self._keyring_lock:
            return self._keyring

    def set_keyring(self, keyring: Keyring | None) -> None:
        """A reloaded configuration's keys: records sealed from now on use its current key."""
        with self._keyring_lock:
            self._keyring = keyring

    # --- writing (hot path: enqueue only) -----------------------------------

    @property
    def dropped(self) -> int:
        """Records not kept because too much was waiting to be written."""
        return self._dropped

    def save(self, *, request_id: str | None, model: str | None, route: str | None, key_id: str | None,
             status: int | None, request_body: bytes, response_body: bytes,
             request_type: str = "application/json", response_type: str = "application/json",
             response_size: int | None = None) -> None:
        """Queue one exchange for encryption and storage. Cheap and never raises:
        it runs on the event loop, in the path of the answer. response_size:
        the answer's whole size, when response_body is only its beginning."""
        try:
            request, response = _as_bytes(request_body), _as_bytes(response_body)
            sizes = len(request), max(len(response), response_size or 0)
            request, response = request[: self.max_bytes], response[: self.max_bytes]  # only what is kept waits
            item = _Pending(
                uuid=str(uuid.uuid4()), ts=time.time(), request_id=request_id, model=model, route=route,
                key_id=key_id, status=status, request_type=request_type, response_type=response_type,
                request_body=request, response_body=response, request_size=sizes[0], response_size=sizes[1],
                cost=len(request) + len(response),
            )
            self._enqueue(item)
        except Exception as exc:  # the body stays out of the log
            log.error("capture: could not queue the record of request %s: %s: %s", request_id,
                      type(exc).__name__, exc)

    def _enqueue(self, item: _Pending) -> None:
        with self._state:
            if self._closed:
                log.debug("capture: store closed; record of request %s not kept", item.request_id)
                return
            # One record always fits an empty queue: the budget bounds the backlog, not the record.
            if self._pending_bytes + item.cost > self.max_pending_bytes and self._submitted > self._finished:
                self._note_drop()
                return
            self._pending_bytes += item.cost
            self._submitted += 1
            if self._writer is None:
                self._writer = threading.Thread(target=self._run_writer, name="capture-writer", daemon=True)
                self._writer.start()
            self._queue.put(item)  # under the lock: ahead of close()'s stop mark

    def _note_drop(self) -> None:
        self._dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.warning("capture: %d record(s) dropped so far: more than %d bytes wait to be written",
                        self._dropped, self.max_pending_bytes)

    def _run_writer(self) -> None:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        try:
            while True:
                batch, stop = self._next_batch()
                if batch:
                    self._write_batch(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _next_batch(self) -> tuple[list[_Pending], bool]:
        """What is waiting, up to a batch (blocks for the first); True when closing."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch, size = [first], first.cost
        while len(batch) < BATCH_RECORDS and size < BATCH_BYTES:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            size += item.cost
        return batch, False

    def _write_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        try:
            keyring = self.keyring
            if keyring is None:
                raise RuntimeError("no capture key is configured")
            sealed = [_seal(item, keyring, self.max_bytes) for item in batch]
            with conn:  # one transaction per batch
                for record, chunks in sealed:
                    cursor = conn.execute(f"INSERT INTO records ({', '.join(record)}) "
                                          f"VALUES ({', '.join('?' * len(record))})", list(record.values()))
                    conn.executemany("INSERT INTO chunks (record_id, part, idx, nonce, ciphertext, final) "
                                     "VALUES (?, ?, ?, ?, ?, ?)", [(cursor.lastrowid, *chunk) for chunk in chunks])
        except Exception as exc:  # type and message only: never a body
            log.error("capture: %d record(s) lost (requests %s): %s: %s", len(batch),
                      ", ".join(str(item.request_id) for item in batch[:5]), type(exc).__name__, exc)
        finally:
            with self._state:
                self._finished += len(batch)
                self._pending_bytes -= sum(item.cost for item in batch)
                self._state.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (or failed); False on timeout."""
        with self._state:
            target = self._submitted
            return self._state.wait_for(lambda: self._finished >= target, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to timeout), then close. Later saves are dropped."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            writer = self._writer
            if writer is not None:
                self._queue.put(None)
        if writer is not None:
            writer.join(timeout)
            if writer.is_alive():
                log.warning("capture: the writer was still busy at close; queued records may be lost")
        with self._db_lock:
            self._db.conn.close()

    # --- reading ------------------------------------------------------------

    def list(self, since: float | None = None, until: float | None = None, model: str | None = None,
             key_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Metadata of the newest records in [since, until), newest first."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        clauses, params = [], []
        for clause, value in (("ts >= ?", since), ("ts < ?", until), ("model = ?", model), ("key_id = ?", key_id)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._db_lock:
            rows = _rows(self._db.conn, f"SELECT {METADATA_COLUMNS} FROM records {where} "
                                        "ORDER BY ts DESC, id DESC LIMIT ?", [*params, limit])
        return [_metadata(row) for row in rows]

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: the record and its chunks as of one moment."""
        with self._db_lock:
            conn = self._db.conn
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.rollback()

    def read(self, record_id: int) -> dict[str, Any]:
        """Metadata plus "request" and "response" (bytes, decrypted).
        CaptureNotFound, or CaptureUnreadable saying which key it needs or what was altered."""
        with self._snapshot() as conn:
            found = _rows(conn, f"SELECT {METADATA_COLUMNS}, wrapped_dek, wrap_nonce FROM records WHERE id = ?",
                          [record_id])
            if not found:
                raise CaptureNotFound(f"no capture with id {record_id}")
            chunks = _rows(conn, "SELECT part, idx, nonce, ciphertext, final FROM chunks WHERE record_id = ? "
                                 "ORDER BY part, idx", [record_id])
        record = found[0]
        aead = AESGCM(_unwrap(record, self.keyring))
        shown = _metadata(record)
        for part in PARTS:
            shown[part] = _open_body(aead, record, part, [chunk for chunk in chunks if chunk["part"] == part])
        return shown

    # --- maintenance --------------------------------------------------------

    def rotate(self, batch: int = 200) -> int:
        """Re-wrap the data key of every record not under the current master key
        under it; returns how many. Only the small wrapped DEK changes: the chunks
        need no re-encryption, which is the point of envelope encryption.

        Works in transactions of `batch` records with a pause between, so an
        orchestrator writing to the same file (another process) goes on meanwhile.
        Refuses to start when some records are under keys the keyring lacks;
        records that fail authentication are left as they were (RotationIncomplete
        after the rest). Interrupted, it resumes where it stopped when run again."""
        keyring = self.keyring
        if keyring is None:
            raise CaptureUnreadable("rotation needs the capture keys; none is configured")
        self._check_keys_known(keyring)
        rewrapped, failed, after = 0, {}, 0
        while True:
            count, after, more = self._rotate_batch(keyring, after, batch, failed)
            rewrapped += count
            if not more:
                break
            time.sleep(0.005)  # let a waiting writer take the lock
        if failed:
            raise RotationIncomplete(rewrapped, failed)
        return rewrapped

    def _check_keys_known(self, keyring: Keyring) -> None:
        with self._db_lock:
            counts = _rows(self._db.conn, "SELECT kek_id, COUNT(*) AS n FROM records GROUP BY kek_id")
        missing = {row["kek_id"]: row["n"] for row in counts if row["kek_id"] not in keyring}
        if missing:
            listed = ", ".join(f"{kid} ({n} record(s))" for kid, n in missing.items())
            raise CaptureUnreadable(f"records are under key(s) {listed}, which are not configured: give them as old "
                                    "keys; nothing was re-wrapped", kek_id=next(iter(missing)))

    def _rotate_batch(self, keyring: Keyring, after: int, batch: int, failed: dict[int, str]) -> tuple[int, int, bool]:
        """Re-wrap up to `batch` records with ids above `after`, in one write
        transaction: (re-wrapped, last id seen, whether there may be more)."""
        with self._db_lock:
            conn = self._db.conn
            conn.execute("BEGIN IMMEDIATE")  # the write lock first: nobody re-wraps the same rows between
            try:
                rows = _rows(conn, "SELECT id, uuid, kek_id, wrapped_dek, wrap_nonce FROM records "
                                   "WHERE kek_id != ? AND id > ? ORDER BY id LIMIT ?",
                             [keyring.current_id, after, batch])
                count = 0
                for row in rows:
                    try:
                        dek = _unwrap(row, keyring)
                    except CaptureUnreadable as exc:
                        failed[row["id"]] = exc.message
                        continue
                    nonce, wrapped = _wrap(dek, row["uuid"], keyring)
                    conn.execute("UPDATE records SET kek_id = ?, wrapped_dek = ?, wrap_nonce = ? WHERE id = ?",
                                 [keyring.current_id, wrapped, nonce, row["id"]])
                    count += 1
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        return count, rows[-1]["id"] if rows else after, len(rows) == batch

    def prune(self, older_than: float, batch: int = 500) -> int:
        """Delete the records (and their chunks) from before `older_than` (unix
        seconds), in small transactions; returns how many."""
        total = 0
        while True:
            with self._db_lock, self._db.conn as conn:
                ids = [row[0] for row in conn.execute("SELECT id FROM records WHERE ts < ? ORDER BY id LIMIT ?",
                                                      [older_than, batch])]
                if ids:
                    marks = ", ".join("?" * len(ids))
                    conn.execute(f"DELETE FROM chunks WHERE record_id IN ({marks})", ids)
                    conn.execute(f"DELETE FROM records WHERE id IN ({marks})", ids)
            total += len(ids)
            if len(ids) < batch:
                return total
