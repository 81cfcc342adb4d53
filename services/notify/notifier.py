"""The notifier: what the rest of crmsync calls to tell operators about incidents.

``notify(incident)`` and ``resolve(kind, subject)`` only put into a bounded queue:
they never wait and never raise, whatever the channels are doing. When the queue is
full the oldest waiting item is dropped and counted
(``crmsync_notifications_dropped_total``). From a thread outside the event loop,
call ``notify_threadsafe`` and ``resolve_threadsafe``.

A collector task turns the queue into messages:

1. it waits for an item that is news (services/notify/digest.py: not an incident
   still in its cooldown);
2. it gathers whatever arrives within ``group_seconds`` of that into the same group;
3. it takes the group and splits it by route (services/notify/routing.py), one notice
   per channel, into each channel's outbox (services/notify/delivery.py), whose own
   task sends and retries it. A channel that is down delays nobody else.

``close`` flushes the open group and gives the outboxes a moment to empty.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Final

from services.core.retry import RetryPolicy
from services.notify import metrics
from services.notify.channels import Channel, build_channel
from services.notify.delivery import Outbox, Sleep
from services.notify.digest import Clock, Digest
from services.notify.incidents import Incident, IncidentKind, Notice, Resolution
from services.notify.routing import Router
from services.notify.settings import NotificationSettings

log = logging.getLogger(__name__)

Item = Incident | Resolution
STOP_GRACE_S: Final = 0.5
"""How long ``close`` lets an attempt in flight finish once the outboxes are drained."""


class Notifier:
    def __init__(
        self,
        settings: NotificationSettings,
        *,
        clock: Clock = time.monotonic,
        retry_sleep: Sleep | None = None,
        channels: Mapping[str, Channel] | None = None,
    ) -> None:
        """``clock`` times the cooldowns; ``retry_sleep`` replaces the wait between
        tries (tests); ``channels`` replaces the ones built from the settings."""
        self._settings = settings
        self._queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=settings.queue_size)
        self._digest = Digest(
            cooldown_s=settings.cooldown_seconds,
            send_resolved=settings.send_resolved,
            clock=clock,
        )
        self._router = Router(settings)
        self._policy = RetryPolicy(
            initial_s=settings.backoff_initial_seconds,
            max_s=settings.backoff_max_seconds,
            attempts=settings.max_attempts,
        )
        self._retry_sleep = retry_sleep
        self._given_channels = channels
        self._outboxes: dict[str, Outbox] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._collector: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def enabled(self) -> bool:
        return bool(self._settings.channels) and not self._closed

    async def start(self) -> None:
        """Build the channels (resolving their secrets: a missing one raises
        MissingSecretError, as at any service's start) and start sending."""
        self._loop = asyncio.get_running_loop()
        channels = await self._build_channels()
        for channel in channels:
            outbox = Outbox(
                channel,
                policy=self._policy,
                capacity=self._settings.channel_backlog,
                sleep=self._retry_sleep,
            )
            self._outboxes[channel.name] = outbox
            self._tasks.append(asyncio.create_task(outbox.run(), name=f"notify-{channel.name}"))
        if channels:
            self._collector = asyncio.create_task(self._collect(), name="notify-collector")

    async def _build_channels(self) -> list[Channel]:
        if self._given_channels is not None:
            return [self._given_channels[name] for name in self._settings.channels]
        built: list[Channel] = []
        try:
            for name, channel_settings in self._settings.channels.items():
                built.append(build_channel(name, channel_settings))
        except BaseException:
            for channel in built:
                await channel.close()
            raise
        return built

    def notify(self, incident: Incident) -> None:
        """Queue an incident; returns at once and never raises."""
        self._put(incident)

    def resolve(self, kind: IncidentKind, subject: str) -> None:
        """Queue the end of an incident; returns at once and never raises."""
        self._put(Resolution(kind, subject))

    def notify_threadsafe(self, incident: Incident) -> None:
        """``notify`` from a thread that is not the notifier's event loop."""
        self._put_threadsafe(incident)

    def resolve_threadsafe(self, kind: IncidentKind, subject: str) -> None:
        """``resolve`` from a thread that is not the notifier's event loop."""
        self._put_threadsafe(Resolution(kind, subject))

    async def close(self, *, timeout_s: float = 5.0) -> None:
        """Send what is waiting, for at most ``timeout_s``, then stop.

        1. Stop taking items; the collector ends.
        2. Everything still queued joins the open group, which goes out at once.
        3. The outboxes have ``timeout_s`` to empty, then stop; whatever is left is
           counted ``gave_up``.
        """
        if self._closed:
            return
        self._closed = True
        if not self._outboxes:  # never started, or nothing to send to
            return
        # Step 1
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        # Step 2
        while not self._queue.empty():
            self._admit(self._queue.get_nowait())
        self._dispatch()
        # Step 3
        await self._stop_outboxes(timeout_s)

    async def _stop_outboxes(self, timeout_s: float) -> None:
        drained = await asyncio.gather(*(o.drain(timeout_s) for o in self._outboxes.values()))
        if not all(drained):
            log.warning("notifier closed before every channel took its messages")
        for outbox in self._outboxes.values():
            outbox.stop()
        # An attempt in flight may take its whole timeout: it is cut short.
        _, in_flight = await asyncio.wait(self._tasks, timeout=STOP_GRACE_S)
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for outbox in self._outboxes.values():
            outbox.abandon()
            await outbox.channel.close()

    async def __aenter__(self) -> Notifier:
        await self.start()
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _put(self, item: Item) -> None:
        if not self.enabled:
            return
        if self._queue.full():
            self._queue.get_nowait()
            metrics.NOTIFICATIONS_DROPPED.inc()
        self._queue.put_nowait(item)

    def _put_threadsafe(self, item: Item) -> None:
        loop = self._loop
        if not self.enabled:
            return
        if loop is None or loop.is_closed():
            metrics.NOTIFICATIONS_DROPPED.inc()
            return
        try:
            loop.call_soon_threadsafe(self._put, item)
        except RuntimeError:  # the loop closed meanwhile
            metrics.NOTIFICATIONS_DROPPED.inc()

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Step 1
            if not self._admit(await self._queue.get()):
                continue
            # Step 2
            deadline = loop.time() + self._settings.group_seconds
            while (left := deadline - loop.time()) > 0:
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a
                    # cancellation that lands as an item arrives.
                    async with asyncio.timeout(left):
                        item = await self._queue.get()
                except TimeoutError:
                    break
                self._admit(item)
            # Step 3
            self._dispatch()

    def _admit(self, item: Item) -> bool:
        """Whether the open group now holds something to tell."""
        if isinstance(item, Incident):
            self._digest.offer(item)
        else:
            self._digest.resolve(item)
        return self._digest.pending

    def _dispatch(self) -> None:
        entries = self._digest.take()
        if not entries:
            return
        for channel, share in self._router.split(entries).items():
            notice = Notice(
                id=f"msg_{uuid.uuid4().hex}", instance=self._settings.instance, entries=share
            )
            self._outboxes[channel].put(notice)
