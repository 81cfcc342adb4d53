"""The writer service: the consumer loop on its own thread, HTTP health on the event loop.

Start: listen for HTTP, prepare Kafka (topics, schemas) with retries, migrate the
store, then start the loop thread. Stop (SIGTERM): the loop finishes the batch in
hand (applied and committed, or not applied at all), closes its consumer, and exits.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import web
from confluent_kafka import Consumer, Producer

from services.core.bootstrap import prepare_kafka_with_retry
from services.core.config import Settings
from services.core.contracts import WireContracts, load_contracts
from services.core.kafka import TopicNames, consumer_config, producer_config
from services.core.runtime import (
    HealthEndpoints,
    run_until_signalled,
    service_settings,
    start_http,
)
from services.core.schema_topic import schema_resolver
from services.writer.loop import LoopSettings, WriterLoop
from services.writer.stores import open_store
from services.writer.stores.base import ProfileStore

log = logging.getLogger(__name__)


class NotReady(Exception):
    pass


class WriterThread:
    """Runs the WriterLoop on its own thread; the event loop only watches it."""

    def __init__(self, settings: Settings, *, contracts: WireContracts) -> None:
        self._settings = settings
        self._contracts = contracts
        self._topics = TopicNames.from_settings(settings.kafka)
        self.group = f"{settings.kafka.topics.prefix}writer"
        self.started = threading.Event()
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="writer-loop")
        self._finished = asyncio.Event()
        self._event_loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._thread.start()

    async def finished(self) -> None:
        await self._finished.wait()

    async def join(self) -> None:
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    async def ready(self) -> None:
        if self.failure is not None:
            raise NotReady(f"consumer loop failed: {self.failure}")
        if not self.started.is_set():
            raise NotReady("consumer loop not started")

    def _run(self) -> None:
        store = open_store(self._settings.store)
        try:
            store.migrate()
            self._loop(store).run()
        except BaseException as exc:
            self.failure = exc
            log.exception("writer loop failed")
        finally:
            store.close()
            if self._event_loop is not None:
                self._event_loop.call_soon_threadsafe(self._finished.set)

    def _loop(self, store: ProfileStore) -> WriterLoop:
        kafka = self._settings.kafka
        writer = self._settings.services.writer
        self.started.set()
        return WriterLoop(
            consumer=Consumer(
                consumer_config(kafka, client_id="crmsync-writer", group_id=self.group)
            ),
            producer=Producer(producer_config(kafka, client_id="crmsync-writer")),
            store=store,
            updates=self._contracts.profile_update,
            rejected=self._contracts.rejected_event,
            settings=LoopSettings(
                topic=self._topics.profile_updates,
                rejected_topic=self._topics.rejected,
                batch_max_records=writer.batch_max_records,
                batch_max_wait_ms=writer.batch_max_wait_ms,
            ),
            stop=self.stop,
        )


async def run(settings: Settings, *, stop: asyncio.Event) -> None:
    contracts = load_contracts()
    writer_thread = WriterThread(settings, contracts=contracts)
    contracts.catalog.add_resolver(
        schema_resolver(settings.kafka, client_id="crmsync-writer-schemas")
    )

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

    health = HealthEndpoints(service="writer")
    health.add_check("store", store_ready)
    health.add_check("kafka", writer_thread.ready)
    app = web.Application()
    health.install(app)
    http = settings.services.writer.http
    runner = await start_http(app, host=http.host, port=http.port)
    try:
        if await prepare_kafka_with_retry(
            settings.kafka, catalog=contracts.catalog, client_id="crmsync-writer", stop=stop
        ):
            writer_thread.start()
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait(
                [stopping, asyncio.create_task(writer_thread.finished())],
                return_when=asyncio.FIRST_COMPLETED,
            )
            stopping.cancel()
    finally:
        writer_thread.stop.set()
        await writer_thread.join()
        await runner.cleanup()
        log.info("writer stopped")
    if writer_thread.failure is not None:
        raise SystemExit(1)


def main() -> None:
    settings = service_settings("writer")
    run_until_signalled(lambda stop: run(settings, stop=stop))
