"""Full syncs: every record of a source into the fullsync topic, inside the barrier.

A ``FullSyncRun`` is one full sync of one source, from the CRM's API or a CSV file
(any stream of ``PullPage``s). Its protocol with the mapper:

1. Save the RUNNING state, then write SyncControl STARTED to the barrier topic: from
   here the mapper holds the source's real-time changes.
2. Fetch pages one ahead of publishing (fetching page N+1 overlaps writing page N).
   Each page's records go durably to the fullsync topic, marked with the sync id;
   its rejected rows go to the rejected topic. Then progress is saved: records,
   cursor, and per partition the offset after this sync's last record.
3. A cancel request stops the run between pages: CANCELLED on the barrier releases
   the held changes.
4. After the last page: COMPLETED on the barrier, carrying the end offsets the mapper
   must have consumed before it lifts the barrier, and the record count.
5. A failure (the CRM unreachable after retries, Kafka unavailable) writes FAILED,
   which also releases the held changes. A run is never reported COMPLETED unless
   every record was acknowledged by Kafka.

A run that stops without reaching 3-5 (the process ended) stays RUNNING in the state;
``FullSyncs.recover`` resumes it from its cursor, or fails it if it cannot resume.

A full sync's whole life (start, pages, progress, the barrier's controls, cancel, resume
after a restart) in one module, since each step's guarantee depends on the others; hence
over 400 lines.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final

from services.core import metrics
from services.core.api_client import ApiError
from services.core.codecs import Codec
from services.core.contracts import (
    ContactChange,
    ControlKind,
    PartitionOffset,
    RejectedEvent,
    SyncControl,
)
from services.ingest.connectors.base import PullPage
from services.ingest.publisher import BrokerUnavailable, KafkaPublisher, OutgoingMessage
from services.ingest.state import FullSyncState, StateStore, SyncStatus

log = logging.getLogger(__name__)

INGEST_OWNER: Final = "ingest"
PREFETCH_PAGES: Final = 2
PUBLISH_WINDOW: Final = 4
SAVE_INTERVAL_S: Final = 1.0
END_CONTROLS: Final = {
    SyncStatus.COMPLETED: ControlKind.COMPLETED,
    SyncStatus.CANCELLED: ControlKind.CANCELLED,
    SyncStatus.FAILED: ControlKind.FAILED,
}


class SourceFailure(Exception):
    """The pages could not be read for a reason that is not the CRM's or Kafka's."""


@dataclass(frozen=True)
class _Failed:
    """A fetch failure, handed to the writer so it surfaces in the run."""

    error: ApiError | BrokerUnavailable | SourceFailure


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_sync_id(source: str, at: datetime) -> str:
    return f"{source}-{at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def cli_owner() -> str:
    return f"cli:{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Topics:
    fullsync: str
    barrier: str
    rejected: str


@dataclass(frozen=True)
class Codecs:
    changes: Codec[ContactChange]
    controls: Codec[SyncControl]
    rejected: Codec[RejectedEvent]


@dataclass(frozen=True)
class Progress:
    """What an operator wants to know about a run, derived from its state."""

    state: FullSyncState
    rate_per_s: float | None
    eta_seconds: float | None

    @classmethod
    def of(cls, state: FullSyncState) -> Progress:
        elapsed = (state.updated_at - state.started_at).total_seconds()
        rate = state.records_done / elapsed if elapsed > 0 and state.records_done else None
        eta = None
        if rate and state.records_total is not None and state.running:
            eta = max(0.0, (state.records_total - state.records_done) / rate)
        return cls(state=state, rate_per_s=rate, eta_seconds=eta)


class FullSyncRun:
    def __init__(
        self,
        *,
        source: str,
        state: FullSyncState,
        pages: AsyncIterator[PullPage],
        publisher: KafkaPublisher,
        store: StateStore,
        codecs: Codecs,
        topics: Topics,
        mapping_version: int,
        changes_end: Callable[[], Awaitable[Mapping[int, int]]] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.source = source
        # Where the changes topic ends as the sync starts: the mapper holds real-time
        # changes from there on (None: it holds every one it has not mapped yet).
        self._changes_end = changes_end
        self.state = state
        self._pages = pages
        self._publisher = publisher
        self._store = store
        self._codecs = codecs
        self._topics = topics
        self._mapping_version = mapping_version
        self._clock = clock
        self._cancel_requested = asyncio.Event()
        self._saved_at = clock()

    def cancel(self) -> None:
        self._cancel_requested.set()

    async def announce(self) -> None:
        """Step 1: the RUNNING state and STARTED on the barrier, both durable."""
        await self._save(self.state)
        start = await self._changes_end() if self._changes_end is not None else {}
        await self._control(ControlKind.STARTED, changes_start=start)

    async def run(self) -> FullSyncState:
        """Steps 2-5, after ``announce`` (or for a resumed run, announced before)."""
        log.info("full sync running source=%s sync=%s", self.source, self.state.sync_id)
        try:
            if await self._copy_pages():
                return await self.end(SyncStatus.COMPLETED)
            return await self.end(SyncStatus.CANCELLED, reason="cancelled by request")
        except (ApiError, BrokerUnavailable, SourceFailure) as exc:
            # Step 5
            log.warning("full sync failed source=%s reason=%s", self.source, exc)
            with contextlib.suppress(BrokerUnavailable):
                return await self.end(SyncStatus.FAILED, reason=str(exc)[:500])
            # Kafka itself is down: the state stays RUNNING; recovery fails it later.
            return self.state

    async def _copy_pages(self) -> bool:
        """Step 2; False when cancelled (step 3).

        Up to ``PUBLISH_WINDOW`` pages are in flight to Kafka at once (their sends
        are queued in page order, so per-partition order holds); a page counts as
        done only once it and every page before it are acknowledged.
        """
        queue: asyncio.Queue[PullPage | _Failed | None] = asyncio.Queue(maxsize=PREFETCH_PAGES)
        fetcher = asyncio.create_task(self._fetch(queue))
        in_flight: collections.deque[tuple[PullPage, asyncio.Task[dict[int, int]]]] = (
            collections.deque()
        )
        try:
            while not self._cancel_requested.is_set():
                item = await queue.get()
                if item is None:
                    while in_flight:
                        await self._complete(*in_flight.popleft())
                    return True
                if isinstance(item, _Failed):
                    raise item.error
                in_flight.append((item, asyncio.create_task(self._publish(item))))
                while len(in_flight) > PUBLISH_WINDOW or (in_flight and in_flight[0][1].done()):
                    await self._complete(*in_flight.popleft())
            while in_flight:
                await self._complete(*in_flight.popleft())
            return False
        finally:
            fetcher.cancel()
            for _page, task in in_flight:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher

    async def _fetch(self, queue: asyncio.Queue[PullPage | _Failed | None]) -> None:
        try:
            async for page in self._pages:
                await queue.put(page)
        except (ApiError, BrokerUnavailable) as exc:
            await queue.put(_Failed(exc))
            return
        except Exception as exc:
            # A bug in a page source: loud in the log, and the sync FAILED with the
            # reason, rather than a RUNNING sync that never ends.
            log.exception("full sync page source failed source=%s", self.source)
            await queue.put(_Failed(SourceFailure(f"{type(exc).__name__}: {exc}")))
            return
        await queue.put(None)

    async def _publish(self, page: PullPage) -> dict[int, int]:
        """The page's records to the fullsync topic, its rejected rows to rejected."""
        ends = await self._publisher.publish(
            [
                OutgoingMessage(self._topics.fullsync, c.key, self._codecs.changes.encode(c))
                for c in page.changes
            ]
        )
        if page.rejected:
            await self._publisher.publish(
                [
                    OutgoingMessage(
                        self._topics.rejected, r.key or b"", self._codecs.rejected.encode(r)
                    )
                    for r in page.rejected
                ]
            )
        return ends

    async def _complete(self, page: PullPage, publishing: asyncio.Task[dict[int, int]]) -> None:
        """A page acknowledged: count it, and save progress at most once per interval
        (resuming from a slightly older cursor only re-sends a few pages)."""
        ends = await publishing
        offsets = dict(self.state.end_offsets)
        for partition, end in ends.items():
            offsets[partition] = max(end, offsets.get(partition, 0))
        now = self._clock()
        self.state = replace(
            self.state,
            updated_at=now,
            records_done=self.state.records_done + len(page.changes),
            records_rejected=self.state.records_rejected + len(page.rejected),
            records_total=page.total if page.total is not None else self.state.records_total,
            cursor=page.checkpoint.cursor,
            end_offsets=offsets,
        )
        if (now - self._saved_at).total_seconds() >= SAVE_INTERVAL_S:
            await self._save(self.state)
        metrics.FULLSYNC_RECORDS.labels(self.source).set(self.state.records_done)
        if self.state.records_total is not None:
            metrics.FULLSYNC_RECORDS_TOTAL.labels(self.source).set(self.state.records_total)

    async def end(self, status: SyncStatus, *, reason: str | None = None) -> FullSyncState:
        """Steps 3-5: the barrier message first, so the state never claims an end the
        mapper has not been told about."""
        await self._control(END_CONTROLS[status], reason=reason)
        now = self._clock()
        await self._save(
            replace(self.state, status=status, updated_at=now, finished_at=now, reason=reason)
        )
        metrics.FULLSYNC_RUNS.labels(self.source, status.value.lower()).inc()
        log.info(
            "full sync ended source=%s sync=%s status=%s records=%s",
            self.source,
            self.state.sync_id,
            status.value,
            self.state.records_done,
        )
        return self.state

    async def _control(
        self,
        kind: ControlKind,
        *,
        reason: str | None = None,
        changes_start: Mapping[int, int] | None = None,
    ) -> None:
        control = SyncControl(
            source=self.source,
            sync_id=self.state.sync_id,
            kind=kind,
            at=self._clock(),
            mapping_version=self._mapping_version,
            records_total=self.state.records_done if kind is ControlKind.COMPLETED else None,
            fullsync_end_offsets=tuple(
                PartitionOffset(p, o) for p, o in sorted(self.state.end_offsets.items())
            )
            if kind is ControlKind.COMPLETED
            else (),
            reason=reason,
            changes_start_offsets=tuple(
                PartitionOffset(p, o) for p, o in sorted((changes_start or {}).items())
            ),
        )
        await self._publisher.publish(
            [
                OutgoingMessage(
                    self._topics.barrier, control.key, self._codecs.controls.encode(control)
                )
            ]
        )

    async def _save(self, state: FullSyncState) -> None:
        await self._store.save_fullsync(self.source, state)
        self.state = state
        self._saved_at = self._clock()


class AlreadyRunning(Exception):
    pass


class NotRunning(Exception):
    pass


PageSource = Callable[[FullSyncState, bool], AsyncIterator[PullPage]]
"""Given the run's state and whether it resumes, the pages to copy."""


class FullSyncs:
    """The full syncs this ingest process runs, one at a time per source."""

    def __init__(
        self,
        *,
        page_sources: Mapping[str, PageSource],
        mapping_versions: Mapping[str, int],
        publisher: KafkaPublisher,
        store: StateStore,
        codecs: Codecs,
        topics: Topics,
        changes_end: Callable[[], Awaitable[Mapping[int, int]]] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._page_sources = page_sources
        self._changes_end = changes_end
        self._mapping_versions = mapping_versions
        self._publisher = publisher
        self._store = store
        self._codecs = codecs
        self._topics = topics
        self._clock = clock
        self._runs: dict[str, FullSyncRun] = {}
        self._tasks: dict[str, asyncio.Task[FullSyncState]] = {}

    def can_sync(self, source: str) -> bool:
        return source in self._page_sources

    def status(self, source: str) -> FullSyncState | None:
        run = self._runs.get(source)
        return run.state if run is not None else self._store.fullsync(source)

    async def start(self, source: str) -> FullSyncState:
        current = self.status(source)
        if current is not None and current.running:
            raise AlreadyRunning(f"full sync {current.sync_id} is running for {source}")
        now = self._clock()
        state = FullSyncState(
            sync_id=new_sync_id(source, now),
            status=SyncStatus.RUNNING,
            origin="FULL_SYNC",
            owner=INGEST_OWNER,
            started_at=now,
            updated_at=now,
        )
        run = self._run(source, state, self._page_sources[source](state, False))
        # Step 1 before answering, so the caller learns of a broker failure now.
        await run.announce()
        self._launch(source, run)
        return state

    async def cancel(self, source: str) -> FullSyncState:
        run = self._runs.get(source)
        if run is not None:
            run.cancel()
            return await self._tasks[source]
        state = self._store.fullsync(source)
        if state is None or not state.running:
            raise NotRunning(f"no full sync is running for {source}")
        # Run by another process (a CSV import that died): end it here.
        return await self._orphan(source, state, SyncStatus.CANCELLED, "cancelled by request")

    async def recover(self) -> None:
        """Resume or fail the runs a previous ingest process left RUNNING."""
        for source, state in self._store.fullsyncs().items():
            if not state.running or state.owner != INGEST_OWNER:
                continue
            if source in self._page_sources:
                # From the saved cursor, or from the start when none was saved yet:
                # records sent twice are harmless downstream, records skipped are not.
                resume = state.cursor is not None
                log.info(
                    "resuming full sync source=%s sync=%s from=%s",
                    source,
                    state.sync_id,
                    "cursor" if resume else "start",
                )
                pages = self._page_sources[source](state, resume)
                self._launch(source, self._run(source, state, pages))
            else:
                await self._orphan(
                    source, state, SyncStatus.FAILED, "ingest stopped before it could resume"
                )

    async def close(self) -> None:
        """Stop between pages; the runs stay RUNNING and resume after a restart."""
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _run(
        self, source: str, state: FullSyncState, pages: AsyncIterator[PullPage]
    ) -> FullSyncRun:
        return FullSyncRun(
            source=source,
            state=state,
            pages=pages,
            publisher=self._publisher,
            store=self._store,
            codecs=self._codecs,
            topics=self._topics,
            mapping_version=self._mapping_versions.get(source, 0),
            changes_end=self._changes_end,
            clock=self._clock,
        )

    def _launch(self, source: str, run: FullSyncRun) -> None:
        self._runs[source] = run
        task = asyncio.create_task(run.run(), name=f"fullsync-{source}")
        self._tasks[source] = task
        task.add_done_callback(lambda _t: self._forget(source, run))

    def _forget(self, source: str, run: FullSyncRun) -> None:
        if self._runs.get(source) is run:
            del self._runs[source]
            del self._tasks[source]

    async def _orphan(
        self, source: str, state: FullSyncState, status: SyncStatus, reason: str
    ) -> FullSyncState:
        """End a run no process here is running (its owner died)."""
        return await self._run(source, state, _no_pages()).end(status, reason=reason)


async def _no_pages() -> AsyncIterator[PullPage]:
    return
    yield  # pragma: no cover - makes this an async generator
