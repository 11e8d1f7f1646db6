"""Idempotency-Key: a retried request gets the first one's answer, not a second run.

A client that sends `Idempotency-Key: <key>` with an OpenAI request (not a
stream) and retries it (a timeout, a dropped connection) gets the stored
answer of the first, with `Idempotent-Replayed: true`, and the model runs
once: a request with a key is not abandoned when its client goes away, it
finishes and its answer is kept. The same key with another body is a 409: a
key names one request. A duplicate that arrives while the first is still
running waits for its answer. Keys belong to their caller (the API key's
lineage, so a rotated key keeps them, or the token's subject; everyone is one
caller with auth off) and are kept settings.idempotency_ttl seconds, or
file_ttl for answers naming generated files, whose URLs expire then
(<state>/idempotency.db).

Stored: answers the model's service gave, below 500 and other than 429, up
to MAX_BODY bytes. The gateway's own refusals (403, 404, 429, 503 ...) are
not: they depend on the moment, and a retry should meet the moment's rules.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils

from core.errors import ServiceError
from core.storage import open_database

log = logging.getLogger("modelyard.idempotency")
HEADER = b"idempotency-key"
REPLAYED = (b"idempotent-replayed", b"true")
MAX_BODY = 8 * 1024 * 1024
# Headers that belong to one response, not to its replay.
_NOT_STORED = {b"x-request-id", b"content-length", b"x-modelyard-overhead-ms", b"x-modelyard-load-ms",
               b"set-cookie", b"retry-after"}
CLEANUP_EVERY = 300.0  # seconds


def _create_table(db: sqlite_utils.Database) -> None:
    db["answers"].create(
        {"owner": str, "key": str, "fingerprint": str, "status": int, "headers": str, "body": bytes,
         "expires": float},
        pk=("owner", "key"),
    )
    db["answers"].create_index(["expires"])


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def storable(self) -> bool:
        return self.status < 500 and self.status != 429 and len(self.body) <= MAX_BODY


@dataclass
class Capture:
    """An ASGI send that keeps a copy of the answer and passes it on, through
    `transform` (what the orchestrator does to a model's 200 answer on its way
    out, such as signing file URLs): the copy is the answer before it, so a
    replay is transformed afresh."""

    send: Any
    transform: Callable[[bytes], bytes] | None = None
    start: dict[str, Any] | None = None
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.start = message  # held until the body: the transform may change its length
            return
        if message["type"] == "http.response.body" and self.start is not None:
            self.chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            self.complete = True
            answer = self.answer()
            assert answer is not None
            await send_answer(self.send, answer, self.transform, list(self.start.get("headers", [])))
            return
        await self.send(message)

    def answer(self) -> Answer | None:
        if not self.complete or self.start is None:
            return None
        headers = [(k, v) for k, v in self.start.get("headers", []) if k.lower() not in _NOT_STORED]
        return Answer(self.start["status"], headers, b"".join(self.chunks))


async def send_answer(send: Any, answer: Answer, transform: Callable[[bytes], bytes] | None,
                      headers: list[tuple[bytes, bytes]]) -> None:
    """answer (through transform when it is a 200), with headers and its length."""
    body = transform(answer.body) if transform is not None and answer.status == 200 else answer.body
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def key_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The request's Idempotency-Key; 400 for an unusable one."""
    for name, value in headers:
        if name == HEADER:
            if not 0 < len(value) <= 255 or not all(32 < b < 127 for b in value):
                raise ServiceError(400, "Idempotency-Key must be 1-255 printable ASCII characters without spaces",
                                   code="invalid_idempotency_key")
            return value.decode()
    return None


def fingerprint(payload: dict[str, Any]) -> str:
    """The request's identity: its JSON with keys in order, so spacing does not matter."""
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


class IdempotencyStore:
    """Stored answers in sqlite (read and written in a worker thread, one at a
    time), and the requests running for a key right now."""

    def __init__(self, path: Path, ttl: float) -> None:
        self.db = open_database(path, [_create_table])
        self.db.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash may lose the last answers, never corrupt
        self.lock = threading.Lock()
        self.ttl = ttl
        self.running: dict[tuple[str, str], tuple[str, asyncio.Future[Answer | None]]] = {}
        self.cleaned = 0.0

    def close(self) -> None:
        self.db.conn.close()

    def _stored(self, owner: str, key: str) -> dict[str, Any] | None:
        with self.lock:
            rows = list(self.db["answers"].rows_where("owner = ? AND key = ? AND expires > ?",
                                                      [owner, key, time.time()]))
        return rows[0] if rows else None

    async def begin(self, owner: str, key: str, print_: str) -> Answer | None:
        """The stored answer to replay, or None: go on, and call finish() after."""
        while True:
            running = self.running.get((owner, key))
            if running is None:
                row = await asyncio.to_thread(self._stored, owner, key)
                if row is not None:
                    if row["fingerprint"] != print_:
                        raise conflict(key)
                    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in orjson.loads(row["headers"])]
                    return Answer(row["status"], headers, row["body"])
                running = self.running.get((owner, key))  # claimed while we read?
                if running is None:
                    self.running[(owner, key)] = (print_, asyncio.get_running_loop().create_future())
                    return None
            if running[0] != print_:
                raise conflict(key)
            answer = await asyncio.shield(running[1])
            if answer is not None and answer.storable():
                return answer
            # The first one's answer was not kept (an error that may pass): this one runs.

    def _store(self, owner: str, key: str, print_: str, answer: Answer, ttl: float) -> None:
        headers = orjson.dumps([(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.headers]).decode()
        now = time.time()
        with self.lock, self.db.conn:
            self.db["answers"].upsert({"owner": owner, "key": key, "fingerprint": print_, "status": answer.status,
                                       "headers": headers, "body": answer.body, "expires": now + ttl},
                                      pk=("owner", "key"))
            if now - self.cleaned > CLEANUP_EVERY:
                self.db.execute("DELETE FROM answers WHERE expires <= ?", [now])
                self.cleaned = now

    async def finish(self, owner: str, key: str, print_: str, answer: Answer | None, ttl: float | None = None) -> None:
        """Keep the answer (when it is worth replaying) and wake the duplicates
        waiting on it, whatever happens to the write."""
        try:
            if answer is not None and answer.storable():
                await asyncio.to_thread(self._store, owner, key, print_, answer, min(ttl or self.ttl, self.ttl))
        except Exception:  # noqa: BLE001 - a lost answer means one more run, never a stuck key
            log.exception("keeping the answer for an Idempotency-Key failed")
            answer = None
        finally:
            _, waiting = self.running.pop((owner, key), ("", None))
            if waiting is not None and not waiting.done():
                waiting.set_result(answer)


def conflict(key: str) -> ServiceError:
    return ServiceError(409, f"Idempotency-Key '{key}' was used with another request body; a key names one "
                        "request", code="idempotency_conflict")
