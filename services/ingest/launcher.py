"""``crmsync-ingest`` / ``python -m services.ingest``: start one ingest worker.

Before anything imports the metrics, worker 0 of a multi-worker ingest points
Prometheus at a directory shared with its workers, so /metrics on any worker shows
the sum over all of them (prometheus_client's multiprocess mode must be chosen
before it is imported, hence this small module in front of ``main``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile

from services.core.config import ConfigError, load_settings
from services.core.logs import configure_logging

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def main() -> None:
    parser = argparse.ArgumentParser(prog="crmsync-ingest")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging(service="ingest")
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(2) from None
    own_metrics_dir = None
    if args.worker == 0 and settings.services.ingest.workers > 1:
        own_metrics_dir = tempfile.mkdtemp(prefix="crmsync-ingest-metrics-")
        os.environ[MULTIPROCESS_DIR_ENV] = own_metrics_dir
    try:
        # Imported only now: see the module docstring.
        from services.core.runtime import stop_on_signals
        from services.ingest.main import run
        from services.ingest.workers import exit_with_parent

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
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)
