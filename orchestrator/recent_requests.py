"""The last requests to the model routes, in memory, for the dashboard and
GET /admin/requests: when, who, which model, the status, latency, time to
first byte and tokens. Bodies are never kept here (settings.capture does
that, encrypted). Lost at restart: the audit log and usage ledger keep the
durable record.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

KEEP = 500


@dataclass(frozen=True)
class RecentRequest:
    at: float  # wall-clock time the request ended
    request_id: str
    route: str
    model: str
    status: int
    latency_ms: float
    first_byte_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    key: str | None  # the key's name (or the JWT's subject), never its secret
    error: str | None


class RecentRequests:
    def __init__(self, keep: int = KEEP) -> None:
        self._requests: deque[RecentRequest] = deque(maxlen=keep)

    def add(self, request_id: bytes, route: str, model: str, status: int, latency: float,
            first_byte: float | None, usage: Any, key: str | None, error: str | None) -> None:
        """latency and first_byte in seconds; usage: the request's Usage, or None."""
        self._requests.append(RecentRequest(
            at=time.time(), request_id=request_id.decode(), route=route, model=model, status=status,
            latency_ms=round(latency * 1000, 1),
            first_byte_ms=round(first_byte * 1000, 1) if first_byte is not None else None,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            completion_tokens=usage.completion_tokens if usage is not None else None,
            key=key, error=error))

    def latest(self, limit: int, model: str | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        found = []
        for request in reversed(self._requests):
            if model is None or request.model == model:
                found.append(asdict(request))
                if len(found) == limit:
                    break
        return found
