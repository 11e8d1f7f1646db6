"""Rate limits (requests per minute, per API key and per model) and request
quotas (per API key per day or month).

Rate limits are token buckets held in memory: a bucket refills at rpm/60
requests a second and holds at most one second's worth (at least one), so a
client gets its rate and not a minute's worth in one burst. A request needs
a token from its key's bucket and its model's; neither is taken unless both
have one. Over the limit: 429 `rate_limited` with Retry-After.

Quotas count the requests a key made in the current UTC day or month. The
check and the count happen together on the event loop, with no await
between, so concurrent requests can never overrun a quota: with 200 at once
against a quota of 50, exactly 50 pass. Counts are written to keys.db every
second and at shutdown (a crash loses at most that second's counts). Over
the quota: 429 `quota_exceeded` with Retry-After until the period's end.
"""

from __future__ import annotations

import asyncio
import logging
import time
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
    rpm: float
    tokens: float
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


class RateLimits:
    def __init__(self) -> None:
        self.buckets: dict[tuple[str, str], TokenBucket] = {}

    def admit(self, limits: list[tuple[str, str, float | None]], now: float | None = None) -> None:
        """Take a token from each (kind, name, rpm) bucket with a limit, or from
        none: 429 naming the first that has none."""
        now = time.monotonic() if now is None else now
        buckets = []
        for kind, name, rpm in limits:
            if rpm is None:
                continue
            bucket = self.buckets.get((kind, name))
            if bucket is None or bucket.rpm != rpm:  # new, or its limit changed (a reload, a key edit)
                bucket = self.buckets[(kind, name)] = TokenBucket.full(rpm, now)
            bucket.refill(now)
            wait = bucket.wait()
            if wait > 0:
                raise ServiceError(429, f"rate limit of {rpm:g} requests per minute for {kind} {name} reached; "
                                   f"retry in {wait:.1f} s", code="rate_limited", retry_after=wait)
            buckets.append(bucket)
        for bucket in buckets:
            bucket.tokens -= 1.0


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


class RequestQuotas:
    """Requests per key per period, counted in memory, kept in keys.db."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self.counts: dict[tuple[str, str], int] = {}
        self.dirty: set[tuple[str, str]] = set()

    def used(self, key_id: str, label: str) -> int:
        slot = (key_id, label)
        if slot not in self.counts:
            row = self.db.execute("SELECT requests FROM quota_usage WHERE key_id = ? AND period = ?",
                                  [key_id, label]).fetchone()
            self.counts[slot] = row[0] if row else 0
        return self.counts[slot]

    def check(self, key_id: str, limit: int, period: str, now: float) -> tuple[str, str]:
        """The slot a request of key_id counts in; 429 when its quota for the period is used up."""
        label, ends = period_of(period, now)
        if self.used(key_id, label) >= limit:
            raise ServiceError(429, f"the key's quota of {limit} requests per {period} is used up; it renews at "
                               f"{datetime.fromtimestamp(ends, UTC):%Y-%m-%d %H:%M} UTC", code="quota_exceeded",
                               retry_after=ends - now)
        return key_id, label

    def count(self, slot: tuple[str, str]) -> None:
        self.counts[slot] = self.counts.get(slot, 0) + 1
        self.dirty.add(slot)

    def flush(self) -> None:
        if not self.dirty:
            return
        slots = set(self.dirty)
        rows = [{"key_id": key_id, "period": label, "requests": self.counts[(key_id, label)]}
                for key_id, label in slots]
        with self.db.conn:
            self.db["quota_usage"].upsert_all(rows, pk=("key_id", "period"))
        self.dirty -= slots

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - counts stay in memory; the next flush tries again
                log.exception("writing quota counts failed")


class Limiter:
    """What a request must pass before it is forwarded: its quota, then its
    key's and its model's rate limits. Synchronous, so it is atomic on the
    event loop."""

    def __init__(self, quotas: RequestQuotas | None) -> None:
        self.rates = RateLimits()
        self.quotas = quotas

    def admit(self, principal: Principal | None, model_id: str, model_rpm: float | None) -> None:
        slot = None
        if principal is not None and principal.quota is not None and self.quotas is not None:
            requests, period = principal.quota
            slot = self.quotas.check(principal.quota_id or str(principal.key_id), requests, period, time.time())
        key = ("key", str(principal.key_id), principal.rpm) if principal is not None else ("key", "", None)
        self.rates.admit([key, ("model", model_id, model_rpm)])
        if slot is not None and self.quotas is not None:
            self.quotas.count(slot)

