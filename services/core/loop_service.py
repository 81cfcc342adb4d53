"""A service whose work is blocking Kafka loops: each loop on its own thread, HTTP
health on the event loop.

Start: listen for HTTP, prepare Kafka (topics, schemas) with retries, then start the
loop threads. Stop (SIGTERM): the stop event is set; each loop finishes the unit of
work in hand (a batch applied and committed, or not applied at all) and returns. A
loop that fails ends the service with code 1, so that its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence

from aiohttp import web

from services.core.bootstrap import prepare_kafka_with_retry
from services.core.config import HttpListen, KafkaSettings
from services.core.runtime import HealthEndpoints, start_http
from services.core.serde import SchemaCatalog

log = logging.getLogger(__name__)


class LoopThread:
    """Runs ``body(stop)`` on its own thread; the event loop only watches it."""

    def __init__(self, name: str, body: Callable[[threading.Event], None]) -> None:
        self.name = name
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self._body = body
        self._thread = threading.Thread(target=self._run, name=name)
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

    def _run(self) -> None:
        try:
            self._body(self.stop)
        except BaseException as exc:
            self.failure = exc
            log.exception("%s failed", self.name)
        finally:
            if self._event_loop is not None:
                self._event_loop.call_soon_threadsafe(self._finished.set)


async def serve_loop(
    *,
    service: str,
    kafka: KafkaSettings,
    catalog: SchemaCatalog,
    http: HttpListen | None,
    health: HealthEndpoints,
    loops: Sequence[LoopThread],
    stop: asyncio.Event,
    routes: Callable[[web.Application], None] | None = None,
) -> None:
    """``http`` None: no listener (an extra worker, which worker 0 answers for)."""
    runner = None
    if http is not None:
        app = web.Application()
        health.install(app)
        if routes is not None:
            routes(app)
        runner = await start_http(app, host=http.host, port=http.port)
    watcher = asyncio.create_task(health.watch())
    try:
        if await prepare_kafka_with_retry(
            kafka, catalog=catalog, client_id=f"crmsync-{service}", stop=stop
        ):
            for loop in loops:
                loop.start()
            stopping = asyncio.create_task(stop.wait())
            # One loop ending (failed, or done) ends the service.
            await asyncio.wait(
                [stopping, *(asyncio.create_task(loop.finished()) for loop in loops)],
                return_when=asyncio.FIRST_COMPLETED,
            )
            stopping.cancel()
    finally:
        watcher.cancel()
        for loop in loops:
            loop.stop.set()
        for loop in loops:
            await loop.join()
        if runner is not None:
            await runner.cleanup()
        log.info("%s stopped", service)
    if any(loop.failure is not None for loop in loops):
        raise SystemExit(1)
