"""Named crash points, for the tests that prove a service loses nothing to a kill -9.

A crash point does nothing unless ``CRMSYNC_CRASH_AT`` names it, as ``NAME`` or
``NAME:N`` (the N-th time it is passed, default the first). Then the process kills
itself with SIGKILL at that exact moment: no finally blocks, no flushes, as a power
cut or the OOM killer would. Production never sets the variable.
"""

from __future__ import annotations

import os
import signal
from typing import Final

CRASH_ENV: Final = "CRMSYNC_CRASH_AT"
_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    target, _, nth = wanted.partition(":")
    if target != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
