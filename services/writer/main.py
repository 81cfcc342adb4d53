"""The writer service: the consumer loop on its own thread, HTTP health on the event loop.

The loop thread migrates the store (waiting, with backoff, while it is unreachable),
then applies batches. Stop (SIGTERM): the loop finishes the batch in hand (applied and
committed, or not applied at all), closes its consumer, and exits.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from confluent_kafka import Consumer, Producer

from services.core import metrics
from services.core.codecs import WireContracts, load_contracts
from services.core.config import Settings
from services.core.kafka import (
    PREFETCH_KBYTES,
    SESSION_TIMEOUT_MS,
    ConsumerLag,
    TopicNames,
    consumer_config,
    producer_config,
)
from services.core.loop_service import LoopThread, serve_loop
from services.core.rejections import rejection_message_limit
from services.core.runtime import (
    HealthEndpoints,
    run_until_signalled,
    service_settings,
)
from services.core.schema_topic import schema_resolver
from services.writer.loop import LoopSettings, StoreBackoff, WriterLoop
from services.writer.outbox_relay import OutboxRelay
from services.writer.read_api import ReadApi
from services.writer.stores import open_store
from services.writer.stores.base import ProfileStore, TransientStoreError

log = logging.getLogger(__name__)


class NotReady(Exception):
    pass


def writer_loop(
    settings: Settings, *, contracts: WireContracts, store: ProfileStore, stop: threading.Event
) -> WriterLoop:
    kafka = settings.kafka
    writer = settings.services.writer
    topics = TopicNames.from_settings(kafka)
    group = f"{kafka.topics.prefix}writer"
    consumer = Consumer(
        {
            **consumer_config(kafka, client_id="crmsync-writer", group_id=group),
            "queued.max.messages.kbytes": PREFETCH_KBYTES,
            # An eager protocol: the loop replaces its whole assignment, in the
            # rebalance callback or later once the store says where partitions
            # start (assign()); a cooperative one would refuse assign().
            "partition.assignment.strategy": "range",
            # How long a vanished writer's partitions wait before another member
            # (or its own restart) takes them over; the mapper's too.
            "session.timeout.ms": SESSION_TIMEOUT_MS,
        }
    )
    producer = Producer(
        {
            **producer_config(kafka, client_id="crmsync-writer"),
            # Every send here (rejections, audit events, the outbox's events) only
            # needs to hear of a failure: no Python callback per message sent.
            "delivery.report.only.error": True,
        }
    )
    relay = OutboxRelay(
        store=store,
        producer=producer,
        topic=topics.profile_changes,
        rejected=contracts.rejected_event,
        rejected_topic=topics.rejected,
    )
    return WriterLoop(
        consumer=consumer,
        producer=producer,
        store=store,
        updates=contracts.profile_update,
        rejected=contracts.rejected_event,
        audit=contracts.audit_event,
        settings=LoopSettings(
            topic=topics.profile_updates,
            rejected_topic=topics.rejected,
            audit_topic=topics.audit,
            batch_max_records=writer.batch_max_records,
            batch_max_wait_ms=writer.batch_max_wait_ms,
            rejected_max_bytes=rejection_message_limit(kafka),
        ),
        stop=stop,
        lag=ConsumerLag(consumer, group=group),
        relay=relay.relay,
    )


def migrate_when_reachable(store: ProfileStore, *, stop: threading.Event) -> bool:
    """Migrate the store, waiting with backoff while it is unreachable; False on stop.

    Only then does the writer join its consumer group: partitions given to a member
    that cannot write would wait, where another member could take them.
    """
    backoff = StoreBackoff(stop.wait)
    while True:
        try:
            store.migrate()
        except TransientStoreError as exc:
            if backoff.failed("store unavailable at start", exc):
                return False
            continue
        metrics.STORE_UNAVAILABLE.set(0)
        return True


async def run(settings: Settings, *, stop: asyncio.Event) -> None:
    contracts = load_contracts()
    contracts.catalog.add_resolver(
        schema_resolver(settings.kafka, client_id="crmsync-writer-schemas")
    )
    started = threading.Event()

    def body(stop_loop: threading.Event) -> None:
        store = open_store(
            settings.store,
            profile=settings.profile,
            encode_change=contracts.profile_changed.converter.encode,
        )
        try:
            if not migrate_when_reachable(store, stop=stop_loop):
                return
            started.set()
            writer_loop(settings, contracts=contracts, store=store, stop=stop_loop).run()
        finally:
            store.close()

    loop = LoopThread("writer-loop", body)

    def probe_store() -> None:
        # A connection of its own, opened and closed on the probing thread (SQLite
        # connections belong to the thread that made them).
        probe = open_store(settings.store, read_only=True)
        try:
            probe.ping()
        finally:
            probe.close()

    async def store_ready() -> None:
        await asyncio.to_thread(probe_store)

    async def loop_ready() -> None:
        if loop.failure is not None:
            raise NotReady(f"consumer loop failed: {loop.failure}")
        if not started.is_set():
            raise NotReady("consumer loop not started")

    token = settings.services.writer.read_token
    reads = ReadApi(
        token=token.resolve() if token is not None else None,
        open_reader=lambda: open_store(settings.store, read_only=True),
    )
    health = HealthEndpoints(service="writer")
    health.add_check("store", store_ready)
    health.add_check("kafka", loop_ready)
    await serve_loop(
        service="writer",
        kafka=settings.kafka,
        catalog=contracts.catalog,
        http=settings.services.writer.http,
        health=health,
        loops=[loop],
        stop=stop,
        routes=reads.install,
    )


def main() -> None:
    settings = service_settings("writer")
    run_until_signalled(lambda stop: run(settings, stop=stop))
