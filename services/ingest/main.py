"""The ingest service: wires config, connectors, the Kafka publisher and the HTTP app.

Start: listen for HTTP first (so /healthz answers), then prepare Kafka (topics,
schemas) with retries; /readyz turns ready once that is done and a broker is up.
Stop (SIGTERM): stop accepting requests and let in-flight ones finish, then flush the
producer, so every request that got a 2xx is in Kafka and none is cut in half.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from services.core.bootstrap import prepare_kafka_with_retry
from services.core.config import Settings
from services.core.contracts import load_contracts
from services.core.kafka import TopicNames, producer_config
from services.core.runtime import (
    HealthEndpoints,
    run_until_signalled,
    service_settings,
    start_http,
)
from services.ingest.connectors import build_connector
from services.ingest.publisher import KafkaPublisher
from services.ingest.webhooks import WebhookHandler

log = logging.getLogger(__name__)


class NotReady(Exception):
    pass


async def run(settings: Settings, *, stop: asyncio.Event) -> None:
    ingest = settings.services.ingest
    contracts = load_contracts()
    topics = TopicNames.from_settings(settings.kafka)
    connectors = {name: build_connector(name, source) for name, source in settings.sources.items()}
    publisher = KafkaPublisher(
        producer_config=producer_config(
            settings.kafka,
            client_id="crmsync-ingest",
            delivery_timeout_ms=ingest.delivery_timeout_ms,
        )
    )
    kafka_prepared = asyncio.Event()

    async def kafka_ready() -> None:
        if not kafka_prepared.is_set():
            raise NotReady("topics and schemas not prepared yet")
        reason = publisher.unavailable_reason()
        if reason is not None:
            raise NotReady(reason)

    health = HealthEndpoints(service="ingest")
    health.add_check("kafka", kafka_ready)
    app = web.Application(client_max_size=ingest.max_body_bytes + 1)
    health.install(app)
    WebhookHandler(
        connectors=connectors,
        publisher=publisher,
        changes=contracts.contact_change,
        rejected=contracts.rejected_event,
        changes_topic=topics.changes,
        rejected_topic=topics.rejected,
        max_body_bytes=ingest.max_body_bytes,
        retry_after_seconds=ingest.retry_after_seconds,
        accepting=kafka_prepared.is_set,
    ).install(app)
    runner = await start_http(app, host=ingest.http.host, port=ingest.http.port)
    try:
        if await prepare_kafka_with_retry(
            settings.kafka, catalog=contracts.catalog, client_id="crmsync-ingest", stop=stop
        ):
            kafka_prepared.set()
            log.info("ingest ready sources=%s", ",".join(sorted(connectors)))
        await stop.wait()
    finally:
        # Stop accepting, let in-flight requests finish (they await their acks) ...
        await runner.cleanup()
        # ... then make sure nothing acknowledged or queued is left behind.
        await asyncio.to_thread(publisher.close)
        log.info("ingest stopped")


def main() -> None:
    settings = service_settings("ingest")
    run_until_signalled(lambda stop: run(settings, stop=stop))
