"""How worker 0 answers for its workers' health: each worker reports to a file.

Only worker 0 listens on the service's port, so its /healthz and /readyz must speak for
every worker. A worker writes what its own checks say (is its loop moving on, is it
ready) to ``worker-<i>.json`` in the directory worker 0 shares with it
(services.core.workers.WORKERS_DIR_ENV), every second; worker 0 reads the reports when
asked. /healthz fails for a worker that is not running (until its restart), whose loop
is stalled, or that stopped reporting (its event loop is stuck); /readyz fails until
every worker reports ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from services.core.progress import LoopStalled
from services.core.runtime import HealthEndpoints
from services.core.workers import WORKERS_DIR_ENV, WorkerPool

REPORT_EVERY_S: Final = 1.0
# A worker reports every second: this long without a report, its event loop is stuck
# (a fresh worker gets as long to import and write its first one).
SILENT_AFTER_S: Final = 15.0


class WorkerNotReady(Exception):
    pass


@dataclass(frozen=True)
class WorkerStatus:
    pid: int
    at: float
    """Wall-clock time of the report."""
    stalled: dict[str, str]
    not_ready: dict[str, str]


def workers_dir() -> Path:
    """The directory worker 0 shares with its workers (set by the launcher)."""
    found = os.environ.get(WORKERS_DIR_ENV)
    if not found:
        raise RuntimeError(f"{WORKERS_DIR_ENV} is not set: start workers through the launcher")
    return Path(found)


def status_path(directory: Path, worker: int) -> Path:
    return directory / f"worker-{worker}.json"


def write_status(path: Path, status: WorkerStatus) -> None:
    # Written aside and renamed, so that a reader never sees half a report.
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(status)))
    partial.replace(path)


def read_status(path: Path) -> WorkerStatus | None:
    try:
        found = json.loads(path.read_text())
        return WorkerStatus(
            pid=int(found["pid"]),
            at=float(found["at"]),
            stalled={str(k): str(v) for k, v in found["stalled"].items()},
            not_ready={str(k): str(v) for k, v in found["not_ready"].items()},
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


async def report_status(path: Path, health: HealthEndpoints, stop: asyncio.Event) -> None:
    """Write this worker's health to ``path`` every second until ``stop``."""
    while not stop.is_set():
        status = WorkerStatus(
            pid=os.getpid(),
            at=time.time(),
            stalled=health.stalled(),
            not_ready=await health.not_ready(),
        )
        await asyncio.to_thread(write_status, path, status)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=REPORT_EVERY_S)


def answer_for_workers(health: HealthEndpoints, pool: WorkerPool, directory: Path) -> None:
    """Make worker 0's /healthz and /readyz fail for any worker that is down, stalled,
    silent or not ready."""
    for worker in pool.extra:
        path = status_path(directory, worker)
        health.add_liveness(f"worker-{worker}", functools.partial(check_alive, pool, worker, path))
        health.add_check(f"worker-{worker}", functools.partial(check_ready, pool, worker, path))


def _current(pool: WorkerPool, worker: int, path: Path) -> WorkerStatus | None:
    """The report of the worker's running process (not one a former process left)."""
    state = pool.state(worker)
    status = read_status(path)
    if state is None or status is None or status.pid != state.pid:
        return None
    return status


def check_alive(pool: WorkerPool, worker: int, path: Path) -> None:
    state = pool.state(worker)
    if state is None:
        return  # worker 0 has not started it yet
    if state.exit_code is not None:
        raise LoopStalled(f"not running (exited with {state.exit_code}); being restarted")
    status = _current(pool, worker, path)
    if status is None:
        if state.up_s > SILENT_AFTER_S:
            raise LoopStalled(f"no status report since it started {state.up_s:.0f}s ago")
        return
    silent = time.time() - status.at
    if silent > SILENT_AFTER_S:
        raise LoopStalled(f"no status report for {silent:.0f}s")
    if status.stalled:
        raise LoopStalled(_join(status.stalled))


async def check_ready(pool: WorkerPool, worker: int, path: Path) -> None:
    state = pool.state(worker)
    if state is None or state.exit_code is not None:
        raise WorkerNotReady("not running")
    status = _current(pool, worker, path)
    if status is None:
        raise WorkerNotReady("starting")
    if status.not_ready:
        raise WorkerNotReady(_join(status.not_ready))


def _join(failures: dict[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in sorted(failures.items()))
