"""Replica health for the router (orchestrator/routing/health.py) and when a
failed request may go to another replica (orchestrator/routing/retry.py).
The breaker and EndpointHealth run on a fake clock; check_forever runs for
real with tiny intervals."""

from __future__ import annotations

import asyncio
import random

import pytest

from orchestrator.routing.health import (
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    EndpointHealth,
    HealthSettings,
    check_forever,
    safe_reason,
)
from orchestrator.routing.retry import Failure, RetryPolicy, counts_against_endpoint, retryable


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def breaker(clock: FakeClock, **settings: float) -> CircuitBreaker:
    return CircuitBreaker(BreakerSettings(**settings), clock)  # type: ignore[arg-type]


def endpoint(clock: FakeClock, unhealthy_after: int = 3, healthy_after: int = 1, **breaker_settings: float
             ) -> EndpointHealth:
    settings = HealthSettings(interval=10, timeout=5, unhealthy_after=unhealthy_after, healthy_after=healthy_after)
    return EndpointHealth("replica-a", settings, BreakerSettings(**breaker_settings), clock)  # type: ignore[arg-type]


# The breaker.


def test_breaker_opens_after_exactly_the_threshold():
    b = breaker(FakeClock(), failure_threshold=3)
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED and b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN and not b.allow() and not b.available()


def test_a_success_in_between_resets_the_count():
    b = breaker(FakeClock(), failure_threshold=3)
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED
    b.record_failure()
    assert b.state is BreakerState.OPEN


def test_open_refuses_until_its_time_is_up_then_lets_exactly_the_half_open_requests_through():
    clock = FakeClock()
    b = breaker(clock, failure_threshold=1, open_seconds=30, half_open_requests=2)
    b.record_failure()
    assert b.opened_at == 1000.0 and b.retry_at == 1030.0
    clock.advance(29.9)
    assert b.state is BreakerState.OPEN and not b.allow()
    clock.advance(0.1)
    assert b.state is BreakerState.HALF_OPEN and b.retry_at is None
    assert [b.allow() for _ in range(4)] == [True, True, False, False]


def test_a_half_open_success_closes_it():
    clock = FakeClock()
    b = breaker(clock, failure_threshold=1, open_seconds=30)
    b.record_failure()
    clock.advance(30)
    assert b.allow()
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.allow() and b.allow()
    assert b.opened_at is None and b.retry_at is None and b.failures == 0


def test_a_failed_probe_reopens_for_twice_as_long_up_to_the_cap_and_a_success_resets_that():
    clock = FakeClock()
    b = breaker(clock, failure_threshold=1, open_seconds=30, max_open_seconds=100)
    b.record_failure()
    waits = []
    for _ in range(4):
        wait = b.retry_at - clock.now
        waits.append(wait)
        clock.advance(wait)
        assert b.allow()  # the probe
        b.record_failure()
        assert b.state is BreakerState.OPEN
    assert waits == [30, 60, 100, 100]
    assert b.retry_at - clock.now == 100
    clock.advance(100)
    assert b.allow()
    b.record_success()
    b.record_failure()  # a new story: the next opening is short again
    assert b.retry_at - clock.now == 30


def test_release_frees_a_half_open_slot():
    clock = FakeClock()
    b = breaker(clock, failure_threshold=1, open_seconds=30)
    b.record_failure()
    clock.advance(30)
    assert b.allow() and not b.allow()
    b.release()  # the probe's client left: it proved nothing
    assert b.state is BreakerState.HALF_OPEN and b.allow() and not b.allow()


def test_release_when_closed_is_harmless():
    b = breaker(FakeClock(), failure_threshold=2)
    b.release()
    b.record_failure()
    b.release()
    assert b.state is BreakerState.CLOSED and b.failures == 1 and b.allow()


def test_results_arriving_while_open_change_nothing():
    clock = FakeClock()
    b = breaker(clock, failure_threshold=1, open_seconds=30)
    b.record_failure()
    b.record_success()  # a request let through before it opened, finishing late
    assert b.state is BreakerState.OPEN
    b.record_failure()
    assert b.state is BreakerState.OPEN and b.retry_at == 1030.0


def test_transitions_are_counted():
    clock = FakeClock()
    b = breaker(clock, failure_threshold=1, open_seconds=10)
    assert b.transitions == {BreakerState.CLOSED: 0, BreakerState.OPEN: 0, BreakerState.HALF_OPEN: 0}
    b.record_failure()  # open
    clock.advance(10)
    assert b.allow()  # half-open
    b.record_failure()  # open again
    clock.advance(20)
    assert b.allow()  # half-open again
    b.record_success()  # closed
    assert b.transitions == {BreakerState.CLOSED: 1, BreakerState.OPEN: 2, BreakerState.HALF_OPEN: 2}


def test_bad_breaker_settings_are_refused():
    for bad in ({"failure_threshold": 0}, {"open_seconds": 0}, {"half_open_requests": 0},
                {"open_seconds": 60, "max_open_seconds": 30}):
        with pytest.raises(ValueError):
            BreakerSettings(**bad)  # type: ignore[arg-type]


# EndpointHealth.


def test_an_endpoint_starts_healthy_and_usable():
    e = endpoint(FakeClock())
    assert e.healthy and e.available() and e.usable()


def test_unhealthy_after_exactly_unhealthy_after_failed_checks_and_back_after_healthy_after_passes():
    e = endpoint(FakeClock(), unhealthy_after=3, healthy_after=2)
    e.check_failed("ConnectionRefusedError: nope")
    e.check_failed("ConnectionRefusedError: nope")
    assert e.healthy and e.usable()
    e.check_failed("ConnectionRefusedError: nope")
    assert not e.healthy and not e.available() and not e.usable()
    e.check_passed()
    assert not e.healthy
    e.check_passed()
    assert e.healthy and e.usable()


def test_a_pass_in_between_resets_the_failed_checks():
    e = endpoint(FakeClock(), unhealthy_after=2)
    e.check_failed("x")
    e.check_passed()
    e.check_failed("x")
    assert e.healthy
    e.check_failed("x")
    assert not e.healthy


def test_a_fail_while_coming_back_restarts_the_count():
    e = endpoint(FakeClock(), unhealthy_after=1, healthy_after=2)
    e.check_failed("x")
    e.check_passed()
    e.check_failed("x")
    e.check_passed()
    assert not e.healthy
    e.check_passed()
    assert e.healthy


def test_passive_failures_open_the_breaker_although_checks_pass():
    clock = FakeClock()
    e = endpoint(clock, failure_threshold=2, open_seconds=30)
    e.request_failed("UPSTREAM_5XX: 500")
    e.request_failed("UPSTREAM_5XX: 500")
    e.check_passed()
    assert e.healthy and not e.available() and not e.usable()
    assert e.describe()["breaker"] == "open"
    clock.advance(30)
    assert e.usable()
    e.request_succeeded()
    assert e.describe()["breaker"] == "closed" and e.usable()


def test_available_takes_no_half_open_slot_and_usable_does():
    clock = FakeClock()
    e = endpoint(clock, failure_threshold=1, open_seconds=30, half_open_requests=1)
    e.request_failed("ConnectError")
    clock.advance(30)
    for _ in range(5):
        assert e.available()  # reports and listings never eat the probe slot
    e.describe()
    assert e.usable()  # the router commits: the one slot is taken
    assert not e.available() and not e.usable()
    e.release()
    assert e.available() and e.usable()


def test_an_unhealthy_endpoint_takes_no_half_open_slot():
    clock = FakeClock()
    e = endpoint(clock, unhealthy_after=1, failure_threshold=1, open_seconds=30)
    e.request_failed("ConnectError")
    e.check_failed("ConnectError")
    clock.advance(30)
    assert not e.usable()
    e.check_passed()
    assert e.usable()  # the slot was still there


def test_describe_has_the_fields_and_no_secrets():
    clock = FakeClock()
    e = endpoint(clock, failure_threshold=1, open_seconds=30)
    e.check_failed("ClientResponseError: 401, headers: Authorization: Bearer sk-abcdefghijklmnop")
    e.request_failed("ClientError: https://admin:hunter2@peer.example/v1 key my-0123456789ab-"
                     "AAAAbbbbCCCCddddEEEEffff0123456789_-xyz")
    clock.advance(10)
    report = e.describe()
    fields = {"id", "healthy", "breaker", "consecutive_failures", "last_error", "last_check_at", "retry_at"}
    assert fields <= set(report)
    assert report["id"] == "replica-a" and report["healthy"] is True and report["breaker"] == "open"
    assert report["consecutive_failures"] == 1 and report["last_check_at"] == 1000.0
    assert report["retry_at"] == 1030.0 and report["retry_in"] == 20.0
    text = repr(report)
    for secret in ("hunter2", "AAAAbbbbCCCC", "sk-abcdefghijklmnop", "admin:"):
        assert secret not in text
    assert "peer.example" in text  # where it failed is still said


def test_reasons_are_redacted_and_cut():
    assert safe_reason("401: Authorization: Bearer abc.def") == "401: Authorization: [REDACTED]"
    assert safe_reason("GET https://u:p@host/v1") == "GET https://[REDACTED]@host/v1"
    assert "Zz9" not in safe_reason("bad key my-0123456789ab-Zz9Zz9Zz9Zz9Zz9Zz9Zz9Zz9")
    assert safe_reason("my-model is not loaded") == "my-model is not loaded"
    assert len(safe_reason("x" * 10_000)) <= 300


# check_forever: real time, tiny intervals.

FAST = HealthSettings(interval=0.05, timeout=0.05, unhealthy_after=1, healthy_after=1)


async def run_for(healths: dict[str, EndpointHealth], probe, seconds: float) -> None:
    task = asyncio.create_task(check_forever(healths, probe, FAST))
    await asyncio.sleep(seconds)
    assert not task.done()  # still looping
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def fast_endpoint(name: str) -> EndpointHealth:
    return EndpointHealth(name, FAST, BreakerSettings())


@pytest.mark.asyncio
async def test_a_hanging_probe_is_a_failed_check_and_the_loop_goes_on():
    healths = {name: fast_endpoint(name) for name in ("hangs", "fine")}
    probed: dict[str, int] = {"hangs": 0, "fine": 0}

    async def probe(endpoint_id: str) -> None:
        probed[endpoint_id] += 1
        if endpoint_id == "hangs":
            await asyncio.sleep(3600)

    await run_for(healths, probe, 0.4)
    assert probed["hangs"] >= 2 and probed["fine"] >= 2  # more than one round
    assert not healths["hangs"].healthy and healths["hangs"].last_error.startswith("TimeoutError")
    assert healths["fine"].healthy and healths["fine"].last_error is None


@pytest.mark.asyncio
async def test_a_raising_probe_is_a_failed_check_with_its_type():
    healths = {name: fast_endpoint(name) for name in ("raises", "fine")}
    rounds = 0

    async def probe(endpoint_id: str) -> None:
        nonlocal rounds
        if endpoint_id == "raises":
            rounds += 1
            raise ConnectionRefusedError(f"connect to peer failed, Authorization: Bearer tok{rounds}secret")

    await run_for(healths, probe, 0.25)
    assert rounds >= 2
    failed = healths["raises"]
    assert not failed.healthy and failed.last_error.startswith("ConnectionRefusedError: connect to peer failed")
    assert "secret" not in failed.last_error
    assert healths["fine"].healthy and healths["fine"].consecutive_passes >= 2


@pytest.mark.asyncio
async def test_a_probe_that_cancels_itself_does_not_end_the_loop():
    healths = {"odd": fast_endpoint("odd")}
    rounds = 0

    async def probe(endpoint_id: str) -> None:
        nonlocal rounds
        rounds += 1
        raise asyncio.CancelledError()  # e.g. a helper task of its own was cancelled

    await run_for(healths, probe, 0.25)
    assert rounds >= 2 and not healths["odd"].healthy and healths["odd"].last_error == "CancelledError"


@pytest.mark.asyncio
async def test_a_passing_probe_keeps_it_healthy_and_brings_one_back():
    health = fast_endpoint("flaky")
    health.check_failed("ConnectionRefusedError")
    assert not health.healthy

    async def probe(endpoint_id: str) -> None:
        await asyncio.sleep(0.001)

    await run_for({"flaky": health}, probe, 0.2)
    assert health.healthy and health.consecutive_passes >= 2 and health.last_check_at is not None


@pytest.mark.asyncio
async def test_cancelling_ends_it_cleanly_and_cancels_the_probes_in_flight():
    started = asyncio.Event()
    cancelled = asyncio.Event()
    slow = HealthSettings(interval=10, timeout=10)

    async def probe(endpoint_id: str) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    health = EndpointHealth("a", slow, BreakerSettings())
    task = asyncio.create_task(check_forever({"a": health}, probe, slow))
    await asyncio.wait_for(started.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled() and cancelled.is_set()
    assert health.healthy and health.last_check_at is None  # being stopped is not a failed check


@pytest.mark.asyncio
async def test_endpoints_added_while_running_are_checked():
    healths: dict[str, EndpointHealth] = {}
    seen: set[str] = set()

    async def probe(endpoint_id: str) -> None:
        seen.add(endpoint_id)

    task = asyncio.create_task(check_forever(healths, probe, FAST))
    await asyncio.sleep(0.02)  # an empty mapping is fine too
    healths["late"] = fast_endpoint("late")
    await asyncio.sleep(0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == {"late"}


# Retry.

RETRY_TABLE = [
    (Failure.CONNECT, None, True),
    (Failure.TIMEOUT_BEFORE_RESPONSE, None, True),
    (Failure.UPSTREAM_5XX, 502, True),
    (Failure.UPSTREAM_5XX, 503, True),  # with or without Retry-After: another replica may take it
    (Failure.UPSTREAM_5XX, 504, True),
    (Failure.UPSTREAM_5XX, 500, False),  # the model may have done the work
    (Failure.UPSTREAM_5XX, 501, False),
    (Failure.UPSTREAM_5XX, 505, False),
    (Failure.UPSTREAM_5XX, None, False),
    (Failure.UPSTREAM_4XX, 400, False),
    (Failure.UPSTREAM_4XX, 401, False),
    (Failure.UPSTREAM_4XX, 404, False),
    (Failure.UPSTREAM_4XX, 413, False),
    (Failure.UPSTREAM_4XX, 422, False),
    (Failure.UPSTREAM_4XX, 429, False),
    (Failure.CLIENT_GONE, None, False),
    (Failure.AFTER_FIRST_BYTE, 200, False),
    (Failure.AFTER_FIRST_BYTE, None, False),
]


@pytest.mark.parametrize(("failure", "status", "expected"), RETRY_TABLE)
def test_retryable_before_any_byte(failure: Failure, status: int | None, expected: bool):
    assert retryable(failure, status, bytes_sent_to_client=False) is expected


@pytest.mark.parametrize(("failure", "status", "expected"), RETRY_TABLE)
def test_never_retryable_once_a_byte_went_to_the_client(failure: Failure, status: int | None, expected: bool):
    assert retryable(failure, status, bytes_sent_to_client=True) is False


def test_the_table_covers_every_failure():
    assert {failure for failure, _, _ in RETRY_TABLE} == set(Failure)


@pytest.mark.parametrize(("failure", "status", "expected"), [
    (Failure.CONNECT, None, True),
    (Failure.TIMEOUT_BEFORE_RESPONSE, None, True),
    (Failure.UPSTREAM_5XX, 500, True),
    (Failure.UPSTREAM_5XX, 503, True),
    (Failure.UPSTREAM_5XX, 504, True),
    (Failure.UPSTREAM_4XX, 400, False),
    (Failure.UPSTREAM_4XX, 429, False),
    (Failure.CLIENT_GONE, None, False),
    (Failure.AFTER_FIRST_BYTE, None, True),
])
def test_counts_against_endpoint(failure: Failure, status: int | None, expected: bool):
    assert counts_against_endpoint(failure, status) is expected


def test_delay_stays_within_full_jitter_bounds():
    policy = RetryPolicy(attempts=5, backoff_base=0.05, backoff_max=1.0)
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(1.0, 0.05 * 2 ** (attempt - 1))
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # it does spread over the range
    assert policy.delay(0, rng) == 0.0
    assert 0.0 <= policy.delay(10_000, rng) <= 1.0  # no overflow however many tries
    assert 0.0 <= policy.delay(1) <= 0.05  # the module's random without an rng


def test_delay_is_deterministic_for_a_seed():
    policy = RetryPolicy()
    first = [policy.delay(n, random.Random(42)) for n in range(1, 6)]
    again = [policy.delay(n, random.Random(42)) for n in range(1, 6)]
    assert first == again
    rng_a, rng_b = random.Random(3), random.Random(3)
    assert [policy.delay(2, rng_a) for _ in range(5)] == [policy.delay(2, rng_b) for _ in range(5)]


def test_retry_policy_defaults_and_bad_settings():
    policy = RetryPolicy()
    assert policy.attempts == 2 and policy.backoff_base == 0.05 and policy.backoff_max == 1.0
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_base=-1)
