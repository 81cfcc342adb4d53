"""Start one process of a service that may run as several workers (``workers`` > 1).

Before anything imports the metrics, worker 0 of a multi-worker service makes a
directory it shares with its workers: Prometheus' multiprocess mode keeps every
process's samples there, so /metrics on worker 0 shows the sum over all of them
(prometheus_client's mode must be chosen before it is imported, hence this small
module in front of the service's ``run``), and the workers report their health there
(services.core.worker_status). With one worker none of this happens: the process runs
as a plain single process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, Protocol

from services.core.config import ConfigError, Settings, load_settings
from services.core.logs import configure_logging
from services.core.workers import WORKERS_DIR_ENV

MULTIPROCESS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


class ServiceRun(Protocol):
    def __call__(
        self, settings: Settings, *, stop: asyncio.Event, worker: int
    ) -> Awaitable[None]: ...


def launch(
    service: str, *, workers: Callable[[Settings], int], load_run: Callable[[], ServiceRun]
) -> None:
    """Parse the worker arguments, load the config and run ``load_run()`` (which
    imports the service only now, see the module docstring) until SIGTERM."""
    parser = argparse.ArgumentParser(prog=f"crmsync-{service}")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging(service=service)
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(2) from None
    several = workers(settings) > 1
    if several:
        # The workers share one log: each line says which worker wrote it.
        configure_logging(service=service, worker=args.worker)
    own_dir = None
    if args.worker == 0 and several:
        own_dir = Path(tempfile.mkdtemp(prefix=f"crmsync-{service}-workers-"))
        (own_dir / "metrics").mkdir()
        os.environ[MULTIPROCESS_DIR_ENV] = str(own_dir / "metrics")
        os.environ[WORKERS_DIR_ENV] = str(own_dir)
    try:
        from services.core.runtime import stop_on_signals
        from services.core.workers import exit_with_parent

        run = load_run()

        async def serve() -> None:
            stop = asyncio.Event()
            stop_on_signals(stop)
            watchdog = (
                asyncio.create_task(exit_with_parent(args.parent, stop))
                if args.parent is not None
                else None
            )
            await run(settings, stop=stop, worker=args.worker)
            if watchdog is not None:
                watchdog.cancel()

        asyncio.run(serve())
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
