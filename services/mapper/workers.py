"""Several mapper processes on one host: ``services.mapper.workers``.

The mapper is CPU-bound and one Python process uses one core, so ``workers`` > 1 runs
that many mapper processes from one config, each a full member of the mapper's
consumer group: the group spreads the partitions over them (range assignment keeps
partition p of ``changes`` and ``fullsync`` together, as between hosts).

Each worker has its own identity, so that it is an instance like any other: worker i
is ``<instance_id>-w<i>`` (its transactional id, which fences a restarted worker's
former self, and its static group membership) with its state under
``<data_dir>/w<i>``, where ``instance_id`` and ``data_dir`` are the configured (or
derived) ones. With one worker the instance keeps the plain id and directory, so a
single-process mapper is exactly what it was before workers existed.

The identity travels as the mapper's per-process environment
(``CRMSYNC_MAPPER_INSTANCE_ID``, ``CRMSYNC_MAPPER_DATA_DIR``), which the engine already
reads: worker 0 works out every worker's identity once, takes its own, and starts the
others with theirs (services.core.workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from services.core.config import Settings
from services.core.runtime import HealthEndpoints
from services.core.worker_status import (
    answer_for_workers,
    report_status,
    status_path,
    workers_dir,
)
from services.core.workers import WorkerPool
from services.mapper.engine import DATA_DIR_ENV, INSTANCE_ID_ENV, EngineSettings


@dataclass(frozen=True)
class WorkerIdentity:
    instance_id: str
    data_dir: Path

    def environ(self) -> dict[str, str]:
        return {INSTANCE_ID_ENV: self.instance_id, DATA_DIR_ENV: str(self.data_dir)}


def worker_identities(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> list[WorkerIdentity]:
    """Each worker's identity, from the instance's own (config or environment)."""
    instance = EngineSettings.from_settings(
        settings, dict(os.environ if environ is None else environ)
    )
    count = settings.services.mapper.workers
    if count == 1:
        return [WorkerIdentity(instance.instance_id, instance.data_dir)]
    return [
        WorkerIdentity(f"{instance.instance_id}-w{i}", instance.data_dir / f"w{i}")
        for i in range(count)
    ]


@contextlib.asynccontextmanager
async def worker_role(
    settings: Settings, *, worker: int, health: HealthEndpoints, stop: asyncio.Event
) -> AsyncIterator[None]:
    """What this process does as a worker, around its engine's run: nothing with one
    worker; worker 0 of several takes its identity, starts and restarts the others and
    answers for their health, and stops them with itself; another worker reports its
    health to worker 0."""
    if settings.services.mapper.workers == 1:
        yield
        return
    if worker > 0:
        reporter = asyncio.create_task(
            report_status(status_path(workers_dir(), worker), health, stop)
        )
        try:
            yield
        finally:
            reporter.cancel()
        return
    identities = worker_identities(settings)
    # The engine reads its identity from the environment when it is built.
    os.environ.update(identities[0].environ())
    pool = WorkerPool(
        module="services.mapper",
        workers=len(identities),
        environ=lambda i: identities[i].environ(),
    )
    answer_for_workers(health, pool, workers_dir())
    supervisor = asyncio.create_task(pool.supervise(stop))
    try:
        yield
    finally:
        # SIGTERM to the workers (supervise sends it as soon as ``stop`` is set; this is
        # for worker 0's own engine failing), then wait for their transactions in hand.
        pool.terminate()
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        await asyncio.to_thread(pool.wait)
