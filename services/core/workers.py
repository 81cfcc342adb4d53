"""Extra worker processes of one service, started and watched by worker 0.

One Python process is bound to one core by the GIL, so a CPU-bound service runs
``workers`` processes from one config (ingest: webhook processes sharing the port;
the mapper: members of its consumer group). The process started as the service is
worker 0: it starts workers 1.. as ``python -m <module> --worker i --parent <pid>``,
restarts one that dies, and stops them with SIGTERM (each then finishes the work in
hand). A worker whose parent is gone stops by itself, so none is ever left behind.

A worker that keeps dying soon after it starts is restarted after a delay that doubles
each time (up to half a minute): a worker that cannot start does not spin, and while
it is down its service's /healthz says so (services.core.worker_status).

Nothing here imports the metrics: the launcher imports this module before it has
chosen Prometheus' multiprocess mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from services.core.retry import Backoff, RetryPolicy

log = logging.getLogger(__name__)

# The directory worker 0 shares with its workers (combined metrics, status reports).
WORKERS_DIR_ENV: Final = "CRMSYNC_WORKERS_DIR"
STOP_TIMEOUT_S: Final = 40.0
RESTART_DELAY_S: Final = 1.0
# Restart delays: 1 s doubling to 30 s without jitter (one supervisor, nobody to be
# out of step with).
RESTART: Final = RetryPolicy(initial_s=RESTART_DELAY_S, max_s=30.0, jitter=False)
# A worker that ran this long before it died is restarted after the first delay again.
STEADY_AFTER_S: Final = 60.0
TICK_S: Final = 0.2

WorkerEnviron = Callable[[int], Mapping[str, str]]
"""What a worker's environment adds to worker 0's (its own identity, say)."""


@dataclass(frozen=True)
class WorkerState:
    pid: int
    exit_code: int | None
    """None while it runs."""
    up_s: float
    """Seconds since this process of the worker started."""


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    started: float
    restarts: Backoff
    """The delays of its restarts since it last ran steadily."""
    delay_s: float = 0.0
    """The delay it is restarted after, once it died."""
    died: float | None = None


class WorkerPool:
    """Workers 1..``workers``-1 of ``python -m module``; worker 0 is this process."""

    def __init__(self, *, module: str, workers: int, environ: WorkerEnviron | None = None) -> None:
        self._module = module
        self._count = workers
        self._environ = environ
        self._workers: dict[int, _Worker] = {}

    @property
    def extra(self) -> range:
        return range(1, self._count)

    def state(self, worker: int) -> WorkerState | None:
        """None before the worker was first started."""
        entry = self._workers.get(worker)
        if entry is None:
            return None
        return WorkerState(
            pid=entry.process.pid,
            exit_code=entry.process.poll(),
            up_s=time.monotonic() - entry.started,
        )

    def _spawn(self, worker: int, *, restarts: Backoff | None = None) -> None:
        env = None
        if self._environ is not None:
            env = {**os.environ, **self._environ(worker)}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self._module,
                "--worker",
                str(worker),
                "--parent",
                str(os.getpid()),
            ],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self._workers[worker] = _Worker(
            process, started=time.monotonic(), restarts=restarts or Backoff(RESTART)
        )
        log.info("worker started worker=%s pid=%s", worker, process.pid)

    async def supervise(self, stop: asyncio.Event) -> None:
        """Start the workers, restart those that die; once ``stop`` is set (or this is
        cancelled), send them SIGTERM at once, so they stop alongside worker 0."""
        try:
            for worker in self.extra:
                self._spawn(worker)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=TICK_S)
                if not stop.is_set():
                    self._restart_dead()
        finally:
            self.terminate()

    def _restart_dead(self) -> None:
        now = time.monotonic()
        for worker, entry in list(self._workers.items()):
            if entry.died is None:
                code = entry.process.poll()
                if code is None:
                    continue
                entry.died = now
                lived = now - entry.started
                if lived >= STEADY_AFTER_S:
                    entry.restarts.reset()
                delay = entry.restarts.next_wait_s()
                entry.delay_s = delay
                log.error(
                    "worker exited worker=%s code=%s after %.0fs; restarting in %.0fs",
                    worker,
                    code,
                    lived,
                    delay,
                )
                _forget_metrics(entry.process.pid)
            if now - entry.died >= entry.delay_s:
                self._spawn(worker, restarts=entry.restarts)

    def terminate(self) -> None:
        for entry in self._workers.values():
            if entry.process.poll() is None:
                entry.process.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        for worker, entry in self._workers.items():
            try:
                entry.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("worker ignored SIGTERM worker=%s; killing", worker)
                entry.process.kill()
                entry.process.wait()
            _forget_metrics(entry.process.pid)


def _forget_metrics(pid: int) -> None:
    """Drop a dead worker's live gauges from the combined metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


async def exit_with_parent(parent: int, stop: asyncio.Event) -> None:
    """Set ``stop`` when the parent worker is gone (this process was re-parented)."""
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("parent worker gone; stopping")
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
