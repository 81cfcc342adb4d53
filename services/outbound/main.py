"""The outbound service: one delivery loop per configured destination, each on its own
thread with its own consumer group, HTTP health on the event loop.

Stop (SIGTERM): each loop finishes the chunk in hand (taken, or left to be consumed
again) and exits. A loop that fails ends the service with code 1 so that its
supervisor restarts it; what it had not committed is delivered again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, Producer

from services.core.codecs import WireContracts, load_contracts
from services.core.config import Settings
from services.core.destinations import DestinationSettings
from services.core.kafka import (
    PREFETCH_KBYTES,
    SESSION_TIMEOUT_MS,
    TopicNames,
    consumer_config,
    producer_config,
    reader_config,
)
from services.core.loop_service import LoopThread, serve_loop
from services.core.rejections import rejection_message_limit
from services.core.runtime import HealthEndpoints, run_until_signalled, service_settings
from services.core.schema_topic import schema_resolver
from services.outbound.backlog import group_of
from services.outbound.delivery import DeliveryLoop, LinkSettings, LoopSettings, ProfileReader
from services.outbound.destinations import open_destination
from services.outbound.pauses import DestinationPauses
from services.writer.stores import SqlStore, open_sql_store
from services.writer.stores.base import StoredProfile

log = logging.getLogger(__name__)


class NotReady(Exception):
    pass


class StoreProfiles:
    """Profiles read from the store for a destination's ``send_if``: opened read-only on
    first use, in the delivery loop's own thread (an SQLite connection stays in the
    thread that opened it; the writer creates the store, perhaps after this starts)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings.store
        self._store: SqlStore | None = None

    def __call__(self, profile_ids: Sequence[int]) -> list[StoredProfile]:
        if self._store is None:
            self._store = open_sql_store(self._settings, read_only=True)
            if self._store is None:
                raise TypeError("send_if reads profiles from an SQL store")
        return self._store.profiles_by_id(profile_ids)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def delivery_loop(
    settings: Settings,
    *,
    name: str,
    destination: DestinationSettings,
    contracts: WireContracts,
    stop: threading.Event,
    profiles: ProfileReader | None = None,
    paused: Callable[[], bool] = lambda: False,
) -> DeliveryLoop:
    kafka = settings.kafka
    outbound = settings.services.outbound
    topics = TopicNames.from_settings(kafka)
    client_id = f"crmsync-outbound-{name}"
    consumer = Consumer(
        {
            **consumer_config(kafka, client_id=client_id, group_id=group_of(settings, name)),
            "queued.max.messages.kbytes": PREFETCH_KBYTES,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
        }
    )
    return DeliveryLoop(
        destination=open_destination(name, destination),
        settings=destination,
        consumer=consumer,
        producer=Producer(producer_config(kafka, client_id=client_id)),
        changes=contracts.profile_changed,
        rejected=contracts.rejected_event,
        loop_settings=LoopSettings(
            topic=topics.profile_changes,
            rejected_topic=topics.rejected,
            batch_max_records=outbound.batch_max_records,
            batch_max_wait_ms=outbound.batch_max_wait_ms,
            rejected_max_bytes=rejection_message_limit(kafka),
        ),
        stop=stop,
        profiles=profiles,
        paused=paused,
        links=(
            LinkSettings(
                topic=topics.changes,
                source=destination.source,
                email_field=settings.sources[destination.source].email_field,
                codec=contracts.contact_change,
            )
            if destination.source is not None
            else None
        ),
    )


async def run(settings: Settings, *, stop: asyncio.Event) -> None:
    contracts = load_contracts()
    contracts.catalog.add_resolver(
        schema_resolver(settings.kafka, client_id="crmsync-outbound-schemas")
    )
    pauses = DestinationPauses(
        consumer_config=reader_config(settings.kafka, client_id="crmsync-outbound-pauses"),
        topic=TopicNames.from_settings(settings.kafka).barrier,
        codec=contracts.sync_control,
    )
    loops: list[LoopThread] = [LoopThread("outbound-pauses", pauses.follow)]
    for name, destination in settings.destinations.items():

        def body(
            stop_loop: threading.Event, name: str = name, dest: DestinationSettings = destination
        ) -> None:
            # A destination paused before this start stays paused from the first change.
            while not pauses.loaded.wait(0.5):
                if stop_loop.is_set():
                    return
            profiles = StoreProfiles(settings) if dest.send_if is not None else None
            try:
                delivery_loop(
                    settings,
                    name=name,
                    destination=dest,
                    contracts=contracts,
                    stop=stop_loop,
                    profiles=profiles,
                    paused=functools.partial(pauses.paused, name),
                ).run()
            finally:
                if profiles is not None:
                    profiles.close()

        loops.append(LoopThread(f"outbound-{name}", body))
    if not settings.destinations:
        log.info("no destinations configured: nothing to deliver")

    async def loops_ready() -> None:
        for loop in loops:
            if loop.failure is not None:
                raise NotReady(f"{loop.name} failed: {loop.failure}")

    health = HealthEndpoints(service="outbound")
    health.add_check("destinations", loops_ready)
    await serve_loop(
        service="outbound",
        kafka=settings.kafka,
        catalog=contracts.catalog,
        http=settings.services.outbound.http,
        health=health,
        loops=loops,
        stop=stop,
    )


def main() -> None:
    settings = service_settings("outbound")
    run_until_signalled(lambda stop: run(settings, stop=stop))
