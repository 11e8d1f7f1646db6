"""A tamper-evident audit log: who did what, to which model, when (<state>/audit.db).

Two kinds of entries: "admin" (the action is the request's method and path,
"POST /admin/keys", "POST /admin/services/chat/unload" ...; the keys CLI
writes keys.create, keys.revoke, keys.rotate) and "access" (action
"request": one request to a model; orchestrator/request_log.py). Each row carries the SHA-256 of the
previous row's hash plus its own contents, so editing a row, deleting one, or
editing one and recomputing its hash shows up in verify(): an attacker has to
rewrite every later row, and a copy of the head hash kept elsewhere catches
even that (and a truncated tail).

record() runs on the request hot path, so it only stamps the time and
enqueues a tuple; one daemon thread drains the queue in batches, chains the
hashes and inserts them in one transaction per batch. A batch that fails to
write is logged and retried, never dropped. Reads (entries, verify, export)
open their own read-only connection, so they work from another process (the
`python -m orchestrator.audit_cli` CLI) while the orchestrator writes (WAL).

Secrets: callers pass ids and names only (key ids, never keys; JWT subjects,
never tokens); nothing here can tell a credential from a name, so nothing
here filters them out.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import sqlite_utils

from core.storage import open_database
from core.times import iso_time

log = logging.getLogger("modelyard.audit")

GENESIS = "0" * 64
KINDS = ("admin", "access")
EXPORT_FORMATS = ("jsonl", "csv")
BATCH_ROWS = 500  # rows per transaction: bounds how long one write holds the lock
PAGE_ROWS = 1000  # rows per read statement: reads never hold the whole log in memory
MAX_RETRY_DELAY = 30.0
MAX_QUEUED = 50_000  # entries waiting for the writer; beyond, new ones are dropped and counted (logged)

# The columns record() fills, in insert order; id, prev_hash and hash are the writer's.
RECORDED = ("ts", "kind", "action", "actor", "key_id", "tenant", "model", "route", "status", "request_id", "detail")
HASHED = ("id", *RECORDED)  # what a row's hash covers, besides prev_hash
COLUMNS = (*HASHED, "prev_hash", "hash")
EXPORTED = ("id", "time", *RECORDED, "prev_hash", "hash")  # "time": ts for humans

ExportFormat = Literal["jsonl", "csv"]


def _create_table(db: sqlite_utils.Database) -> None:
    # AUTOINCREMENT keeps the highest id ever used in sqlite_sequence, which is
    # how verify() notices rows deleted from the end.
    db.execute(
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            kind TEXT NOT NULL,
            action TEXT NOT NULL,
            actor TEXT,
            key_id TEXT,
            tenant TEXT,
            model TEXT,
            route TEXT,
            status INTEGER,
            request_id TEXT,
            detail TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX audit_ts ON audit (ts)")


MIGRATIONS = [_create_table]


def canonical_json(value: Any) -> str:
    """The one JSON text of a value: sorted keys, no spaces, ASCII only (so it
    survives any storage), floats as repr (so they read back identical)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def chain_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """sha256(prev_hash + canonical JSON of the row's other columns, id included)."""
    body = canonical_json({column: row[column] for column in HASHED})
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _text(value: Any) -> str | None:
    # A value sqlite would store differently than it was hashed, or refuse
    # (lone surrogates), would poison its batch: normalise it here.
    if value is None:
        return None
    text = str(value)
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def _status(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # None, or not a status: keep the entry, lose the field
        return None
    return number if -(2**63) <= number < 2**63 else None


def _detail(detail: dict[str, Any] | None) -> str:
    # Serialised now, not in the writer: the caller may reuse its dict.
    try:
        return canonical_json(detail or {})
    except (TypeError, ValueError):
        try:
            return canonical_json(json.loads(json.dumps(detail, default=str)))
        except (TypeError, ValueError) as exc:  # circular: keep that it happened, not what
            return canonical_json({"unserialisable_detail": type(exc).__name__})


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int  # rows found intact, in order, before any problem
    head: str  # the hash of the last intact row (GENESIS for an empty log)
    problem: str | None = None
    row_id: int | None = None  # where the problem shows

    def public(self) -> dict[str, Any]:
        return asdict(self)


def _public(row: sqlite3.Row) -> dict[str, Any]:
    """A row as the API and JSONL show it: detail parsed, ts also as ISO time."""
    entry = {column: row[column] for column in COLUMNS}
    entry["time"] = iso_time(row["ts"])
    try:
        entry["detail"] = json.loads(row["detail"])
    except (TypeError, ValueError):  # an edited row: show it as it is
        pass
    return {column: entry[column] for column in EXPORTED}


class AuditReader:
    """Read-only access to an audit.db that exists: never creates nor migrates it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).resolve()
        with closing(self._connect()) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            raise ValueError(f"{self.path} is not a modelyard audit log")
        if version > len(MIGRATIONS):
            raise RuntimeError(f"{self.path} has schema version {version}, newer than this modelyard knows "
                               f"({len(MIGRATIONS)}); it was written by a newer release")

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():  # mode=ro would not create it either, but says less
            raise FileNotFoundError(f"no audit log at {self.path}")
        # Not bound to a thread: a streamed export is resumed by whichever
        # worker thread the server picks, one at a time.
        conn = sqlite3.connect(self.path.as_uri() + "?mode=ro", uri=True, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        return conn

    def _rows(self, where: list[str] | None = None, params: list[Any] | None = None,
              limit: int | None = None) -> Iterator[sqlite3.Row]:
        """Rows in id order, a page per statement (keyset paging on id)."""
        where, params = where or [], params or []
        last_id, left = 0, limit
        with closing(self._connect()) as conn:
            while left is None or left > 0:
                page = PAGE_ROWS if left is None else min(PAGE_ROWS, left)
                sql = (f"SELECT {', '.join(COLUMNS)} FROM audit WHERE {' AND '.join(['id > ?', *where])} "
                       "ORDER BY id LIMIT ?")
                rows = conn.execute(sql, [last_id, *params, page]).fetchall()
                yield from rows
                if len(rows) < page:
                    return
                last_id = rows[-1]["id"]
                left = None if left is None else left - len(rows)

    def _filtered(self, since: float | None = None, until: float | None = None, limit: int | None = None,
                  **equal: str | None) -> Iterator[sqlite3.Row]:
        where, params = [], []
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        if until is not None:
            where.append("ts < ?")
            params.append(until)
        for column, value in equal.items():
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return self._rows(where, params, limit)

    def entries(self, since: float | None = None, until: float | None = None, limit: int | None = None,
                kind: str | None = None, key_id: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """Entries with since <= ts < until, in id (chain) order."""
        rows = self._filtered(since, until, limit, kind=kind, key_id=key_id, model=model)
        return [_public(row) for row in rows]

    def verify(self) -> VerifyResult:
        """Walk the whole chain; stop at the first row that breaks it."""
        # Read before the walk: rows appended during it must not look like a lost tail.
        highest = self._highest_id()
        checked, prev_id, head = 0, 0, GENESIS
        for row in self._rows():
            problem = self._problem(row, prev_id, head)
            if problem is not None:
                return VerifyResult(False, checked, head, problem, row["id"])
            checked, prev_id, head = checked + 1, row["id"], row["hash"]
        if highest > prev_id:
            gone = f"row {highest}" if highest == prev_id + 1 else f"rows {prev_id + 1} to {highest}"
            return VerifyResult(False, checked, head, f"{gone} at the end of the log were deleted", prev_id + 1)
        return VerifyResult(True, checked, head)

    @staticmethod
    def _problem(row: sqlite3.Row, prev_id: int, prev_hash: str) -> str | None:
        row_id = row["id"]
        if row_id != prev_id + 1:
            gone = f"row {prev_id + 1}" if row_id == prev_id + 2 else f"rows {prev_id + 1} to {row_id - 1}"
            return f"row {row_id}: {gone} before it were deleted"
        if row["prev_hash"] != prev_hash:
            if prev_id == 0:
                return f"row {row_id}: the first row does not start from the genesis hash"
            return (f"row {row_id}: its prev_hash is not the hash of row {prev_id}: row {prev_id} was changed "
                    "and its hash recomputed")
        if chain_hash(prev_hash, dict(row)) != row["hash"]:
            return f"row {row_id}: its contents do not match its hash: the row was edited"
        return None

    def _highest_id(self) -> int:
        with closing(self._connect()) as conn:
            found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
        return int(found[0]) if found else 0

    def export_chunks(self, fmt: ExportFormat, since: float | None = None,
                      until: float | None = None) -> Iterator[str]:
        """The export as text chunks (a page of rows each), for streaming."""
        for chunk, _ in self._export_pages(fmt, since, until):
            yield chunk

    def export(self, out: TextIO, fmt: ExportFormat = "jsonl", since: float | None = None,
               until: float | None = None) -> int:
        """Write entries with since <= ts < until to out; the number of rows written."""
        written = 0
        for chunk, rows in self._export_pages(fmt, since, until):
            out.write(chunk)
            written += rows
        return written

    def _export_pages(self, fmt: ExportFormat, since: float | None,
                      until: float | None) -> Iterator[tuple[str, int]]:
        """(text, rows in it) a page at a time; CSV starts with its header."""
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"unknown export format {fmt!r}: use jsonl or csv")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if fmt == "csv":
            writer.writerow(EXPORTED)
        rows = 0
        for row in self._filtered(since, until):
            if fmt == "csv":
                writer.writerow([iso_time(row["ts"]) if column == "time" else row[column] for column in EXPORTED])
            else:
                buffer.write(json.dumps(_public(row), separators=(",", ":")) + "\n")
            rows += 1
            if rows == PAGE_ROWS:
                yield buffer.getvalue(), rows
                buffer.seek(0)
                buffer.truncate()
                rows = 0
        if buffer.tell() or rows:
            yield buffer.getvalue(), rows


_STOP = object()  # tells the writer thread to finish what is queued and end
Recorded = tuple[Any, ...]  # the RECORDED columns of one entry


class AuditLog(AuditReader):
    """The orchestrator's audit log: creates audit.db and appends to it."""

    def __init__(self, path: Path) -> None:
        # This connection belongs to the writer thread from here on.
        self._db = open_database(Path(path), MIGRATIONS)
        self._db.conn.isolation_level = None  # the writer says BEGIN IMMEDIATE and COMMIT itself
        super().__init__(path)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self.dropped = 0  # entries refused because MAX_QUEUED were waiting
        self._dropped_logged = 0.0
        self._abandon = threading.Event()  # close() gave up waiting for a failing writer
        self._writer = threading.Thread(target=self._run, name="modelyard-audit-writer", daemon=True)
        self._writer.start()

    def record(self, kind: str, action: str, *, actor: str | None = None, key_id: str | None = None,
               tenant: str | None = None, model: str | None = None, route: str | None = None,
               status: int | None = None, request_id: str | None = None,
               detail: dict[str, Any] | None = None) -> None:
        """Queue one entry (written within milliseconds). Never raises.

        detail must hold no credentials: ids and names only."""
        try:
            if self._closed:
                log.error("audit log closed: entry %s %s by %s not recorded", kind, action, actor)
                return
            if self._queue.qsize() >= MAX_QUEUED:  # the writer is stuck (a full disk?): memory is not endless
                self.dropped += 1
                if time.monotonic() - self._dropped_logged >= 10:
                    self._dropped_logged = time.monotonic()
                    log.error("audit log: %d entries waiting to be written; %d dropped so far", MAX_QUEUED,
                              self.dropped)
                return
            self._queue.put((time.time(), _text(kind), _text(action), _text(actor), _text(key_id), _text(tenant),
                             _text(model), _text(route), _status(status), _text(request_id), _detail(detail)))
        except Exception:  # an audit problem must not fail the request it records
            log.exception("could not queue audit entry %s %s", kind, action)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything recorded so far is written; TimeoutError if
        the writer cannot manage within timeout (it keeps trying)."""
        if self._closed:
            return
        written = threading.Event()
        self._queue.put(written)
        if not written.wait(timeout):
            raise TimeoutError(f"audit entries not written within {timeout:g}s")

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        try:
            self.flush(timeout)
        except TimeoutError:
            log.error("closing the audit log with entries the writer could not write (see the errors above)")
            self._abandon.set()
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join(timeout)
        self._db.conn.close()

    # The writer thread.

    def _run(self) -> None:
        rows: list[Recorded] = []
        waiters: list[threading.Event] = []
        stopping, failures = False, 0
        while True:
            if not stopping:
                stopping = self._collect(rows, waiters)
            if rows:
                try:
                    self._write(rows)
                except Exception:
                    failures += 1
                    log.exception("could not write %d audit entries; retrying", len(rows))
                    if self._abandon.wait(min(MAX_RETRY_DELAY, 0.1 * 2**failures)):
                        log.error("audit log closed with %d entries unwritten", len(rows) + self._queue.qsize())
                        return
                    continue  # the same rows, and more if the batch has room
                rows, failures = [], 0
            for waiter in waiters:
                waiter.set()
            waiters = []
            if stopping:
                return

    def _collect(self, rows: list[Recorded], waiters: list[threading.Event]) -> bool:
        """Move queued entries into rows (up to a batch), waiting only when
        there is nothing to do; flush() markers go to waiters. True on _STOP."""
        while len(rows) < BATCH_ROWS:
            try:
                item = self._queue.get(block=not rows and not waiters)
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            if isinstance(item, threading.Event):
                waiters.append(item)
            else:
                rows.append(item)
        return False

    def _write(self, rows: list[Recorded]) -> None:
        """Chain and insert rows in one transaction. The head is read inside
        it, so the chain is right even if another process appended."""
        conn = self._db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            highest = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
            prev_hash = last[1] if last else GENESIS
            # After the highest id ever used, so a deleted tail stays a visible gap.
            next_id = max(last[0] if last else 0, highest[0] if highest else 0) + 1
            values = []
            for offset, recorded in enumerate(rows):
                row = dict(zip(HASHED, (next_id + offset, *recorded), strict=True))
                row_hash = chain_hash(prev_hash, row)
                values.append((*row.values(), prev_hash, row_hash))
                prev_hash = row_hash
            conn.executemany(f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                             values)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
