"""One channel's deliveries: its backlog of notices and the task that sends them.

Every channel has its own ``Outbox``, so a channel that is down or slow holds back
only its own messages. The task takes the oldest notice and:

1. sends it, retrying what may pass (``RetryLater``) with the one retry policy
   (services/core/retry.py): exponential backoff with jitter, a server's Retry-After
   honoured, at most ``max_attempts`` tries;
2. counts the outcome: ``sent``; ``refused`` (the channel said never, not retried);
   ``gave_up`` (every try failed, or the notifier closed meanwhile); ``failed`` (an
   unexpected error, logged with its traceback);
3. takes the next one.

The backlog is bounded: when it is full, the oldest notice makes room for the new one
and is counted ``dropped``, so a channel down for hours keeps the latest news.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from services.core.retry import (
    RetryLater,
    RetryPolicy,
    RetryState,
    Stopped,
    failure_of,
    next_wait_s,
)
from services.notify import metrics
from services.notify.channels import Channel, ChannelRefused
from services.notify.incidents import Notice

log = logging.getLogger(__name__)

Sleep = Callable[[float], object]


class Outbox:
    def __init__(
        self,
        channel: Channel,
        *,
        policy: RetryPolicy,
        capacity: int,
        sleep: Sleep | None = None,
    ) -> None:
        self.channel = channel
        self._policy = policy
        self._sleep = sleep
        self._backlog: deque[Notice] = deque()
        self._capacity = capacity
        self._waiting = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop = asyncio.Event()

    def put(self, notice: Notice) -> None:
        if len(self._backlog) >= self._capacity:
            self._backlog.popleft()
            metrics.NOTIFICATIONS_SENT.labels(self.channel.name, metrics.DROPPED).inc()
            log.warning("notification backlog full, oldest dropped channel=%s", self.channel.name)
        self._backlog.append(notice)
        self._idle.clear()
        self._waiting.set()

    async def run(self) -> None:
        """Send until stopped; ends by itself once ``stop`` is called."""
        while True:
            await self._waiting.wait()
            while self._backlog and not self._stop.is_set():
                # Step 3: the oldest first.
                await self._deliver(self._backlog.popleft())
            if self._stop.is_set():
                return
            self._waiting.clear()
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Whether the backlog emptied within ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return self._idle.is_set()

    def abandon(self) -> None:
        """Count what is still waiting as given up (the notifier is closing)."""
        while self._backlog:
            self._backlog.popleft()
            metrics.NOTIFICATIONS_SENT.labels(self.channel.name, metrics.GAVE_UP).inc()

    def stop(self) -> None:
        """End the wait between tries at once (the notice in hand is given up) and
        the task with it."""
        self._stop.set()
        self._waiting.set()

    async def _deliver(self, notice: Notice) -> None:
        name = self.channel.name
        try:
            # Step 1
            async for attempt in self._policy.retrying_async(
                stop=self._stop, sleep=self._sleep, before_sleep=self._log_retry
            ):
                with attempt:
                    await self.channel.send(notice)
            outcome = metrics.SENT
            log.info("notification sent channel=%s entries=%s", name, len(notice.entries))
        except ChannelRefused as exc:
            outcome = metrics.REFUSED
            log.error("notification refused channel=%s reason=%s", name, exc.reason)
        except RetryLater as exc:
            outcome = metrics.GAVE_UP
            log.error("notification given up channel=%s last_failure=%s", name, exc.reason)
        except Stopped:
            outcome = metrics.GAVE_UP
            log.warning("notification given up, the notifier is closing channel=%s", name)
        except Exception:
            # A channel's bug must not end the deliveries of every later notice, nor
            # take the service that notifies down: it is logged loudly and counted.
            outcome = metrics.FAILED
            log.exception("notification failed channel=%s", name)
        # Step 2
        metrics.NOTIFICATIONS_SENT.labels(name, outcome).inc()

    def _log_retry(self, state: RetryState) -> None:
        log.warning(
            "notification not delivered channel=%s attempt=%s retry_in=%.1fs reason=%s",
            self.channel.name,
            state.attempt_number,
            next_wait_s(state),
            failure_of(state),
        )
