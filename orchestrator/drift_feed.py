"""The request feed: every completed model request's features, on their way
to the drift service (models/drift/), without slowing the request and
without losing them while that service restarts.

    request ends -> record(): a dict appended to a deque (microseconds, no I/O)
    pump (a task, every POLL s) -> prompt embeddings, if configured
                                -> drift_feed.db (sqlite, committed)
                                -> POST /drift/requests in batches
                                -> rows deleted once the service answered 200

The service keeps, per monitor, the highest `seq` it committed (and the feed's
id, so that a new drift_feed.db counting from 1 again is recognised), in the
same transaction as the events, and skips the events at or below it under the
monitor's lock: a batch sent again after a crash on either side (its answer
lost) or a timeout is not counted twice. Events wait in drift_feed.db while
the service is down, up to settings.drift.max_pending rows; beyond that the
oldest are dropped, counted in modelyard_drift_feed_dropped_total and logged.
What is lost on a kill -9 of the orchestrator itself: the events not yet
written, those of its last POLL seconds (or, with prompt embeddings, of the
round's embedding calls: at most EMBED_TIMEOUT seconds in all).

Prompts are never written to disk here: with settings.drift.prompt_embeddings
their text waits in memory for the embedding model, and only the vector is
stored.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import sqlite_utils
from prometheus_client import CollectorRegistry, Counter, Gauge

from core.logs import log_event
from core.storage import open_database
from orchestrator.usage import Usage

log = logging.getLogger("modelyard.drift_feed")

POLL = 0.2  # seconds between rounds of the pump: what a kill -9 may lose
MAX_IN_MEMORY = 100_000  # events waiting for the pump; beyond, new ones are dropped (counted)
RETRY = 2.0  # seconds before sending again after the drift service failed or was down
SEND_TIMEOUT = aiohttp.ClientTimeout(total=60)
MAX_PROMPT_CHARS = 2000  # of a prompt's text, embedded (the model truncates further by its own limit)
EMBED_BATCH = 64  # prompts per call to the embedding model
EMBED_TIMEOUT = 60.0  # seconds a call may take, a cold start of the model included; then: no embeddings
FEED_TOKEN_HEADER = "x-modelyard-feed-token"  # models/drift/request_source.py checks it

Embedder = Callable[[list[str]], Awaitable[list[list[float]]]]
UrlOf = Callable[[], Awaitable[str]]


def request_features(route: str, model: str, status: int, error: str | None, latency: float,
                     first_byte: float | None, stream: bool, key: str | None, tenant: str | None,
                     usage: Usage | None) -> dict[str, Any]:
    """One completed request as the features of core/request_features.py
    (those it did not have are left out)."""
    features: dict[str, Any] = {
        "latency_ms": round(latency * 1000, 3),
        "status": str(status),
        "error": error or ("none" if status < 400 else f"http_{status}"),
        "route": route,
        "model": model,
        "key": key or "anonymous",
        "tenant": tenant or "none",
        "stream": "true" if stream else "false",
    }
    if stream and first_byte is not None:
        features["ttft_ms"] = round(first_byte * 1000, 3)
    if usage is not None:
        features["prompt_tokens"] = usage.prompt_tokens
        features["completion_tokens"] = usage.completion_tokens
        features["finish_reason"] = usage.finish_reason or "none"
    return features


def prompt_text(payload: dict[str, Any]) -> str | None:
    """What to embed of a chat or completion request: the last user message's
    text, or the prompt when it is text (token ids are not embedded)."""
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt or None
    if isinstance(prompt, list) and prompt and all(isinstance(item, str) for item in prompt):
        return prompt[-1] or None
    for message in reversed(payload.get("messages") or []):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(part["text"] for part in content
                               if isinstance(part, dict) and isinstance(part.get("text"), str))
        return content or None if isinstance(content, str) else None
    return None


def _create(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, "
               "model TEXT NOT NULL, features TEXT NOT NULL)")
    # The feed's id: seq numbers count within it (a new drift_feed.db starts again at 1,
    # and the drift service must not take its events for ones it has seen).
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('feed_id', ?)", [secrets.token_hex(8)])


MIGRATIONS = [_create]


class FeedMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sent = Counter("modelyard_drift_feed_sent_total", "Request events the drift service took.",
                            registry=registry)
        self.dropped = Counter("modelyard_drift_feed_dropped_total",
                               "Request events dropped before reaching the drift service, by reason.",
                               ["reason"], registry=registry)
        self.pending = Gauge("modelyard_drift_feed_pending", "Request events waiting for the drift service.",
                             registry=registry)


Waiting = tuple[float, str, dict[str, Any], str | None]  # ts, model, features, prompt to embed


class DriftFeed:
    """url_of(): the drift service's base URL (raises while it is down).
    token: what proves to the service that the feed comes from us.
    embed: texts -> vectors with the prompt embedding model, or None."""

    def __init__(self, path: Path, url_of: UrlOf, metrics: FeedMetrics, max_pending: int = 1_000_000,
                 batch_size: int = 1000, embed: Embedder | None = None, token: str = "") -> None:
        self.db = open_database(path, MIGRATIONS)
        self.feed_id = self.db.execute("SELECT value FROM meta WHERE key = 'feed_id'").fetchone()[0]
        self.url_of = url_of
        self.metrics = metrics
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.embed = embed
        self.token = token
        self._waiting: collections.deque[Waiting] = collections.deque()
        self._lock = threading.Lock()  # the connection is shared by worker threads
        self._session: aiohttp.ClientSession | None = None
        self._retry_at = 0.0
        self._failure_logged = False
        self._stopping = False
        self._writes: set[asyncio.Future[None]] = set()
        self.metrics.pending.set(self._count())

    # ------------------------------------------------------------ the request path

    def record(self, model: str, features: dict[str, Any], prompt: str | None = None) -> None:
        """Queue one request's features (and its prompt's text, to embed). No I/O."""
        if len(self._waiting) >= MAX_IN_MEMORY:
            self.metrics.dropped.labels("backlog").inc()
            return
        text = prompt[:MAX_PROMPT_CHARS] if prompt and self.embed is not None else None
        self._waiting.append((time.time(), model, features, text))

    # ------------------------------------------------------------ the pump

    async def pump_forever(self) -> None:
        """Rounds until stop(): a round is never cut short (its rows would be half sent)."""
        while not self._stopping:
            try:
                await self.pump()
            except Exception:  # noqa: BLE001 - the next round tries again; the rows stay
                log.exception("the drift feed's round failed")
            if not self._stopping:
                await asyncio.sleep(POLL)

    def stop(self) -> None:
        """The round under way ends after its current batch, embedding no more prompts."""
        self._stopping = True
        self.embed = None

    async def pump(self, deadline: float | None = None) -> int:
        """One round: write what waits, then send what is stored (until deadline,
        a time.monotonic() value). Returns the events sent."""
        await self.write_waiting()
        if time.monotonic() < self._retry_at:
            return 0
        sent = 0
        while deadline is None or time.monotonic() < deadline:
            if self._stopping and deadline is None:  # shutting down: close_drift sends the rest
                break
            rows = await asyncio.to_thread(self._oldest, self.batch_size)
            if not rows:
                break
            if not await self._send(rows, deadline):
                self._retry_at = time.monotonic() + RETRY
                break
            await asyncio.to_thread(self._delete_through, rows[-1]["seq"])
            sent += len(rows)
            self.metrics.sent.inc(len(rows))
            if len(rows) < self.batch_size:
                break
        self.metrics.pending.set(await asyncio.to_thread(self._count))
        return sent

    async def write_waiting(self) -> None:
        """Everything waiting, to drift_feed.db: with the prompts' embeddings when
        they come within EMBED_TIMEOUT, without them otherwise, and written even
        when the round is cancelled meanwhile (at shutdown)."""
        batch = []
        while self._waiting:
            batch.append(self._waiting.popleft())
        if not batch:
            return
        try:
            if self.embed is not None:
                await self._add_embeddings(batch)
        finally:
            rows = [(ts, model, features) for ts, model, features, _ in batch]
            write = asyncio.ensure_future(asyncio.to_thread(self._insert, rows))
            self._writes.add(write)  # close() waits for it, even when this round was cancelled
            write.add_done_callback(self._writes.discard)
            await asyncio.shield(write)

    async def _add_embeddings(self, batch: list[Waiting]) -> None:
        """prompt_embedding for the events with a prompt, within EMBED_TIMEOUT
        for the whole round. After a failure, a timeout or stop(), the round's
        other prompts go unembedded: the events go on without it (their other
        features still count) rather than wait on a model that does not answer."""
        wanted = [(features, text) for _, _, features, text in batch if text]
        deadline = time.monotonic() + EMBED_TIMEOUT
        for start in range(0, len(wanted), EMBED_BATCH):
            chunk = wanted[start:start + EMBED_BATCH]
            embed, left = self.embed, deadline - time.monotonic()
            if embed is None or left <= 0:
                self._unembedded(len(wanted) - start, "stopping" if embed is None else "TimeoutError")
                return
            try:
                vectors = await asyncio.wait_for(embed([text for _, text in chunk]), left)
            except Exception as exc:  # noqa: BLE001 - logged; the events are kept without embeddings
                # The error's type only: an answer quoting the prompt must not reach the log.
                self._unembedded(len(wanted) - start, type(exc).__name__)
                return
            for (features, _), vector in zip(chunk, vectors, strict=True):
                features["prompt_embedding"] = vector

    def _unembedded(self, prompts: int, reason: str) -> None:
        self.metrics.dropped.labels("embedding_failed").inc(prompts)
        log_event(log, "embedding prompts for drift failed; their events go without", logging.WARNING,
                  prompts=prompts, error=reason)

    async def _send(self, rows: list[dict[str, Any]], deadline: float | None) -> bool:
        try:
            url = await self.url_of()
        except Exception as exc:  # noqa: BLE001 - the service is down: the rows wait
            self._note_failure(str(exc))
            return False
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=SEND_TIMEOUT)
        body = orjson.dumps({"feed": self.feed_id,
                             "events": [{"seq": row["seq"], "ts": row["ts"], "model": row["model"],
                                         "features": orjson.Fragment(row["features"])} for row in rows]})
        timeout = SEND_TIMEOUT if deadline is None else \
            aiohttp.ClientTimeout(total=max(0.1, deadline - time.monotonic()))
        try:
            async with self._session.post(url + "/drift/requests", data=body, timeout=timeout,
                                          headers={"content-type": "application/json",
                                                   FEED_TOKEN_HEADER: self.token}) as response:
                if response.status != 200:
                    self._note_failure(f"HTTP {response.status}: {(await response.read())[:300]!r}")
                    return False
                await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self._note_failure(f"{type(exc).__name__}: {exc}")
            return False
        if self._failure_logged:
            log_event(log, "the drift feed is flowing again", pending=await asyncio.to_thread(self._count))
            self._failure_logged = False
        return True

    def _note_failure(self, reason: str) -> None:
        if not self._failure_logged:  # once per outage, not every RETRY seconds
            log_event(log, "request events wait for the drift service", logging.WARNING, reason=reason[:300])
            self._failure_logged = True

    # ------------------------------------------------------------ drift_feed.db (worker threads)

    def _insert(self, events: list[tuple[float, str, dict[str, Any]]]) -> None:
        encoded = [(ts, model, orjson.dumps(features).decode()) for ts, model, features in events]
        with self._lock, self.db.conn:
            self.db.conn.executemany("INSERT INTO events (ts, model, features) VALUES (?, ?, ?)", encoded)
            over = self._count_locked() - self.max_pending
            if over > 0:
                self.db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                                [over])
        if over > 0:
            self.metrics.dropped.labels("max_pending").inc(over)
            log_event(log, "the drift feed dropped its oldest events: the drift service is behind",
                      logging.WARNING, dropped=over, max_pending=self.max_pending)

    def _oldest(self, count: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.db.execute("SELECT seq, ts, model, features FROM events ORDER BY seq LIMIT ?",
                                   [count]).fetchall()
        return [{"seq": seq, "ts": ts, "model": model, "features": features.encode()}
                for seq, ts, model, features in rows]

    def _delete_through(self, seq: int) -> None:
        with self._lock, self.db.conn:
            self.db.execute("DELETE FROM events WHERE seq <= ?", [seq])

    def pending(self) -> int:
        """Events stored, not yet taken by the drift service."""
        return self._count()

    def _count(self) -> int:
        with self._lock:
            return self._count_locked()

    def _count_locked(self) -> int:
        # seq only grows and rows go oldest first: the span is the count, without a table scan
        low, high = self.db.execute("SELECT MIN(seq), MAX(seq) FROM events").fetchone()
        return 0 if low is None else high - low + 1

    async def close_writer(self) -> None:
        """At shutdown: what waits in memory is written (and sent now or at the next start)."""
        self.embed = None  # no model calls while shutting down: their prompts go unembedded
        try:
            await self.write_waiting()
        except Exception:  # noqa: BLE001 - logged; closing goes on
            log.exception("writing the last request events for drift failed")

    async def close(self) -> None:
        await self.close_writer()
        if self._writes:  # a cancelled round's rows, still being written
            await asyncio.wait(list(self._writes))
        if self._session is not None:
            await self._session.close()
        with self._lock:
            self.db.conn.close()
