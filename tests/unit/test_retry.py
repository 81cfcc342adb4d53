"""The one retry policy (services/core/retry.py): backoff bounds with and without
jitter, caps, Retry-After in both its forms, giving up, and stopping."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from services.core.retry import (
    RETRY_AFTER_CAP_S,
    Backoff,
    RetryLater,
    RetryPolicy,
    Stopped,
    logged,
    retry_after_seconds,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


class Flaky:
    """Fails ``failures`` times with ``error``, then answers "ok"; counts its calls."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or RetryLater("busy")
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def run_sync(policy: RetryPolicy, work: Flaky, **options: object) -> tuple[str, list[float]]:
    """Run ``work`` under ``policy`` without really waiting; the waits it asked for."""
    waits: list[float] = []
    for attempt in policy.retrying(sleep=waits.append, **options):  # type: ignore[arg-type]
        with attempt:
            return work(), waits
    raise AssertionError("unreachable")


# --- backoff --------------------------------------------------------------------------


def test_full_jitter_stays_within_the_doubling_ceiling_and_the_cap() -> None:
    policy = RetryPolicy(initial_s=0.5, max_s=4.0, attempts=8)
    for _ in range(50):
        _result, waits = run_sync(policy, Flaky(7))
        ceilings = [min(4.0, 0.5 * 2**n) for n in range(7)]
        assert len(waits) == 7
        assert all(0 <= w <= c for w, c in zip(waits, ceilings, strict=True))


def test_jitter_spreads_the_waits() -> None:
    policy = RetryPolicy(initial_s=1.0, max_s=1.0, attempts=2)
    waits = {run_sync(policy, Flaky(1))[1][0] for _ in range(30)}
    assert len(waits) > 20  # not one fixed value


def test_without_jitter_the_wait_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_s=0.5, max_s=3.0, attempts=7, jitter=False)
    assert run_sync(policy, Flaky(6)) == ("ok", [0.5, 1.0, 2.0, 3.0, 3.0, 3.0])


def test_a_policy_refuses_waits_that_are_not_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RetryPolicy(initial_s=0, max_s=1)
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(initial_s=1, max_s=1, attempts=0)


# --- Retry-After ----------------------------------------------------------------------


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    assert retry_after_seconds("7", now=NOW) == 7.0
    assert retry_after_seconds(" 12 ", now=NOW) == 12.0
    assert retry_after_seconds(format_datetime(NOW + timedelta(seconds=30)), now=NOW) == 30.0
    assert retry_after_seconds("Mon, 23 Nov 2026 10:01:00 GMT", now=NOW) == 60.0


def test_retry_after_in_the_past_is_now_and_a_huge_one_is_capped() -> None:
    assert retry_after_seconds(format_datetime(NOW - timedelta(seconds=30)), now=NOW) == 0.0
    assert retry_after_seconds("99999", now=NOW) == RETRY_AFTER_CAP_S
    assert retry_after_seconds("99999", now=NOW, cap_s=60.0) == 60.0


@pytest.mark.parametrize("value", [None, "", "  ", "soon", "-5", "1.5", "Mon, 99 Foo 2026"])
def test_retry_after_that_cannot_be_read_is_none(value: str | None) -> None:
    assert retry_after_seconds(value, now=NOW) is None


def test_the_wait_a_failure_asks_for_replaces_the_backoff() -> None:
    policy = RetryPolicy(initial_s=0.5, max_s=4.0, attempts=3)
    asked = Flaky(2, RetryLater("throttled", retry_after_s=9.0))
    assert run_sync(policy, asked) == ("ok", [9.0, 9.0])


def test_the_wait_a_failure_asks_for_is_capped() -> None:
    policy = RetryPolicy(initial_s=0.5, max_s=4.0, attempts=2, retry_after_cap_s=30.0)
    asked = Flaky(1, RetryLater("throttled", retry_after_s=3600.0))
    assert run_sync(policy, asked) == ("ok", [30.0])


# --- giving up ------------------------------------------------------------------------


def test_after_the_last_attempt_the_last_failure_is_raised() -> None:
    policy = RetryPolicy(initial_s=0.1, max_s=1.0, attempts=3)
    work = Flaky(5, RetryLater("http 503"))
    with pytest.raises(RetryLater, match="http 503"):
        run_sync(policy, work)
    assert work.calls == 3


def test_only_the_failures_named_are_retried() -> None:
    policy = RetryPolicy(initial_s=0.1, max_s=1.0, attempts=5)
    work = Flaky(1, KeyError("not transient"))
    with pytest.raises(KeyError):
        run_sync(policy, work)
    assert work.calls == 1
    assert run_sync(policy, Flaky(2, KeyError("now transient")), on=KeyError)[0] == "ok"


def test_only_the_failures_when_says_may_pass_are_retried() -> None:
    policy = RetryPolicy(initial_s=0.1, max_s=1.0, attempts=5)

    def passing(failure: BaseException) -> bool:
        return "busy" in str(failure)

    assert run_sync(policy, Flaky(2, KeyError("busy")), on=KeyError, when=passing)[0] == "ok"
    work = Flaky(2, KeyError("gone"))
    with pytest.raises(KeyError, match="gone"):
        run_sync(policy, work, on=KeyError, when=passing)
    assert work.calls == 1


def test_no_attempt_starts_after_the_time_allowed() -> None:
    policy = RetryPolicy(initial_s=0.05, max_s=0.05, jitter=False, within_s=0.3)
    work = Flaky(1000)
    started = datetime.now(UTC)
    with pytest.raises(RetryLater):
        for attempt in policy.retrying():
            with attempt:
                work()
    took = (datetime.now(UTC) - started).total_seconds()
    assert 0.3 <= took < 2
    assert 3 <= work.calls <= 8
    with pytest.raises(ValueError, match="within_s"):
        RetryPolicy(initial_s=1, max_s=1, within_s=-1)


def test_without_a_limit_it_retries_until_it_succeeds() -> None:
    policy = RetryPolicy(initial_s=0.01, max_s=0.02)
    work = Flaky(40)
    assert run_sync(policy, work)[0] == "ok"
    assert work.calls == 41


# --- stopping -------------------------------------------------------------------------


def test_a_stop_ends_the_wait_at_once_and_no_attempt_follows() -> None:
    stop = threading.Event()
    work = Flaky(1000)
    threading.Timer(0.2, stop.set).start()
    started = datetime.now(UTC)
    with pytest.raises(Stopped):
        for attempt in RetryPolicy(initial_s=60, max_s=60, jitter=False).retrying(stop=stop):
            with attempt:
                work()
    assert work.calls == 1
    assert (datetime.now(UTC) - started).total_seconds() < 5


def test_a_loop_stopped_before_it_fails_raises_stopped_without_waiting() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        for attempt in RetryPolicy(initial_s=60, max_s=60).retrying(stop=stop):
            with attempt:
                raise RetryLater("down")


@pytest.mark.asyncio
async def test_async_retries_with_the_same_policy() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    work = Flaky(2, RetryLater("throttled", retry_after_s=2.0))
    policy = RetryPolicy(initial_s=0.5, max_s=4.0, attempts=3)
    async for attempt in policy.retrying_async(sleep=sleep):
        with attempt:
            result = work()
    assert (result, waits) == ("ok", [2.0, 2.0])


@pytest.mark.asyncio
async def test_async_stop_ends_the_wait_at_once() -> None:
    stop = asyncio.Event()
    work = Flaky(1000)
    asyncio.get_running_loop().call_later(0.2, stop.set)
    with pytest.raises(Stopped):
        async for attempt in RetryPolicy(initial_s=60, max_s=60).retrying_async(stop=stop):
            with attempt:
                work()
    assert work.calls == 1


@pytest.mark.asyncio
async def test_async_cancellation_during_the_wait_cancels_the_loop() -> None:
    work = Flaky(1000)

    async def loop() -> None:
        async for attempt in RetryPolicy(initial_s=60, max_s=60).retrying_async():
            with attempt:
                work()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert work.calls == 1


# --- loops of their own shape ----------------------------------------------------------


def test_backoff_gives_the_policys_waits_for_consecutive_failures() -> None:
    backoff = Backoff(RetryPolicy(initial_s=0.5, max_s=3.0, jitter=False))
    assert [backoff.next_wait_s() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.failures == 5
    backoff.reset()
    assert backoff.next_wait_s() == 0.5


def test_backoff_jitters_within_the_ceiling_and_honours_a_wait_asked_for() -> None:
    backoff = Backoff(RetryPolicy(initial_s=1.0, max_s=4.0, retry_after_cap_s=10.0))
    waits = [backoff.next_wait_s(RuntimeError("down")) for _ in range(6)]
    assert all(0 <= w <= min(4.0, 2**n) for n, w in enumerate(waits))
    assert backoff.next_wait_s(RetryLater("busy", retry_after_s=7.0)) == 7.0
    assert backoff.next_wait_s(RetryLater("busy", retry_after_s=70.0)) == 10.0


def test_a_logged_retry_says_what_failed_and_how_long_it_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = RetryPolicy(initial_s=2.0, max_s=2.0, attempts=2, jitter=False)
    logger = logging.getLogger("test.retry")
    with caplog.at_level(logging.WARNING, logger="test.retry"):
        run_sync(policy, Flaky(1, RetryLater("http 503")), before_sleep=logged(logger, "CDP"))
    assert caplog.messages == ["CDP, retrying in 2.0s: http 503"]
