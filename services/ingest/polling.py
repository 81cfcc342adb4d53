"""Scheduled polls: what changed in a CRM since the watermark, into the changes topic.

One ``Poller`` per source with a ``poll`` section. Each run:

1. reads the saved ``PollState``; a source never polled starts at ``start_from``, or
   (by default) just records "now" as its watermark, since backfilling is a full
   sync's job;
2. asks the connector for every record modified since ``watermark - overlap``
   (the overlap catches changes the CRM committed late or stamped with a skewed
   clock), resuming inside an unfinished poll when a cursor was saved;
3. for each page: drops changes already delivered inside the overlap window (the
   saved ``boundary``), publishes the rest durably, then saves the page's checkpoint
   (watermark, cursor, boundary), so a restart continues with no gap and nothing
   published twice;
4. at the end clears the cursor and records the success.

A failure (CRM unreachable after retries, Kafka unavailable, a refused request) is
counted, saved with its reason and shown in status; the poller carries on at the
next scheduled time and never takes the service down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from croniter import croniter

from services.core import metrics
from services.core.api_client import ApiClient, ApiError
from services.core.codecs import Codec
from services.core.contracts import ContactChange, Origin, RejectedEvent
from services.core.sources.common import PollSettings
from services.ingest.connectors.base import Checkpoint, PullConnector, Stamp
from services.ingest.publisher import BrokerUnavailable, KafkaPublisher, OutgoingMessage
from services.ingest.state import PollState, StateStore

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def version_tag(change: ContactChange) -> str:
    """Identifies one version of one record, for the overlap window's boundary set."""
    return f"{change.record_id}@{int(change.source_modified_at.timestamp() * 1_000_000)}"


class Poller:
    def __init__(
        self,
        *,
        source: str,
        settings: PollSettings,
        connector: PullConnector,
        api: ApiClient,
        publisher: KafkaPublisher,
        store: StateStore,
        changes: Codec[ContactChange],
        rejected: Codec[RejectedEvent],
        changes_topic: str,
        rejected_topic: str,
        clock: Clock = utc_now,
    ) -> None:
        self.source = source
        self._settings = settings
        self._connector = connector
        self._api = api
        self._publisher = publisher
        self._store = store
        self._changes = changes
        self._rejected = rejected
        self._topic = changes_topic
        self._rejected_topic = rejected_topic
        self._clock = clock
        self._overlap = timedelta(seconds=settings.overlap_seconds)

    def next_run(self, after: datetime) -> datetime:
        """The next scheduled start after ``after`` (PollSettings has exactly one kind)."""
        cron = self._settings.cron
        if cron is None:
            return after + timedelta(seconds=self._settings.interval_seconds or 60)
        next_time: datetime = croniter(cron, after).get_next(datetime)
        return next_time

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Poll on schedule until ``stop``; the first poll runs at once."""
        while not stop.is_set():
            started = self._clock()
            await self.run_once()
            delay = (self.next_run(started) - self._clock()).total_seconds()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, delay))

    async def run_once(self) -> bool:
        """One poll; True when it completed. Never raises for CRM or Kafka trouble."""
        # Step 1
        state = self._store.poll(self.source) or PollState()
        now = self._clock()
        state = replace(state, last_attempt_at=now)
        try:
            if state.watermark is None and self._settings.start_from is None:
                await self._save(replace(state, watermark=now, last_success_at=now))
                log.info("first poll source=%s: watermark set to now", self.source)
                return True
            state = await self._pull(state)
            # Step 4
            await self._save(
                replace(
                    state,
                    cursor=None,
                    last_success_at=self._clock(),
                    last_error=None,
                    consecutive_failures=0,
                )
            )
        except (ApiError, BrokerUnavailable) as exc:
            await self._record_failure(state, exc)
            return False
        except Exception as exc:
            # A bug (in a connector, say): loud in the log and in the status, but the
            # poller keeps its schedule instead of dying silently in the background.
            log.exception("poll crashed source=%s", self.source)
            await self._record_failure(state, exc)
            return False
        metrics.POLLS.labels(self.source, "ok").inc()
        metrics.POLL_FAILURES_IN_A_ROW.labels(self.source).set(0)
        metrics.LAST_SUCCESSFUL_POLL.labels(self.source).set(self._clock().timestamp())
        return True

    async def _pull(self, state: PollState) -> PollState:
        # Step 2
        start = state.watermark or self._settings.start_from
        since = start - self._overlap if start is not None else None
        resume = Checkpoint(state.watermark, state.cursor) if state.cursor else None
        boundary = set(state.boundary)
        pages = self._connector.pages(
            self._api, since=since, resume=resume, stamp=Stamp(Origin.POLL)
        )
        async for page in pages:
            # Step 3
            fresh = [c for c in page.changes if version_tag(c) not in boundary]
            await self._publisher.publish(
                [OutgoingMessage(self._topic, c.key, self._changes.encode(c)) for c in fresh]
                + [
                    OutgoingMessage(self._rejected_topic, r.key or b"", self._rejected.encode(r))
                    for r in page.rejected
                ]
            )
            metrics.EVENTS_RECEIVED.labels(self.source, "POLL").inc(len(fresh))
            watermark = _latest(state.watermark, page.checkpoint.watermark)
            boundary.update(version_tag(c) for c in fresh)
            state = replace(
                state,
                watermark=watermark,
                cursor=page.checkpoint.cursor,
                boundary=self._within_overlap(boundary, watermark),
                changes_delivered=state.changes_delivered + len(fresh),
            )
            boundary = set(state.boundary)
            await self._save(state)
        return state

    def _within_overlap(self, boundary: set[str], watermark: datetime | None) -> tuple[str, ...]:
        """Keep only versions the next poll's overlap window can read again."""
        if watermark is None:
            return tuple(sorted(boundary))
        oldest = int((watermark - self._overlap).timestamp() * 1_000_000)
        kept = [tag for tag in boundary if int(tag.rsplit("@", 1)[1]) >= oldest]
        return tuple(sorted(kept))

    async def _record_failure(self, state: PollState, exc: Exception) -> None:
        failures = state.consecutive_failures + 1
        log.warning("poll failed source=%s failures=%s reason=%s", self.source, failures, exc)
        metrics.POLLS.labels(self.source, "failed").inc()
        metrics.POLL_FAILURES_IN_A_ROW.labels(self.source).set(failures)
        with contextlib.suppress(BrokerUnavailable):
            # Saving the failure needs Kafka too; when Kafka is the failure, the
            # next successful save records the state anyway.
            await self._save(
                replace(state, last_error=str(exc)[:500], consecutive_failures=failures)
            )

    async def _save(self, state: PollState) -> None:
        await self._store.save_poll(self.source, state)


def _latest(current: datetime | None, candidate: datetime | None) -> datetime | None:
    """Watermarks never move back."""
    if current is None:
        return candidate
    if candidate is None:
        return current
    return max(current, candidate)
