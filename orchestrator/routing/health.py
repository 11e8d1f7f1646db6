"""Whether a replica of a model may take a request: active health checks,
passive request results, and a circuit breaker per endpoint.

Two signals, kept apart on purpose:
- Active checks (check_forever probes each endpoint every interval) decide
  `healthy`: unhealthy after unhealthy_after failed checks in a row, healthy
  again after healthy_after passes in a row.
- Passive results (what happened to real requests) feed the breaker: it opens
  after failure_threshold failures in a row, refuses requests while open, then
  lets a few probe requests through (half-open); a success closes it, a
  failure reopens it for twice as long (up to max_open_seconds).
A passing health check does not close an open breaker: a replica's /health
can answer while its completions fail, and only a real request shows that.

An endpoint starts healthy, with its breaker closed: a replica just added (or
the orchestrator just started) takes traffic at once rather than after its
first round of checks, and a dead one costs at most a few failed requests
(which are retried on another replica) before the breaker or the checks take
it out.

Everything here is synchronous and takes an injected clock, so it is tested
without sleeping; check_forever is the one asyncio loop. The objects are meant
for one event loop: there are no locks, and nothing awaits between reading a
state and changing it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from core.logs import log_event, redact

log = logging.getLogger("modelyard.routing")

REASON_MAX = 300  # characters of a failure reason kept: a whole HTML error page helps no one
# A modelyard API key ("my-<12 hex>-<token>", orchestrator/keys.py) and a URL's user:password@,
# which core.logs.redact does not know: a remote appliance's key must not reach a report.
_MODELYARD_KEY = re.compile(r"\b(my-[0-9a-f]{12}-)[A-Za-z0-9_-]{16,}")
_URL_USERINFO = re.compile(r"://[^/@\s]+@")


def safe_reason(text: str) -> str:
    """text with anything like a credential redacted, cut to REASON_MAX characters."""
    text = redact(text)
    text = _MODELYARD_KEY.sub(r"\1[REDACTED]", text)
    text = _URL_USERINFO.sub("://[REDACTED]@", text)
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 3] + "..."


def describe_exception(exc: BaseException) -> str:
    """'TypeName: message' (just the type name when there is no message), redacted."""
    message = str(exc)
    return safe_reason(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class BreakerSettings:
    failure_threshold: int = 5  # consecutive failures that open it
    open_seconds: float = 30.0  # how long it stays open before letting a probe through
    max_open_seconds: float = 300.0  # each reopening after a failed half-open probe doubles the open time up to this
    half_open_requests: int = 1  # requests let through at once while half-open

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.open_seconds <= 0:
            raise ValueError("open_seconds must be positive")
        if self.max_open_seconds < self.open_seconds:
            raise ValueError("max_open_seconds must be at least open_seconds")
        if self.half_open_requests < 1:
            raise ValueError("half_open_requests must be at least 1")


class CircuitBreaker:
    """Passive protection for one endpoint; see the module's docstring.

    Each request that allow() let through must end in exactly one of
    record_success(), record_failure() or release() (the last for a request
    that proved nothing either way, such as a client that left): while
    half-open, that is what frees its slot. release() is harmless in the
    other states, so a caller may always end a request with one of the three.

    Results that arrive while open (requests let through before it opened,
    finishing late) change nothing: the half-open probe decides.
    """

    def __init__(self, settings: BreakerSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or BreakerSettings()
        self.clock = clock
        self._state = BreakerState.CLOSED
        self.failures = 0  # consecutive failures while closed
        self.open_for = self.settings.open_seconds  # how long the next opening lasts; doubles on failed probes
        self.opened_at: float | None = None  # clock time it last opened; None while closed
        self.retry_at: float | None = None  # while open: clock time it turns half-open
        self.in_flight = 0  # half-open requests let through and not yet ended
        self.transitions: dict[BreakerState, int] = {state: 0 for state in BreakerState}  # entries into each state

    @property
    def state(self) -> BreakerState:
        # Open turns half-open lazily, when someone asks: no timer to run or cancel.
        if self._state is BreakerState.OPEN and self.retry_at is not None and self.clock() >= self.retry_at:
            self._enter(BreakerState.HALF_OPEN)
            self.retry_at = None
            self.in_flight = 0
        return self._state

    def available(self) -> bool:
        """Whether allow() would say yes now, without taking a half-open slot."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return self.in_flight < self.settings.half_open_requests
        return False

    def allow(self) -> bool:
        """Whether a request may go now. While half-open a yes takes one of the
        half_open_requests slots, given back by record_*() or release()."""
        if not self.available():
            return False
        if self._state is BreakerState.HALF_OPEN:
            self.in_flight += 1
        return True

    def record_success(self) -> None:
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._close()
        elif state is BreakerState.CLOSED:
            self.failures = 0

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.CLOSED:
            self.failures += 1
            if self.failures >= self.settings.failure_threshold:
                self._open()
        elif state is BreakerState.HALF_OPEN:
            # The probe failed: it is still broken, so wait longer before the next one.
            self.open_for = min(self.open_for * 2, self.settings.max_open_seconds)
            self._open()

    def release(self) -> None:
        """A request let through ended with neither success nor failure."""
        if self.state is BreakerState.HALF_OPEN and self.in_flight > 0:
            self.in_flight -= 1

    def _open(self) -> None:
        now = self.clock()
        self._enter(BreakerState.OPEN)
        self.opened_at = now
        self.retry_at = now + self.open_for
        self.in_flight = 0

    def _close(self) -> None:
        self._enter(BreakerState.CLOSED)
        self.failures = 0
        self.open_for = self.settings.open_seconds  # a new story: the next opening starts short again
        self.opened_at = None
        self.retry_at = None
        self.in_flight = 0

    def _enter(self, state: BreakerState) -> None:
        self._state = state
        self.transitions[state] += 1


@dataclass
class HealthSettings:
    interval: float = 10.0  # active check period, seconds
    timeout: float = 5.0  # a probe taking longer is a failed check
    unhealthy_after: int = 3  # consecutive failed checks
    healthy_after: int = 1  # consecutive passed checks to come back

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        if self.unhealthy_after < 1 or self.healthy_after < 1:
            raise ValueError("unhealthy_after and healthy_after must be at least 1")


class EndpointHealth:
    """One endpoint: active checks + passive results + its breaker.

    Two questions, because asking the breaker can cost something:
    - available(): could it take a request now? No side effect: for listing
      candidates, health reports, metrics, the dashboard. Call it as often
      as you like.
    - usable(): the router commits to this endpoint. While the breaker is
      half-open this takes one of its few probe slots, so call it once, for
      the endpoint chosen, right before sending; then end that request with
      exactly one of request_succeeded(), request_failed() or release().
      A False (another request took the last slot since available() said
      yes) means: choose another endpoint.
    Were usable() side-effect free, every request arriving while half-open
    would go to a replica that has not yet shown it works; were available()
    the reserving one, a health report would eat the probe slots and the
    endpoint would never be tried again.
    """

    def __init__(self, endpoint_id: str, settings: HealthSettings, breaker: BreakerSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.id = endpoint_id
        self.settings = settings
        self.clock = clock
        self.breaker = CircuitBreaker(breaker, clock)
        self.healthy = True  # presumed healthy until checks say otherwise (see the module's docstring)
        self.consecutive_failures = 0  # failed active checks in a row
        self.consecutive_passes = 0  # passed active checks in a row
        self.last_error: str | None = None  # the latest failure's reason, check or request; kept after recovery
        self.last_check_at: float | None = None  # clock time of the latest active check

    # Active checks.

    def check_passed(self) -> None:
        self.last_check_at = self.clock()
        self.consecutive_failures = 0
        self.consecutive_passes += 1
        if not self.healthy and self.consecutive_passes >= self.settings.healthy_after:
            self.healthy = True
            log_event(log, "endpoint healthy again", endpoint=self.id)

    def check_failed(self, reason: str) -> None:
        self.last_check_at = self.clock()
        self.last_error = safe_reason(reason)
        self.consecutive_passes = 0
        self.consecutive_failures += 1
        if self.healthy and self.consecutive_failures >= self.settings.unhealthy_after:
            self.healthy = False
            log_event(log, "endpoint unhealthy", logging.WARNING, endpoint=self.id,
                      failed_checks=self.consecutive_failures, reason=self.last_error)

    # Passive results: what happened to the requests usable() let through.

    def request_succeeded(self) -> None:
        before = self.breaker.state
        self.breaker.record_success()
        self._log_breaker(before)

    def request_failed(self, reason: str) -> None:
        self.last_error = safe_reason(reason)
        before = self.breaker.state
        self.breaker.record_failure()
        self._log_breaker(before)

    def release(self) -> None:
        """The request ended with neither: its half-open slot is free again."""
        self.breaker.release()

    # Questions.

    def available(self) -> bool:
        """Could it take a request now? Takes nothing (see the class docstring)."""
        return self.healthy and self.breaker.available()

    def usable(self) -> bool:
        """Commit a request to it, taking a half-open slot (see the class docstring)."""
        # healthy first: an endpoint the checks took out must not take a probe slot.
        return self.healthy and self.breaker.allow()

    def describe(self) -> dict[str, object]:
        """For health reports and the dashboard; reasons are redacted, there is no credential here.
        Clock times are the injected clock's (monotonic); retry_in is seconds from now."""
        state = self.breaker.state
        retry_at = self.breaker.retry_at
        return {
            "id": self.id,
            "healthy": self.healthy,
            "available": self.available(),
            "breaker": state.value,
            "consecutive_failures": self.consecutive_failures,
            "breaker_failures": self.breaker.failures,
            "last_error": self.last_error,
            "last_check_at": self.last_check_at,
            "retry_at": retry_at,
            "retry_in": None if retry_at is None else max(0.0, round(retry_at - self.clock(), 3)),
        }

    def _log_breaker(self, before: BreakerState) -> None:
        after = self.breaker.state
        if after is before:
            return
        if after is BreakerState.OPEN:
            log_event(log, "endpoint breaker opened", logging.WARNING, endpoint=self.id,
                      seconds=self.breaker.open_for, reason=self.last_error)
        else:
            log_event(log, f"endpoint breaker {after.value}", endpoint=self.id)


async def check_forever(healths: Mapping[str, EndpointHealth], probe: Callable[[str], Awaitable[None]],
                        settings: HealthSettings) -> None:
    """Every interval, probe each endpoint concurrently with the timeout
    (asyncio.wait_for); a probe raising or timing out is a failed check with
    its reason (type name and message, redacted). Runs until cancelled; one
    endpoint's probe exception never stops the loop.

    probe(endpoint_id) returns when the endpoint is fine and raises otherwise;
    it must be cancellable (the timeout cancels it). healths is read afresh
    each round, so endpoints may be added or removed while it runs. The
    first round runs at once: endpoints start presumed healthy, and a dead
    one should not wait an interval to be found out.
    """
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        rounds = list(healths.items())
        if rounds:
            await asyncio.gather(*(_check_one(health, probe, settings) for _, health in rounds))
        # A fixed rate, not a fixed pause: slow probes do not stretch the period.
        await asyncio.sleep(max(0.0, began + settings.interval - loop.time()))


async def _check_one(health: EndpointHealth, probe: Callable[[str], Awaitable[None]],
                     settings: HealthSettings) -> None:
    try:
        await asyncio.wait_for(probe(health.id), settings.timeout)
    except TimeoutError as exc:
        # wait_for's own timeout has no message; a probe's (aiohttp's, say) may say more.
        reason = describe_exception(exc) if str(exc) else f"TimeoutError: no answer in {settings.timeout:g} s"
        health.check_failed(reason)
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we are being cancelled: check_forever is ending
        health.check_failed(describe_exception(exc))  # the probe's own cancellation, not ours
    except Exception as exc:  # noqa: BLE001 - any failure of the probe is a failed check, never the loop's end
        health.check_failed(describe_exception(exc))
    else:
        health.check_passed()
