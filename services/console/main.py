"""The console service: the sync console's pages on their own listener, and the
indexer that keeps its index current (on its own thread).

Start: listen for HTTP, prepare Kafka (topics, schemas) with retries, then start
indexing. The pages answer from the first moment, from what the index holds. The
watcher (watch.py) tells the notifier what it sees, every ``watch_seconds``. Stop (SIGTERM): the
indexer commits the batch in hand and returns; the notifier sends what waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from datetime import timedelta

from aiohttp import web

from services.console.auth import Tokens
from services.console.index import ConsoleIndex
from services.console.indexer import Indexer
from services.console.pushes import PushRunner
from services.console.replay import Replayer
from services.console.rows import MessageRows
from services.console.views import IngestAdmin, Views
from services.console.watch import Watcher
from services.console.web import Console
from services.core.codecs import load_contracts
from services.core.config import Settings, config_path
from services.core.kafka import TopicNames, producer_config, reader_config
from services.core.loop_service import LoopThread, serve_loop
from services.core.runtime import HealthEndpoints, run_until_signalled, service_settings
from services.core.schema_topic import schema_resolver
from services.notify.notifier import Notifier

log = logging.getLogger(__name__)

INDEX_FILE = "console.db"


class NotReady(Exception):
    pass


async def run(settings: Settings, *, stop: asyncio.Event) -> None:
    console = settings.services.console
    contracts = load_contracts()
    contracts.catalog.add_resolver(
        schema_resolver(settings.kafka, client_id="crmsync-console-schemas")
    )
    topics = TopicNames.from_settings(settings.kafka)
    index = ConsoleIndex(console.data_dir / INDEX_FILE)
    indexer = Indexer(
        consumer_config=reader_config(settings.kafka, client_id="crmsync-console-index"),
        rows=MessageRows(
            topics=topics,
            contracts=contracts,
            email_fields={name: s.email_field for name, s in settings.sources.items()},
        ),
        index=ConsoleIndex(console.data_dir / INDEX_FILE),
        retention=timedelta(days=console.retention_days),
    )
    ingest = IngestAdmin(settings)
    replayer = Replayer(
        topics=topics,
        contracts=contracts,
        producer_config=producer_config(settings.kafka, client_id="crmsync-console-replay"),
        reader_config=reader_config(settings.kafka, client_id="crmsync-console-replay"),
    )
    read_token = console.read_token.resolve() if console.read_token else None
    admin_token = (
        settings.services.ingest.admin_token.resolve()
        if settings.services.ingest.admin_token
        else None
    )
    pushes = PushRunner(config=config_path(), logs=console.data_dir)
    views = Views(settings=settings, index=index, ingest=ingest, pushes=pushes)
    pages = Console(
        views=views,
        index=index,
        ingest=ingest,
        replayer=replayer,
        tokens=Tokens(read=read_token, admin=admin_token),
        pushes=pushes,
        destinations=set(settings.destinations),
    )

    def index_body(stop_loop: threading.Event) -> None:
        indexer.run(stop_loop)

    loop = LoopThread("console-indexer", index_body)

    async def indexer_ready() -> None:
        if loop.failure is not None:
            raise NotReady(f"indexer failed: {loop.failure}")

    def routes(app: web.Application) -> None:
        pages.install(app)

    health = HealthEndpoints(service="console")
    health.add_check("indexer", indexer_ready)
    notifier = Notifier(settings.notifications)
    await notifier.start()
    watcher = Watcher(overview=views.overview, index=index, notifier=notifier)
    watching = asyncio.create_task(
        watcher.run(stop, every_s=console.watch_seconds), name="console-watcher"
    )
    try:
        await serve_loop(
            service="console",
            kafka=settings.kafka,
            catalog=contracts.catalog,
            http=console.http,
            health=health,
            loops=[loop],
            stop=stop,
            routes=routes,
        )
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await notifier.close()
        await asyncio.to_thread(pushes.close)
        replayer.close()
        await ingest.close()
        index.close()


def main() -> None:
    settings = service_settings("console")
    run_until_signalled(lambda stop: run(settings, stop=stop))
