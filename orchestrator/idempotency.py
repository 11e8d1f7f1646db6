"""Idempotency-Key: a retried request gets the first one's answer, not a second run.

A client that sends `Idempotency-Key: <key>` with an OpenAI request (not a
stream) and retries it (a timeout, a dropped connection) gets the stored
answer of the first, with `Idempotent-Replayed: true`, and the model runs
once. The same key with another body is a 409: a key names one request.
A duplicate that arrives while the first is still running waits for its
answer. Keys belong to their caller (the API key or token's id; everyone is
one caller with auth off) and are kept settings.idempotency_ttl seconds
(<state>/idempotency.db).

Stored: answers below 500 other than 429 (a rate limit passes; a server
error may not recur), so a retry after those runs again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils

from core.errors import ServiceError
from core.storage import open_database

HEADER = b"idempotency-key"
REPLAYED = (b"idempotent-replayed", b"true")
# Headers that belong to one response, not to its replay.
_NOT_STORED = {b"x-request-id", b"content-length", b"x-modelyard-overhead-ms", b"x-modelyard-load-ms"}
CLEANUP_EVERY = 300.0  # seconds


def _create_table(db: sqlite_utils.Database) -> None:
    db["answers"].create(
        {"owner": str, "key": str, "fingerprint": str, "status": int, "headers": str, "body": bytes,
         "created": float},
        pk=("owner", "key"),
    )
    db["answers"].create_index(["created"])


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def storable(self) -> bool:
        return self.status < 500 and self.status != 429


@dataclass
class Capture:
    """An ASGI send that passes everything on and keeps a copy of the answer."""

    send: Any
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _NOT_STORED]
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        await self.send(message)

    def answer(self) -> Answer | None:
        return Answer(self.status, self.headers, b"".join(self.chunks)) if self.complete else None


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
    def __init__(self, path: Path, ttl: float) -> None:
        self.db = open_database(path, [_create_table])
        self.ttl = ttl
        self.running: dict[tuple[str, str], tuple[str, asyncio.Future[Answer | None]]] = {}
        self.cleaned = 0.0

    def close(self) -> None:
        self.db.conn.close()

    async def begin(self, owner: str, key: str, print_: str) -> Answer | None:
        """The stored answer to replay, or None: go on, and call finish() after."""
        while True:
            rows = list(self.db["answers"].rows_where("owner = ? AND key = ? AND created > ?",
                                                      [owner, key, time.time() - self.ttl]))
            if rows:
                row = rows[0]
                if row["fingerprint"] != print_:
                    raise conflict(key)
                return Answer(row["status"], [(k.encode(), v.encode()) for k, v in orjson.loads(row["headers"])],
                              row["body"])
            running = self.running.get((owner, key))
            if running is None:
                self.running[(owner, key)] = (print_, asyncio.get_running_loop().create_future())
                return None
            if running[0] != print_:
                raise conflict(key)
            answer = await asyncio.shield(running[1])
            if answer is not None and answer.storable():
                return answer
            # The first one's answer was not kept (an error that may pass): this one runs.

    def finish(self, owner: str, key: str, print_: str, answer: Answer | None) -> None:
        """Keep the answer (when it is worth replaying) and wake the duplicates waiting on it."""
        if answer is not None and answer.storable():
            headers = orjson.dumps([(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.headers]).decode()
            now = time.time()
            with self.db.conn:
                self.db["answers"].upsert({"owner": owner, "key": key, "fingerprint": print_,
                                           "status": answer.status, "headers": headers, "body": answer.body,
                                           "created": now}, pk=("owner", "key"))
                if now - self.cleaned > CLEANUP_EVERY:
                    self.db.execute("DELETE FROM answers WHERE created <= ?", [now - self.ttl])
                    self.cleaned = now
        _, waiting = self.running.pop((owner, key), ("", None))
        if waiting is not None and not waiting.done():
            waiting.set_result(answer)


def conflict(key: str) -> ServiceError:
    return ServiceError(409, f"Idempotency-Key '{key}' was used with another request body; a key names one "
                        "request", code="idempotency_conflict")
