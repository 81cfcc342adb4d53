"""Is a stream loop still making progress? Seen by /healthz, a metric and the log.

A loop beats after every unit of work that moved it on: a batch committed, an empty
poll, a chunk of state restored. A loop stuck in a call that never returns, one that
aborts the same batch again and again, or one waiting on a coordinator that never
answers stops beating. Past ``stall_after_s`` without a beat ``/healthz`` fails (an
orchestrator restarts the process), ``crmsync_loop_stalled`` is 1 and a warning
names how long it has been.
"""

from __future__ import annotations

import time
from typing import Final

from services.core import metrics

# Twice the mapper's transaction timeout: a healthy loop beats far more often.
DEFAULT_STALL_AFTER_S: Final = 120.0


class LoopStalled(Exception):
    pass


class Progress:
    def __init__(self, service: str, *, stall_after_s: float = DEFAULT_STALL_AFTER_S) -> None:
        self.service = service
        self.stall_after_s = stall_after_s
        self._last_beat = time.monotonic()
        self._what = "starting"

    def beat(self, what: str) -> None:
        """The loop moved on (``what`` it did last, for the health answer)."""
        self._last_beat = time.monotonic()
        self._what = what

    def quiet_s(self) -> float:
        return time.monotonic() - self._last_beat

    def check(self) -> None:
        """Raises LoopStalled when the loop has not moved on for too long."""
        quiet = self.quiet_s()
        stalled = quiet > self.stall_after_s
        metrics.LOOP_STALLED.labels(self.service).set(1 if stalled else 0)
        if stalled:
            raise LoopStalled(
                f"no progress for {quiet:.0f}s (last: {self._what}); "
                f"the limit is {self.stall_after_s:.0f}s"
            )
