"""Rate limits (requests and tokens per minute, per API key and per model)
and quotas (requests and tokens per API key per day or month).

Rate limits are token buckets held in memory: a bucket refills at rate/60 a
second and holds at most one second's worth (at least one), so a client gets
its rate and not a minute's worth in one burst. A request needs a token
from its key's request bucket and its model's; neither is taken unless both
have one. Over the limit: 429 `rate_limited` with Retry-After.

Tokens per minute cannot be known before the answer: a request is admitted
while its key's and model's token buckets hold at least one token, and its tokens
are taken when its answer is known (spend_tokens), which may put a bucket in
debt and hold back the next requests until it refills. So the rate holds
over time; at one moment, the requests already admitted may overshoot it.

Quotas count the requests (and tokens) a key used in the current UTC day or
month. The request check and count happen together on the event loop, with
no await between, so concurrent requests can never overrun a request quota:
with 200 at once against a quota of 50, exactly 50 pass. A token quota is
checked the same way but counted when answers end, so requests in flight
when it is reached may go over it, by their own tokens at most. Counts are
written to keys.db every second and at shutdown (a crash loses at most that
second's counts). Over a quota: 429 `quota_exceeded` with Retry-After until
the period's end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlite_utils

from core.errors import ServiceError

if TYPE_CHECKING:
    from orchestrator.auth import Principal

log = logging.getLogger("modelyard.limits")
FLUSH_SECONDS = 1.0


@dataclass
class TokenBucket:
    rpm: float  # the rate, per minute (of requests, or of model tokens)
    tokens: float  # below 0: in debt
    updated: float

    @classmethod
    def full(cls, rpm: float, now: float) -> TokenBucket:
        return cls(rpm, cls.capacity_of(rpm), now)

    @staticmethod
    def capacity_of(rpm: float) -> float:
        return max(1.0, rpm / 60.0)

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity_of(self.rpm), self.tokens + (now - self.updated) * self.rpm / 60.0)
        self.updated = now

    def wait(self) -> float:
        """Seconds until a token is there (0: one is)."""
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) * 60.0 / self.rpm


@dataclass(frozen=True)
class Limit:
    """One bucket a request must pass: ("key", id) or ("model", id), counting
    "requests" (one taken on admission) or "tokens" (spent after the answer)."""

    kind: str
    name: str
    per_minute: float | None
    unit: str = "requests"


class RateLimits:
    def __init__(self) -> None:
        self.buckets: dict[tuple[str, str, str], TokenBucket] = {}

    def _bucket(self, limit: Limit, now: float) -> TokenBucket:
        assert limit.per_minute is not None
        slot = (limit.kind, limit.name, limit.unit)
        bucket = self.buckets.get(slot)
        if bucket is None or bucket.rpm != limit.per_minute:  # new, or its limit changed (a reload, a key edit)
            bucket = self.buckets[slot] = TokenBucket.full(limit.per_minute, now)
        bucket.refill(now)
        return bucket

    def admit(self, limits: list[Limit], now: float | None = None) -> None:
        """Take a request from each request bucket with a limit, or from none,
        and check that each token bucket holds a token: 429 naming the first that fails."""
        now = time.monotonic() if now is None else now
        taken = []
        for limit in limits:
            if limit.per_minute is None:
                continue
            bucket = self._bucket(limit, now)
            wait = bucket.wait()
            if wait > 0:
                raise ServiceError(429, f"rate limit of {limit.per_minute:g} {limit.unit} per minute for "
                                   f"{limit.kind} {limit.name} reached; retry in {wait:.1f} s", code="rate_limited",
                                   retry_after=wait)
            if limit.unit == "requests":
                taken.append(bucket)
        for bucket in taken:
            bucket.tokens -= 1.0

    def spend(self, limits: list[Limit], amount: float, now: float | None = None) -> None:
        """Take amount from each token bucket with a limit (into debt, if need be)."""
        now = time.monotonic() if now is None else now
        for limit in limits:
            if limit.per_minute is not None:
                self._bucket(limit, now).tokens -= amount


def period_of(period: str, now: float) -> tuple[str, float]:
    """The UTC period's label ("2026-11-23", "2026-11") and the unix time it ends."""
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        label = start.strftime("%Y-%m-%d")
        end = start.timestamp() + 86400
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        label = start.strftime("%Y-%m")
        following = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(
            month=start.month + 1)
        end = following.timestamp()
    return label, end


def create_quota_table(db: sqlite_utils.Database) -> None:
    db["quota_usage"].create({"key_id": str, "period": str, "requests": int}, pk=("key_id", "period"))


def add_quota_tokens(db: sqlite_utils.Database) -> None:
    db["quota_usage"].add_column("tokens", int, not_null_default=0)


@dataclass(frozen=True)
class QuotaSpec:
    """A key's quota: requests and/or tokens per UTC day or month (None: no limit on that)."""

    period: str
    requests: int | None = None
    tokens: int | None = None


async def flush_forever(flush: Callable[[], None], what: str) -> None:
    """Call flush every FLUSH_SECONDS; a failure is logged and the next call tries again
    (what was not written stays in memory)."""
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        try:
            flush()
        except Exception:  # noqa: BLE001 - the next round tries again
            log.exception("writing %s failed", what)


class Quotas:
    """Requests and tokens per key per period, counted in memory, kept in keys.db."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self.counts: dict[tuple[str, str], list[int]] = {}  # (key, period label) -> [requests, tokens]
        self.dirty: set[tuple[str, str]] = set()

    def used(self, key_id: str, label: str) -> list[int]:
        slot = (key_id, label)
        if slot not in self.counts:
            row = self.db.execute("SELECT requests, tokens FROM quota_usage WHERE key_id = ? AND period = ?",
                                  [key_id, label]).fetchone()
            self.counts[slot] = [row[0], row[1]] if row else [0, 0]
        return self.counts[slot]

    def check(self, key_id: str, quota: QuotaSpec, now: float) -> tuple[str, str]:
        """The slot a request of key_id counts in; 429 when a quota for the period is used up."""
        label, ends = period_of(quota.period, now)
        requests, tokens = self.used(key_id, label)
        for limit, used, unit in ((quota.requests, requests, "requests"), (quota.tokens, tokens, "tokens")):
            if limit is not None and used >= limit:
                raise ServiceError(429, f"the key's quota of {limit} {unit} per {quota.period} is used up; it renews "
                                   f"at {datetime.fromtimestamp(ends, UTC):%Y-%m-%d %H:%M} UTC", code="quota_exceeded",
                                   retry_after=ends - now)
        return key_id, label

    def count(self, slot: tuple[str, str], requests: int = 1, tokens: int = 0) -> None:
        counts = self.used(*slot)
        counts[0] += requests
        counts[1] += tokens
        self.dirty.add(slot)

    def flush(self) -> None:
        if not self.dirty:
            return
        slots = set(self.dirty)
        rows = [{"key_id": key_id, "period": label, "requests": self.counts[(key_id, label)][0],
                 "tokens": self.counts[(key_id, label)][1]} for key_id, label in slots]
        with self.db.conn:
            self.db["quota_usage"].upsert_all(rows, pk=("key_id", "period"))
        self.dirty -= slots

    async def flush_forever(self) -> None:
        await flush_forever(self.flush, "quota counts")


class Limiter:
    """What a request must pass before it is forwarded: its key's quota, then
    its key's and its model's rate limits. Synchronous, so it is atomic on the
    event loop. After the answer, spend_tokens counts its tokens."""

    def __init__(self, quotas: Quotas | None) -> None:
        self.rates = RateLimits()
        self.quotas = quotas

    @staticmethod
    def _limits(principal: Principal | None, model_id: str, model_rpm: float | None,
                model_tpm: float | None) -> list[Limit]:
        key_id = str(principal.key_id) if principal is not None else ""
        return [Limit("key", key_id, principal.rpm if principal is not None else None),
                Limit("model", model_id, model_rpm),
                Limit("key", key_id, principal.tpm if principal is not None else None, "tokens"),
                Limit("model", model_id, model_tpm, "tokens")]

    def admit(self, principal: Principal | None, model_id: str, model_rpm: float | None,
              model_tpm: float | None = None) -> None:
        slot = None
        if principal is not None and principal.quota is not None and self.quotas is not None:
            slot = self.quotas.check(principal.quota_id or str(principal.key_id), principal.quota, time.time())
        self.rates.admit(self._limits(principal, model_id, model_rpm, model_tpm))
        if slot is not None and self.quotas is not None:
            self.quotas.count(slot)

    def spend_tokens(self, principal: Principal | None, model_id: str, model_tpm: float | None, tokens: int) -> None:
        """Count an answer's tokens against its key's and model's token buckets and
        its key's token quota (of the period the answer ends in)."""
        if tokens <= 0:
            return
        self.rates.spend([limit for limit in self._limits(principal, model_id, None, model_tpm)
                          if limit.unit == "tokens"], tokens)
        if principal is not None and principal.quota is not None and principal.quota.tokens is not None \
                and self.quotas is not None:
            label, _ = period_of(principal.quota.period, time.time())
            self.quotas.count((principal.quota_id or str(principal.key_id), label), requests=0, tokens=tokens)
