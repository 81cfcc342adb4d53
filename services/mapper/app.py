"""The mapper's faust app: the changes topic in, profile updates and rejections out.

The life of a message here (faust owns the consumer and the commits):

1. faust's consumer fetches a ContactChange from the changes topic and hands the
   event to ``map_changes``.
2. ``ChangeProcessor`` decides what to emit; the agent hands it to faust's
   producer buffer (``send_soon``: in order, ``acks=all``).
3. When the agent moves past the event, faust acks it; at the next commit faust
   first flushes its producer buffer and only then commits the offset, so a crash
   at any point re-delivers the change instead of losing its update
   (at-least-once). The writer's event ids and version checks make the
   redelivery harmless.
"""

from __future__ import annotations

from typing import Any, Final

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.core.config import Settings
from services.core.contracts import WireContracts
from services.core.kafka import TopicNames, faust_broker_settings
from services.core.metrics import scrape_registry
from services.mapper.processor import ChangeProcessor, Position

# Taking events in small batches amortises faust's per-event overhead.
BATCH_MAX_EVENTS: Final = 500
BATCH_MAX_WAIT_S: Final = 0.01


def create_app(settings: Settings, *, contracts: WireContracts) -> faust.App:
    topics = TopicNames.from_settings(settings.kafka)
    mapper = settings.services.mapper
    app = faust.App(
        # The app id is the consumer group; the topic prefix keeps deployments that
        # share a cluster (or test runs) apart.
        f"{settings.kafka.topics.prefix}mapper",
        **faust_broker_settings(settings.kafka),
        datadir=str(mapper.data_dir),
        web_enabled=True,
        web_bind=mapper.http.host,
        web_host=mapper.http.host,
        web_port=mapper.http.port,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # crmsync creates its topics itself; faust only creates its internal ones.
        topic_partitions=settings.kafka.topics.changes.partitions,
        topic_replication_factor=settings.kafka.topics.changes.replication_factor,
        store="memory://",
    )
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes}
    changes = app.topic(topics.changes, key_serializer="raw", value_serializer="raw", **raw)
    fullsync = app.topic(topics.fullsync, key_serializer="raw", value_serializer="raw", **raw)
    outputs = {
        "profile_updates": app.topic(
            topics.profile_updates, key_serializer="raw", value_serializer="raw", **raw
        ),
        "rejected": app.topic(topics.rejected, key_serializer="raw", value_serializer="raw", **raw),
    }
    processor = ChangeProcessor(settings=settings, contracts=contracts)

    async def map_stream(stream: Any) -> None:
        async for events in stream.take_events(BATCH_MAX_EVENTS, within=BATCH_MAX_WAIT_S):
            for event in events:
                message = event.message
                position = Position(message.topic, message.partition, message.offset)
                for emit in processor.process(key=event.key, value=event.value, position=position):
                    # Buffered, in order; faust flushes the buffer before it commits.
                    outputs[emit.topic].send_soon(key=emit.key, value=emit.value)

    # Full-sync records are mapped like real-time ones; the writer's version order
    # decides between them. (Holding real-time changes behind a running full sync,
    # the barrier, is the mapper's next step.)
    app.agent(changes, name="map_changes")(map_stream)
    app.agent(fullsync, name="map_fullsync")(map_stream)

    @app.page("/healthz")
    async def healthz(web: Any, _request: Any) -> Any:
        return web.json({"service": "mapper", "status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, _request: Any) -> Any:
        failures = {}
        if app.rebalancing:
            failures["kafka"] = "consumer group rebalancing"
        elif not app.consumer.assignment():
            failures["kafka"] = "no partitions assigned yet"
        return web.json(
            {"service": "mapper", "ready": not failures, "failures": failures},
            status=503 if failures else 200,
        )

    @app.page("/metrics")
    async def prometheus_metrics(web: Any, _request: Any) -> Any:
        return web.bytes(
            generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST.split(";")[0]
        )

    return app
