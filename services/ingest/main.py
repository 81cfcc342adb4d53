"""The ingest service: one module that wires connectors, Kafka, state, polls and HTTP.

Start:
1. listen for HTTP (webhooks on the public port, the admin API on its own), so
   /healthz answers at once;
2. prepare Kafka (topics, schemas) with retries;
3. load the saved connector state (poll watermarks, full syncs);
4. resume or fail full syncs a previous process left running, start the pollers;
5. report ready: webhooks and the admin API are served from here on.

With ``workers`` > 1 this process (worker 0) also starts and supervises the other
workers, which share the public port (SO_REUSEPORT) and only take webhooks: polls,
full syncs and the admin API stay in worker 0, so one process owns each source's
pulls.

Stop (SIGTERM): stop the pollers and full syncs between pages (their state is saved
after every page, so a restart resumes them), stop accepting requests and let
in-flight ones finish, then flush the producer, so every request that got a 2xx is
in Kafka and none is cut in half.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from aiohttp import web

from services.core.api_client import ApiClient
from services.core.bootstrap import prepare_kafka_with_retry
from services.core.codecs import WireContracts, load_contracts
from services.core.config import Settings
from services.core.contracts import Origin
from services.core.http import async_client
from services.core.kafka import TopicNames, client_config, end_offsets, producer_config
from services.core.runtime import HealthEndpoints, start_http
from services.core.workers import WorkerPool
from services.ingest.admin import AdminApi
from services.ingest.connectors.base import (
    Checkpoint,
    PullConnector,
    PullPage,
    SourceConnectors,
    Stamp,
)
from services.ingest.fullsync import Codecs, FullSyncs, PageSource, Topics
from services.ingest.pauses import SourcePauses
from services.ingest.polling import Poller
from services.ingest.publisher import KafkaPublisher
from services.ingest.registry import build_connectors
from services.ingest.source_api import source_api_client
from services.ingest.state import FullSyncState, StateStore, state_codec
from services.ingest.webhooks import WebhookHandler

log = logging.getLogger(__name__)


class NotReady(Exception):
    pass


def full_sync_pages(connector: PullConnector, api: ApiClient) -> PageSource:
    def pages(state: FullSyncState, resume: bool) -> AsyncIterator[PullPage]:
        return connector.pages(
            api,
            since=None,
            resume=Checkpoint(cursor=state.cursor) if resume else None,
            stamp=Stamp(Origin.FULL_SYNC, state.sync_id),
        )

    return pages


@dataclass
class Ingest:
    settings: Settings
    contracts: WireContracts
    topics: TopicNames
    publisher: KafkaPublisher
    sources: dict[str, SourceConnectors]
    store: StateStore
    fullsyncs: FullSyncs
    pauses: SourcePauses
    pollers: list[Poller]
    session: httpx.AsyncClient
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def build(cls, settings: Settings) -> Ingest:
        ingest = settings.services.ingest
        contracts = load_contracts()
        topics = TopicNames.from_settings(settings.kafka)
        publisher = KafkaPublisher(
            producer_config=producer_config(
                settings.kafka,
                client_id="crmsync-ingest",
                delivery_timeout_ms=ingest.delivery_timeout_ms,
            )
        )
        store = StateStore(
            topic=topics.connector_state,
            publisher=publisher,
            codec=state_codec(contracts.catalog),
        )
        sources = {name: build_connectors(name, s) for name, s in settings.sources.items()}
        # One pool for every source's API calls; each call's timeout is its source's.
        session = async_client()
        page_sources: dict[str, PageSource] = {}
        pollers: list[Poller] = []
        for name, connectors in sources.items():
            if connectors.pull is None or connectors.api is None:
                continue
            api = source_api_client(name, connectors, session=session)
            page_sources[name] = full_sync_pages(connectors.pull, api)
            if connectors.poll is not None and connectors.poll.enabled:
                pollers.append(
                    Poller(
                        source=name,
                        settings=connectors.poll,
                        connector=connectors.pull,
                        api=api,
                        publisher=publisher,
                        store=store,
                        changes=contracts.contact_change,
                        rejected=contracts.rejected_event,
                        changes_topic=topics.changes,
                        rejected_topic=topics.rejected,
                    )
                )
        changes_end = functools.partial(
            asyncio.to_thread, end_offsets, settings.kafka, topics.changes
        )
        fullsyncs = FullSyncs(
            page_sources=page_sources,
            mapping_versions={n: s.mapping_version for n, s in settings.sources.items()},
            publisher=publisher,
            store=store,
            codecs=Codecs(
                changes=contracts.contact_change,
                controls=contracts.sync_control,
                rejected=contracts.rejected_event,
            ),
            topics=Topics(
                fullsync=topics.fullsync, barrier=topics.barrier, rejected=topics.rejected
            ),
            changes_end=changes_end,
        )
        pauses = SourcePauses(
            publisher=publisher,
            codec=contracts.sync_control,
            barrier_topic=topics.barrier,
            changes_end=changes_end,
        )
        return cls(
            settings=settings,
            contracts=contracts,
            topics=topics,
            publisher=publisher,
            sources=sources,
            store=store,
            fullsyncs=fullsyncs,
            pauses=pauses,
            pollers=pollers,
            session=session,
        )

    def public_app(self) -> web.Application:
        """Webhooks, health and metrics: what CRMs and the platform reach."""
        ingest = self.settings.services.ingest
        caps = [s.max_body_bytes or 0 for s in self.settings.sources.values()]
        app = web.Application(client_max_size=max([ingest.max_body_bytes, *caps]) + 1)
        self._health().install(app)
        WebhookHandler(
            connectors={n: c.webhook for n, c in self.sources.items() if c.webhook is not None},
            body_caps={
                name: source.max_body_bytes or ingest.max_body_bytes
                for name, source in self.settings.sources.items()
            },
            publisher=self.publisher,
            changes=self.contracts.contact_change,
            rejected=self.contracts.rejected_event,
            changes_topic=self.topics.changes,
            rejected_topic=self.topics.rejected,
            retry_after_seconds=ingest.retry_after_seconds,
            accepting=self.ready.is_set,
            public_base_url=ingest.public_base_url,
            trusted_proxies=ingest.trusted_proxies,
        ).install(app)
        return app

    def admin_app(self) -> web.Application:
        """The operators' API (full syncs, status), with health and metrics."""
        ingest = self.settings.services.ingest
        app = web.Application()
        self._health().install(app)
        AdminApi(
            sources=self.sources,
            kinds={n: s.kind for n, s in self.settings.sources.items()},
            mapping_versions={n: s.mapping_version for n, s in self.settings.sources.items()},
            fullsyncs=self.fullsyncs,
            pauses=self.pauses,
            destinations={n: d.paused for n, d in self.settings.destinations.items()},
            store=self.store,
            token=ingest.admin_token.resolve() if ingest.admin_token else None,
            accepting=self.ready.is_set,
        ).install(app)
        return app

    def _health(self) -> HealthEndpoints:
        health = HealthEndpoints(service="ingest")
        health.add_check("kafka", self._kafka_ready)
        return health

    async def _kafka_ready(self) -> None:
        if not self.ready.is_set():
            raise NotReady("topics, schemas and connector state not loaded yet")
        reason = self.publisher.unavailable_reason()
        if reason is not None:
            raise NotReady(reason)


async def run(settings: Settings, *, stop: asyncio.Event, worker: int = 0) -> None:
    """Worker 0 does everything; workers 1.. (``workers`` > 1) only serve webhooks."""
    ingest = Ingest.build(settings)
    config = settings.services.ingest
    leader = worker == 0

    async def serve_public() -> web.AppRunner:
        return await start_http(
            ingest.public_app(),
            host=config.http.host,
            port=config.http.port,
            reuse_port=config.workers > 1,
        )

    runners: list[web.AppRunner] = []
    tasks: list[asyncio.Task[None]] = []
    pool = WorkerPool(module="services.ingest", workers=config.workers) if leader else None
    try:
        # Step 1 (worker 0; the others join the port only once ready, so no request
        # reaches a worker that would have to answer "starting up")
        if leader:
            runners.append(await serve_public())
            runners.append(
                await start_http(ingest.admin_app(), host=config.admin.host, port=config.admin.port)
            )
        # Step 2
        if not await prepare_kafka_with_retry(
            settings.kafka, catalog=ingest.contracts.catalog, client_id="crmsync-ingest", stop=stop
        ):
            return
        if leader:
            # Step 3
            await asyncio.to_thread(
                ingest.store.load, client_config(settings.kafka, client_id="crmsync-ingest-state")
            )
            await asyncio.to_thread(
                ingest.pauses.load, client_config(settings.kafka, client_id="crmsync-ingest-pauses")
            )
            # Step 4
            if config.run_pulls:
                await ingest.fullsyncs.recover()
                tasks = [asyncio.create_task(p.run_forever(stop)) for p in ingest.pollers]
        if pool is not None:
            tasks.append(asyncio.create_task(pool.supervise(stop)))
        # Step 5
        ingest.ready.set()
        if not leader:
            runners.append(await serve_public())
        log.info("ingest ready worker=%s sources=%s", worker, ",".join(sorted(ingest.sources)))
        await stop.wait()
    finally:
        if pool is not None:
            pool.terminate()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await ingest.fullsyncs.close()
        # Stop accepting, let in-flight requests finish (they await their acks) ...
        for runner in runners:
            await runner.cleanup()
        await ingest.session.aclose()
        # ... then make sure nothing acknowledged or queued is left behind.
        await asyncio.to_thread(ingest.publisher.close)
        if pool is not None:
            await asyncio.to_thread(pool.wait)
        log.info("ingest stopped worker=%s", worker)
