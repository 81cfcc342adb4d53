"""Extra webhook workers: processes that share ingest's public port.

One Python process is bound to one core by the GIL; webhook ingest is CPU-bound
(parse, verify, encode), so ``services.ingest.workers`` > 1 runs more processes on
the same port (the kernel spreads connections over them with SO_REUSEPORT). Worker 0
starts the others, restarts one that dies, and stops them with SIGTERM (each then
finishes its in-flight requests and flushes its producer). A worker whose parent is
gone stops by itself, so none is ever left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from typing import Final

log = logging.getLogger(__name__)

STOP_TIMEOUT_S: Final = 40.0
RESTART_DELAY_S: Final = 1.0


class WorkerPool:
    def __init__(self, *, count: int) -> None:
        self._count = count
        self._processes: dict[int, subprocess.Popen[bytes]] = {}

    def _spawn(self, worker: int) -> None:
        self._processes[worker] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.ingest",
                "--worker",
                str(worker),
                "--parent",
                str(os.getpid()),
            ],
            stdin=subprocess.DEVNULL,
        )
        log.info("worker started worker=%s pid=%s", worker, self._processes[worker].pid)

    async def supervise(self, stop: asyncio.Event) -> None:
        for worker in range(1, self._count + 1):
            self._spawn(worker)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=RESTART_DELAY_S)
            for worker, process in list(self._processes.items()):
                code = process.poll()
                if code is not None and not stop.is_set():
                    log.error("worker exited worker=%s code=%s; restarting", worker, code)
                    _forget_metrics(process.pid)
                    self._spawn(worker)

    def terminate(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        for worker, process in self._processes.items():
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("worker ignored SIGTERM worker=%s; killing", worker)
                process.kill()
                process.wait()
            _forget_metrics(process.pid)


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
