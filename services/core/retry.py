"""The one retry policy: how long to wait between attempts, when to give up, and the
``Retry-After`` a server asks for.

Every retry loop in crmsync is built here, on tenacity (pinned): its exponential
backoff with full jitter (``wait_random_exponential``: uniform in
``[0, min(max, initial * 2^(attempt - 1))]``) or without it (``wait_exponential``),
its stop conditions and its loop, sync and async. crmsync adds only what tenacity
does not know:

- **Retry-After.** A failure raised as ``RetryLater`` says how long the server asked
  to wait (a 429's or 503's ``Retry-After``, in seconds or as an HTTP date, or a
  vendor's own header): that wait replaces the backoff, capped at ``retry_after_cap_s``
  so that a misbehaving server cannot park a poll for a day.
- **Until stopped.** A service waiting for Kafka or its store retries until it is
  told to stop (``attempts=None``). Given a stop event, the wait between attempts
  ends the moment it is set, and the loop raises ``Stopped`` instead of starting
  another attempt.

A loop is ``for attempt in policy.retrying(...): with attempt: ...`` (or ``async for``
with ``retrying_async``); tenacity re-raises the last failure when the attempts run out
(``reraise``), so callers handle the same exceptions as without retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
    stop_never,
    wait_exponential,
    wait_random_exponential,
)
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

RETRY_AFTER_CAP_S: Final = 600.0
"""The longest a server's Retry-After is honoured for."""

RetryState = RetryCallState
"""What a ``before_sleep`` hook is given: read it with ``failure_of`` and ``next_wait_s``."""
BeforeSleep = Callable[[RetryState], None]


def failure_of(state: RetryState) -> BaseException | None:
    """The failure the loop is about to retry."""
    return state.outcome.exception() if state.outcome is not None else None


def next_wait_s(state: RetryState) -> float:
    """How long the loop waits before the next attempt."""
    return float(state.next_action.sleep) if state.next_action is not None else 0.0


def logged(logger: logging.Logger, what: str) -> BeforeSleep:
    """A ``before_sleep`` that warns "<what>, retrying in N s: <failure>"."""

    def before_sleep(state: RetryState) -> None:
        logger.warning("%s, retrying in %.1fs: %s", what, next_wait_s(state), failure_of(state))

    return before_sleep


class RetryLater(Exception):
    """A transient failure, with the wait the other side asked for (None: our backoff)."""

    def __init__(self, reason: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


def retry_after_seconds(
    value: str | None, *, now: datetime | None = None, cap_s: float = RETRY_AFTER_CAP_S
) -> float | None:
    """An HTTP ``Retry-After`` value in seconds: delay-seconds or an HTTP date (RFC 9110
    section 10.2.3), at most ``cap_s``; None when absent or unreadable. A date in the
    past is 0."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap_s)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    waited = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, waited), cap_s)


class _WaitAsAsked(wait_base):
    """The wait a ``RetryLater`` asked for (capped), else the backoff."""

    def __init__(self, backoff: wait_base, *, cap_s: float) -> None:
        self._backoff = backoff
        self._cap_s = cap_s

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        failure = outcome.exception() if outcome is not None else None
        if isinstance(failure, RetryLater) and failure.retry_after_s is not None:
            return min(max(0.0, failure.retry_after_s), self._cap_s)
        return float(self._backoff(retry_state))


class Stopped(Exception):
    """The stop event was set while the loop waited to try again."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a loop retries: waits from ``initial_s`` doubling to ``max_s`` (with full
    jitter unless ``jitter`` is off), at most ``attempts`` attempts and no new one
    after ``within_s`` seconds (both None: until stopped), a server's Retry-After
    honoured up to ``retry_after_cap_s``."""

    initial_s: float
    max_s: float
    attempts: int | None = None
    jitter: bool = True
    retry_after_cap_s: float = RETRY_AFTER_CAP_S
    within_s: float | None = None

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s <= 0:
            raise ValueError(f"waits must be positive, got {self.initial_s} and {self.max_s}")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.within_s is not None and self.within_s < 0:
            raise ValueError(f"within_s must not be negative, got {self.within_s}")

    def with_time(self, within_s: float) -> RetryPolicy:
        """This policy, with no attempt started after ``within_s`` seconds."""
        return dataclasses.replace(self, within_s=within_s)

    def wait(self) -> wait_base:
        backoff: wait_base = (
            wait_random_exponential(multiplier=self.initial_s, max=self.max_s)
            if self.jitter
            else wait_exponential(multiplier=self.initial_s, max=self.max_s)
        )
        return _WaitAsAsked(backoff, cap_s=self.retry_after_cap_s)

    def _stop(self) -> stop_base:
        stops: list[stop_base] = []
        if self.attempts is not None:
            stops.append(stop_after_attempt(self.attempts))
        if self.within_s is not None:
            stops.append(stop_after_delay(self.within_s))
        return stop_any(*stops) if stops else stop_never

    def _options(
        self,
        on: type[BaseException] | tuple[type[BaseException], ...],
        when: Callable[[BaseException], bool] | None,
        before_sleep: BeforeSleep | None,
    ) -> dict[str, Any]:
        """What the sync and the async loop share: stop, wait, what is retried."""
        retry: retry_base = retry_if_exception_type(on)
        if when is not None:
            retry = retry & retry_if_exception(when)
        return {
            "stop": self._stop(),
            "wait": self.wait(),
            "retry": retry,
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def retrying(
        self,
        *,
        on: type[BaseException] | tuple[type[BaseException], ...] = RetryLater,
        when: Callable[[BaseException], bool] | None = None,
        stop: threading.Event | None = None,
        sleep: Callable[[float], object] | None = None,
        before_sleep: BeforeSleep | None = None,
    ) -> Retrying:
        """A blocking retry loop over failures of the types in ``on`` (those ``when``
        says may pass, when given); ``sleep`` is for tests that do not want to wait."""

        def wait_or_stop(seconds: float) -> None:
            if sleep is not None:
                sleep(seconds)
            elif stop is None:
                time.sleep(seconds)
            elif stop.is_set() or stop.wait(seconds):
                raise Stopped

        return Retrying(sleep=wait_or_stop, **self._options(on, when, before_sleep))

    def retrying_async(
        self,
        *,
        on: type[BaseException] | tuple[type[BaseException], ...] = RetryLater,
        when: Callable[[BaseException], bool] | None = None,
        stop: asyncio.Event | None = None,
        sleep: Callable[[float], object] | None = None,
        before_sleep: BeforeSleep | None = None,
    ) -> AsyncRetrying:
        """An asyncio retry loop over failures of the types in ``on`` (those ``when``
        says may pass, when given); ``sleep`` is for tests that do not want to wait."""

        async def wait_or_stop(seconds: float) -> None:
            if sleep is not None:
                result = sleep(seconds)
                if asyncio.iscoroutine(result):
                    await result
            elif stop is None:
                await asyncio.sleep(seconds)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=seconds)
            if stop is not None and stop.is_set():
                raise Stopped

        return AsyncRetrying(sleep=wait_or_stop, **self._options(on, when, before_sleep))


class Backoff:
    """The policy's waits for a loop that keeps its own shape: one that polls, pauses
    or reads again between tries instead of calling one function again (the writer
    waiting for its store, the mapper after an aborted transaction, a worker that
    keeps dying). ``next_wait_s`` is the wait after one more consecutive failure,
    ``reset`` starts over after a success. Attempts are the loop's business."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._wait = policy.wait()
        self._retrying = policy.retrying()
        self.failures = 0

    def next_wait_s(self, failure: BaseException | None = None) -> float:
        """The wait after this failure (a RetryLater's asked-for wait is honoured)."""
        self.failures += 1
        state = RetryCallState(retry_object=self._retrying, fn=None, args=(), kwargs={})
        state.attempt_number = self.failures
        if failure is not None:
            state.set_exception((type(failure), failure, failure.__traceback__))
        return float(self._wait(state))

    def reset(self) -> None:
        self.failures = 0


__all__ = [
    "RETRY_AFTER_CAP_S",
    "Backoff",
    "BeforeSleep",
    "RetryLater",
    "RetryPolicy",
    "RetryState",
    "Stopped",
    "failure_of",
    "logged",
    "next_wait_s",
    "retry_after_seconds",
]
