"""Backfills started from the console: ``crmsync destination push NAME`` as a child
process, one at a time per destination.

The push is the CLI's own (services/cli/destination_command.py): it queues every
profile's snapshot in the store's outbox a batch per transaction, and a push that is
stopped resumes after the last batch it committed. So cancelling is stopping the
child (SIGTERM): what it queued is delivered, and the next start goes on from there.
Its progress is read from the store (``push_progress``), as ``crmsync status`` does;
its output goes to ``<data_dir>/push-<destination>.log``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

STOP_TIMEOUT_S: Final = 30.0


class PushRunner:
    def __init__(self, *, config: Path, logs: Path) -> None:
        self._config = config
        self._logs = logs
        self._running: dict[str, subprocess.Popen[bytes]] = {}

    def running(self, destination: str) -> bool:
        child = self._running.get(destination)
        if child is not None and child.poll() is not None:
            del self._running[destination]
            log.info("push of %s ended with code %s", destination, child.returncode)
            return False
        return child is not None

    def start(self, destination: str) -> bool:
        """Start a push; False when one is running already."""
        if self.running(destination):
            return False
        self._logs.mkdir(parents=True, exist_ok=True)
        with (self._logs / f"push-{destination}.log").open("ab") as output:
            self._running[destination] = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "services.cli", "--config", str(self._config)),
                    *("destination", "push", destination),
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        log.info("push of %s started", destination)
        return True

    def cancel(self, destination: str) -> bool:
        """Stop a running push (it resumes from its last batch when started again);
        False when none runs."""
        if not self.running(destination):
            return False
        child = self._running.pop(destination)
        child.terminate()
        try:
            child.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.info("push of %s cancelled", destination)
        return True

    def close(self) -> None:
        for destination in list(self._running):
            self.cancel(destination)
