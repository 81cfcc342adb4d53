"""``python -m tests.support.idle_worker --worker I --parent P``: a worker process that
does nothing until SIGTERM or its parent's end, for tests of services.core.workers.

Once it handles SIGTERM it writes ``worker-<i>.ready`` (its pid) into the directory its
environment names (CRMSYNC_WORKERS_DIR), so a test knows when a clean stop is possible.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from services.core.workers import WORKERS_DIR_ENV


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ready = Path(os.environ[WORKERS_DIR_ENV]) / f"worker-{args.worker}.ready"
    ready.write_text(str(os.getpid()))
    # A test that failed half-way leaves no worker behind.
    while not stop.wait(0.2) and os.getppid() == args.parent:
        pass


if __name__ == "__main__":
    main()
