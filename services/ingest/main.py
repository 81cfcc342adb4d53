"""The ingest service: one module that wires connectors, Kafka, state, polls and HTTP.

Start:
1. listen for HTTP, so /healthz answers at once;
2. prepare Kafka (topics, schemas) with retries;
3. load the saved connector state (poll watermarks, full syncs);
4. resume or fail full syncs a previous process left running, start the pollers;
5. report ready: webhooks and the admin API are served from here on.

Stop (SIGTERM): stop the pollers and full syncs between pages (their state is saved
after every page, so a restart resumes them), stop accepting requests and let
in-flight ones finish, then flush the producer, so every request that got a 2xx is
in Kafka and none is cut in half.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from services.core.bootstrap import prepare_kafka_with_retry
from services.core.config import Settings
from services.core.contracts import Origin, WireContracts, load_contracts
from services.core.kafka import TopicNames, client_config, producer_config
from services.core.runtime import (
    HealthEndpoints,
    run_until_signalled,
    service_settings,
    start_http,
)
from services.ingest.admin import AdminApi
from services.ingest.api_client import ApiClient, StaticBearer
from services.ingest.connectors.base import (
    Checkpoint,
    PullConnector,
    PullPage,
    SourceConnectors,
    Stamp,
)
from services.ingest.fullsync import Codecs, FullSyncs, PageSource, Topics
from services.ingest.polling import Poller
from services.ingest.publisher import KafkaPublisher
from services.ingest.registry import build_connectors
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
    pollers: list[Poller]
    session: aiohttp.ClientSession
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
        session = aiohttp.ClientSession()
        page_sources: dict[str, PageSource] = {}
        pollers: list[Poller] = []
        for name, connectors in sources.items():
            if connectors.pull is None or connectors.api is None:
                continue
            api = ApiClient(
                source=name,
                settings=connectors.api,
                session=session,
                credentials=connectors.credentials
                or StaticBearer(connectors.api.token.resolve() if connectors.api.token else None),
                is_throttled=connectors.is_throttled,
            )
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
        )
        return cls(
            settings=settings,
            contracts=contracts,
            topics=topics,
            publisher=publisher,
            sources=sources,
            store=store,
            fullsyncs=fullsyncs,
            pollers=pollers,
            session=session,
        )

    def http_app(self) -> web.Application:
        ingest = self.settings.services.ingest
        caps = [s.max_body_bytes or 0 for s in self.settings.sources.values()]
        app = web.Application(client_max_size=max([ingest.max_body_bytes, *caps]) + 1)
        health = HealthEndpoints(service="ingest")
        health.add_check("kafka", self._kafka_ready)
        health.install(app)
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
        ).install(app)
        AdminApi(
            sources=self.sources,
            kinds={n: s.kind for n, s in self.settings.sources.items()},
            mapping_versions={n: s.mapping_version for n, s in self.settings.sources.items()},
            fullsyncs=self.fullsyncs,
            store=self.store,
            token=ingest.admin_token.resolve() if ingest.admin_token else None,
            accepting=self.ready.is_set,
        ).install(app)
        return app

    async def _kafka_ready(self) -> None:
        if not self.ready.is_set():
            raise NotReady("topics, schemas and connector state not loaded yet")
        reason = self.publisher.unavailable_reason()
        if reason is not None:
            raise NotReady(reason)


async def run(settings: Settings, *, stop: asyncio.Event) -> None:
    ingest = Ingest.build(settings)
    http = settings.services.ingest.http
    # Step 1
    runner = await start_http(ingest.http_app(), host=http.host, port=http.port)
    tasks: list[asyncio.Task[None]] = []
    try:
        # Step 2
        if not await prepare_kafka_with_retry(
            settings.kafka, catalog=ingest.contracts.catalog, client_id="crmsync-ingest", stop=stop
        ):
            return
        # Step 3
        await asyncio.to_thread(
            ingest.store.load, client_config(settings.kafka, client_id="crmsync-ingest-state")
        )
        # Step 4
        if settings.services.ingest.run_pulls:
            await ingest.fullsyncs.recover()
            tasks = [asyncio.create_task(p.run_forever(stop)) for p in ingest.pollers]
        # Step 5
        ingest.ready.set()
        log.info("ingest ready sources=%s", ",".join(sorted(ingest.sources)))
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await ingest.fullsyncs.close()
        # Stop accepting, let in-flight requests finish (they await their acks) ...
        await runner.cleanup()
        await ingest.session.close()
        # ... then make sure nothing acknowledged or queued is left behind.
        await asyncio.to_thread(ingest.publisher.close)
        log.info("ingest stopped")


def main() -> None:
    settings = service_settings("ingest")
    run_until_signalled(lambda stop: run(settings, stop=stop))
