"""When a request that failed on one replica may go to another.

The rule underneath: retry only when the failed replica cannot have done the
work, and never once the client has seen part of an answer.

- Retried: connection failures (refused, reset before any response, DNS), a
  timeout before any response header, and 502/503/504. A 502 or 504 comes
  from something in front of the model (a gateway, a proxy) that did not get
  an answer from it; a 503 means the replica refused the request before
  working on it (loading, overloaded, draining). A 503 with Retry-After says
  "not here, not now": still worth another replica at once, while that
  replica's breaker hears about it (counts_against_endpoint).
- Not retried: 500, because the model may have run: a generation is not
  idempotent (it costs GPU time, may call tools, is billed), and running it
  twice is worse than reporting the error; any 4xx, because the request
  itself is the problem and another replica would say the same; a client
  that left, since nobody waits for the answer; and anything once a byte
  went to the client, since a second answer cannot be spliced onto the
  first.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

RETRYABLE_STATUSES = frozenset({502, 503, 504})


class Failure(enum.Enum):
    CONNECT = "connect"  # refused, reset before any response, DNS
    TIMEOUT_BEFORE_RESPONSE = "timeout_before_response"  # no response header in time
    UPSTREAM_5XX = "upstream_5xx"  # the replica answered 5xx (status says which)
    UPSTREAM_4XX = "upstream_4xx"  # the replica answered 4xx
    CLIENT_GONE = "client_gone"  # our client disconnected
    AFTER_FIRST_BYTE = "after_first_byte"  # the upstream broke after the answer began


@dataclass
class RetryPolicy:
    attempts: int = 2  # tries in all, including the first (so 1 retry)
    backoff_base: float = 0.05  # seconds; retry n waits up to base * 2**(n-1) (full jitter)
    backoff_max: float = 1.0  # ... capped here

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.backoff_base < 0 or self.backoff_max < 0:
            raise ValueError("backoff_base and backoff_max must not be negative")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number attempt (1: the first retry,
        i.e. the second try): uniform in [0, min(backoff_max, backoff_base *
        2**(attempt-1))]. Full jitter, so requests that failed together do not
        come back together. attempt < 1 (the first try) waits nothing."""
        if attempt < 1:
            return 0.0
        # The exponent is capped so that a large attempt cannot overflow a float.
        ceiling = min(self.backoff_max, self.backoff_base * 2.0 ** min(attempt - 1, 64))
        return (rng or random).uniform(0.0, ceiling)


def retryable(failure: Failure, status: int | None, bytes_sent_to_client: bool) -> bool:
    """Whether the request may go to another replica (see the module's docstring).
    status is the replica's HTTP status, where it answered one."""
    if bytes_sent_to_client:
        return False
    if failure in (Failure.CONNECT, Failure.TIMEOUT_BEFORE_RESPONSE):
        return True
    if failure is Failure.UPSTREAM_5XX:
        return status in RETRYABLE_STATUSES  # not 500: the model may have done the work
    return False  # 4xx, a client gone, a stream broken mid-answer


def counts_against_endpoint(failure: Failure, status: int | None) -> bool:
    """Whether the failure says something about the replica, and so feeds its
    breaker: connection failures, timeouts, any 5xx (500 included: not
    retried, but a replica answering 500s is broken) and a stream the
    upstream broke mid-answer. Not a 4xx (the request's fault) nor a client
    that left (nobody's)."""
    if failure is Failure.UPSTREAM_5XX:
        return status is None or status >= 500
    return failure in (Failure.CONNECT, Failure.TIMEOUT_BEFORE_RESPONSE, Failure.AFTER_FIRST_BYTE)
