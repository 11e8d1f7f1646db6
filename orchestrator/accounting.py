"""Usage and cost per API key and model, by the hour, in <state>/usage.db.

Each answered request adds what it used (orchestrator/usage.py) and what
that cost at the model's prices of the moment (`prices:` in models.yaml) to
the row of its hour, key and model. A later price change does not rewrite
history. Sums are kept in memory and added to the database every second and
at shutdown, like the quota counts (orchestrator/limits.py).

Reports (GET /admin/usage) sum the rows of a period, grouped by key, model,
hour, day or month.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import sqlite_utils

from core.config import Prices
from core.storage import open_database
from orchestrator.limits import flush_forever
from orchestrator.usage import Usage

GROUPS = ("key", "model", "hour", "day", "month")
# What each group is in SQL: hours are stored as "2026-11-24T13"; days and months are their prefixes.
_GROUP_SQL = {"key": "key_id", "model": "model", "hour": "hour", "day": "substr(hour, 1, 10)",
              "month": "substr(hour, 1, 7)"}


@dataclass
class Totals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    audio_seconds: float = 0.0
    gpu_seconds: float = 0.0
    cost: float = 0.0
    estimated: int = 0  # requests whose usage was estimated (streams left before their usage event)

    def add(self, usage: Usage, cost: float) -> None:
        self.requests += 1
        self.estimated += int(usage.estimated)
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.images += usage.images
        self.audio_seconds += usage.audio_seconds
        self.gpu_seconds += usage.gpu_seconds
        self.cost += cost


COLUMNS = tuple(f.name for f in fields(Totals))


def cost_of(usage: Usage, prices: Prices) -> float:
    return (usage.prompt_tokens / 1000 * prices.per_1k_prompt_tokens
            + usage.completion_tokens / 1000 * prices.per_1k_completion_tokens
            + usage.images * prices.per_image
            + usage.audio_seconds * prices.per_audio_second
            + usage.gpu_seconds * prices.per_gpu_second
            + prices.per_request)


def hour_of(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H", time.gmtime(moment))


def _create(db: sqlite_utils.Database) -> None:
    db["usage"].create(
        {"hour": str, "key_id": str, "model": str, **{name: float if name in ("audio_seconds", "gpu_seconds", "cost")
                                                      else int for name in COLUMNS}},
        pk=("hour", "key_id", "model"),
    )


MIGRATIONS = [_create]


class Ledger:
    def __init__(self, path: Path) -> None:
        self.db = open_database(path, MIGRATIONS)
        self.pending: dict[tuple[str, str, str], Totals] = {}  # (hour, key, model): not yet in the database

    def close(self) -> None:
        self.flush()
        self.db.conn.close()

    def record(self, key_id: str | None, model: str, usage: Usage, prices: Prices, now: float | None = None) -> float:
        """Count one answered request; returns its cost. key_id None: auth is off."""
        cost = cost_of(usage, prices)
        slot = (hour_of(time.time() if now is None else now), key_id or "", model)
        self.pending.setdefault(slot, Totals()).add(usage, cost)
        return cost

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        names = ", ".join(COLUMNS)
        sums = ", ".join(f"{name} = {name} + excluded.{name}" for name in COLUMNS)
        sql = (f"INSERT INTO usage (hour, key_id, model, {names}) VALUES (?, ?, ?, {', '.join('?' * len(COLUMNS))}) "
               f"ON CONFLICT (hour, key_id, model) DO UPDATE SET {sums}")
        try:
            with self.db.conn:
                self.db.conn.executemany(sql, [(*slot, *(getattr(t, name) for name in COLUMNS))
                                               for slot, t in pending.items()])
        except BaseException:
            for slot, totals in pending.items():  # keep them for the next flush
                kept = self.pending.setdefault(slot, Totals())
                for name in COLUMNS:
                    setattr(kept, name, getattr(kept, name) + getattr(totals, name))
            raise

    async def flush_forever(self) -> None:
        await flush_forever(self.flush, "usage")

    def report(self, since: float | None, until: float | None, group_by: Sequence[str],
               key_id: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """Sums over the hours in [since, until) (hours are whole: a bound inside
        one counts that hour whole when it is the start, not when it is the end)."""
        self.flush()
        where, params = [], []
        if since is not None:
            where.append("hour >= ?")
            params.append(hour_of(since))
        if until is not None:
            where.append("hour < ?")
            params.append(hour_of(until))
        if key_id is not None:
            where.append("key_id = ?")
            params.append(key_id)
        if model is not None:
            where.append("model = ?")
            params.append(model)
        keys = [f"{_GROUP_SQL[group]} AS {group}" for group in group_by]
        sums = [f"SUM({name}) AS {name}" for name in COLUMNS]
        sql = f"SELECT {', '.join([*keys, *sums])} FROM usage"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if group_by:
            sql += f" GROUP BY {', '.join(group_by)} ORDER BY {', '.join(group_by)}"
        cursor = self.db.execute(sql, params)
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        for row in rows:
            for name in COLUMNS:
                row[name] = row[name] or 0
            row["cost"] = round(row["cost"], 6)
        return [row for row in rows if row["requests"]]
