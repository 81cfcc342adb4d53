"""Worker 0 and its workers (services.core.workers, services.core.worker_status): a dead
worker is restarted, later sooner than one that keeps dying, and worker 0's /healthz and
/readyz answer for every worker from their reports.

The workers are real processes (tests.support.idle_worker), so the pool is tested
with the processes, signals and exit codes it handles in production.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from services.core.progress import LoopStalled
from services.core.runtime import HealthEndpoints
from services.core.worker_status import (
    SILENT_AFTER_S,
    WorkerNotReady,
    WorkerStatus,
    answer_for_workers,
    read_status,
    report_status,
    status_path,
    write_status,
)
from services.core.workers import RESTART_DELAY_S, WORKERS_DIR_ENV, WorkerPool, WorkerState

pytestmark = pytest.mark.unit


@pytest_asyncio.fixture
async def pool(tmp_path: Path) -> AsyncIterator[tuple[WorkerPool, asyncio.Event]]:
    """Workers 1 and 2 of an idle module, supervised until the test ends."""
    workers = WorkerPool(
        module="tests.support.idle_worker",
        workers=3,
        environ=lambda _worker: {WORKERS_DIR_ENV: str(tmp_path)},
    )
    stop = asyncio.Event()
    supervisor = asyncio.create_task(workers.supervise(stop))
    try:
        await until(lambda: all(ready(workers, tmp_path, w) for w in (1, 2)), what="started")
        yield workers, stop
    finally:
        stop.set()
        await supervisor
        await asyncio.to_thread(workers.wait)


def ready(workers: WorkerPool, directory: Path, worker: int) -> bool:
    """The worker's running process handles SIGTERM."""
    state = running(workers, worker)
    marker = directory / f"worker-{worker}.ready"
    return state is not None and marker.exists() and marker.read_text() == str(state.pid)


def running(workers: WorkerPool, worker: int) -> WorkerState | None:
    state = workers.state(worker)
    return state if state is not None and state.exit_code is None else None


async def until(condition: Callable[[], object], *, what: str, timeout_s: float = 20) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what}: not within {timeout_s}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def current(workers: WorkerPool, worker: int) -> WorkerState:
    state = workers.state(worker)
    assert state is not None
    return state


@pytest.mark.asyncio
async def test_a_killed_worker_is_restarted_and_one_that_keeps_dying_waits_longer(
    pool: tuple[WorkerPool, asyncio.Event],
) -> None:
    workers, _stop = pool
    first = current(workers, 1).pid
    other = current(workers, 2).pid
    os.kill(first, signal.SIGKILL)
    await until(lambda: current(workers, 1).exit_code == -signal.SIGKILL, what="seen dead")
    waited = await until(lambda: running(workers, 1), what="restarted")
    second = current(workers, 1).pid
    assert second != first
    assert waited >= RESTART_DELAY_S - 0.3
    # Dying again soon after its restart: the next restart waits twice as long.
    os.kill(second, signal.SIGKILL)
    await until(lambda: current(workers, 1).exit_code is not None, what="seen dead again")
    waited = await until(lambda: running(workers, 1), what="restarted again")
    assert waited >= 2 * RESTART_DELAY_S - 0.3
    # The other worker was left alone.
    assert current(workers, 2).pid == other


@pytest.mark.asyncio
async def test_stop_ends_every_worker(pool: tuple[WorkerPool, asyncio.Event]) -> None:
    workers, stop = pool
    pids = [current(workers, w).pid for w in (1, 2)]
    stop.set()
    await asyncio.to_thread(workers.wait)
    assert [current(workers, w).exit_code for w in (1, 2)] == [0, 0], pids


@pytest.mark.asyncio
async def test_worker_0_answers_for_its_workers(
    pool: tuple[WorkerPool, asyncio.Event], tmp_path: Path
) -> None:
    workers, _stop = pool
    health = HealthEndpoints(service="mapper")
    answer_for_workers(health, workers, tmp_path)
    pid = current(workers, 1).pid
    other = current(workers, 2).pid

    def report(
        worker_pid: int,
        *,
        at: float | None = None,
        stalled: dict[str, str] | None = None,
        not_ready: dict[str, str] | None = None,
    ) -> None:
        worker = 1 if worker_pid == pid else 2
        write_status(
            status_path(tmp_path, worker),
            WorkerStatus(
                pid=worker_pid,
                at=time.time() if at is None else at,
                stalled=stalled or {},
                not_ready=not_ready or {},
            ),
        )

    # Fresh workers that have not reported yet: alive (starting), not ready.
    assert health.stalled() == {}
    assert await health.not_ready() == {"worker-1": "starting", "worker-2": "starting"}

    report(pid)
    report(other)
    assert health.stalled() == {}
    assert await health.not_ready() == {}

    report(pid, not_ready={"kafka": "no partitions assigned and restored yet"})
    assert await health.not_ready() == {
        "worker-1": "kafka: no partitions assigned and restored yet"
    }

    report(pid, stalled={"stream": "no progress for 130s"})
    assert health.stalled() == {"worker-1": "stream: no progress for 130s"}

    report(pid, at=time.time() - SILENT_AFTER_S - 5)
    assert health.stalled()["worker-1"].startswith("no status report for 2")

    # A report its former process left says nothing about the running one.
    report(pid)
    os.kill(pid, signal.SIGKILL)
    await until(lambda: current(workers, 1).exit_code is not None, what="seen dead")
    assert health.stalled()["worker-1"].startswith("not running (exited with -9)")
    assert await health.not_ready() == {"worker-1": "not running"}
    await until(lambda: running(workers, 1), what="restarted")
    assert await health.not_ready() == {"worker-1": "starting"}
    assert health.stalled() == {}


def test_a_worker_silent_since_it_started_is_not_alive(tmp_path: Path) -> None:
    class Pool(WorkerPool):
        def state(self, worker: int) -> WorkerState | None:
            return WorkerState(pid=4242, exit_code=None, up_s=SILENT_AFTER_S + 1)

    health = HealthEndpoints(service="mapper")
    answer_for_workers(health, Pool(module="unused", workers=2), tmp_path)
    assert health.stalled() == {"worker-1": "no status report since it started 16s ago"}


@pytest.mark.asyncio
async def test_a_worker_reports_what_its_own_checks_say(tmp_path: Path) -> None:
    health = HealthEndpoints(service="mapper")

    async def not_assigned() -> None:
        raise WorkerNotReady("no partitions assigned and restored yet")

    def stuck() -> None:
        raise LoopStalled("no progress for 130s")

    health.add_check("kafka", not_assigned)
    health.add_liveness("stream", stuck)
    stop = asyncio.Event()
    path = status_path(tmp_path, 3)
    reporter = asyncio.create_task(report_status(path, health, stop))
    await until(lambda: read_status(path) is not None, what="first report")
    stop.set()
    await reporter
    status = read_status(path)
    assert status is not None
    assert status.pid == os.getpid()
    assert status.not_ready == {"kafka": "no partitions assigned and restored yet"}
    assert status.stalled == {"stream": "no progress for 130s"}
    assert abs(status.at - time.time()) < 5


def test_an_unreadable_report_is_no_report(tmp_path: Path) -> None:
    path = status_path(tmp_path, 1)
    assert read_status(path) is None
    path.write_text("{not json")
    assert read_status(path) is None
    path.write_text('{"pid": 1}')
    assert read_status(path) is None


def test_the_launcher_chooses_the_metrics_mode_before_anything_imports_them() -> None:
    # prometheus_client reads PROMETHEUS_MULTIPROC_DIR when it is imported.
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, services.core.launcher; print('prometheus_client' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.strip() == "False"
