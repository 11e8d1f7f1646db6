"""Points in time as users write them: unix seconds or ISO dates and times
(`2026-11-01`, `2026-11-01T12:00:00Z`; without a zone, UTC). The admin API's
`since`/`until` parameters and the CLIs' --since/--until all read them here."""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime

from core.errors import ServiceError

LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: the last moment datetime and gmtime know


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """Unix seconds from '1793000000', '2026-11-01', '2026-11-01T12:00:00'
    (with or without Z or an offset; naive means UTC). ValueError otherwise."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise ValueError(f"{text!r} is neither unix seconds nor an ISO date/datetime such as 2026-11-01 or "
                             "2026-11-01T12:00:00Z (UTC when no zone is given)") from None
        seconds = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if not (math.isfinite(seconds) and 0 <= seconds <= LATEST):
        raise ValueError(f"{text!r} is not a time between 1970 and 9999")
    return seconds


def time_argument(text: str) -> float:
    """parse_time for argparse: a bad time is a usage error."""
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def time_param(name: str, text: str | None) -> float | None:
    """parse_time for a query parameter: 400 naming it; None when absent."""
    if text is None or text == "":
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise ServiceError(400, f"{name}: {exc}", code="invalid_request", param=name) from None


def period_params(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """The since/until query parameters: [since, until), 400 unless since comes first."""
    start, end = time_param("since", since), time_param("until", until)
    if start is not None and end is not None and start >= end:
        raise ServiceError(400, "since must be before until", code="invalid_request", param="until")
    return start, end
