"""The mapper service: the stream engine on its own thread, HTTP health on the event loop.

With ``workers`` > 1 this process is worker 0: it also starts the other workers and
answers for their health on its port; they have no listener (services.mapper.workers).

Stop (SIGTERM): the engine finishes the transaction in hand (committed, or aborted
and left to be consumed again), closes its consumer and exits; worker 0 passes the
SIGTERM on to the other workers, which do the same, and waits for them.
"""

from __future__ import annotations

import asyncio
import threading

from services.core.codecs import load_contracts
from services.core.config import Settings
from services.core.loop_service import LoopThread, serve_loop
from services.core.progress import Progress
from services.core.runtime import HealthEndpoints
from services.core.schema_topic import schema_resolver
from services.mapper.engine import STALL_AFTER_S, MapperEngine
from services.mapper.workers import worker_role


class NotReady(Exception):
    pass


async def run(settings: Settings, *, stop: asyncio.Event, worker: int = 0) -> None:
    contracts = load_contracts()
    contracts.catalog.add_resolver(
        schema_resolver(settings.kafka, client_id="crmsync-mapper-schemas")
    )
    engines: list[MapperEngine] = []
    progress = Progress("mapper", stall_after_s=STALL_AFTER_S)

    def body(stop_engine: threading.Event) -> None:
        engines.append(
            MapperEngine(settings, contracts=contracts, stop=stop_engine, progress=progress)
        )
        engines[0].run()

    loop = LoopThread("mapper-engine", body)

    async def engine_ready() -> None:
        if loop.failure is not None:
            raise NotReady(f"stream engine failed: {loop.failure}")
        if not engines or not engines[0].assigned.is_set():
            raise NotReady("no partitions assigned and restored yet")

    health = HealthEndpoints(service="mapper")
    health.add_check("kafka", engine_ready)
    health.add_liveness("stream", progress.check)
    async with worker_role(settings, worker=worker, health=health, stop=stop):
        await serve_loop(
            service="mapper",
            kafka=settings.kafka,
            catalog=contracts.catalog,
            http=settings.services.mapper.http if worker == 0 else None,
            health=health,
            loops=[loop],
            stop=stop,
        )
