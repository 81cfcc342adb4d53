"""Named crash points, for the tests that prove a service loses nothing to a kill -9
or to a process that stalls past its session.

A crash point does nothing unless ``CRMSYNC_CRASH_AT`` or ``CRMSYNC_FREEZE_AT`` names
it, as ``NAME`` or ``NAME:N`` (the N-th time it is passed, default the first).
Named in ``CRMSYNC_CRASH_AT``, the process kills itself with SIGKILL at that exact
moment: no finally blocks, no flushes, as a power cut or the OOM killer would. Named
in ``CRMSYNC_FREEZE_AT``, it stops itself with SIGSTOP there, as a long pause of its
host would, until a SIGCONT wakes it; first it waits ``FREEZE_AFTER_S`` with only its
background threads running, so that what the Kafka client holds for its linger is on
the broker when it stops. Production never sets either variable.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Final

CRASH_ENV: Final = "CRMSYNC_CRASH_AT"
FREEZE_ENV: Final = "CRMSYNC_FREEZE_AT"
# Longer than the producers' linger (100 ms) and a round trip to the broker.
FREEZE_AFTER_S: Final = 0.5
_passes: dict[tuple[str, str], int] = {}


def crash_point(name: str) -> None:
    if _reached(CRASH_ENV, name):
        os.kill(os.getpid(), signal.SIGKILL)
    if _reached(FREEZE_ENV, name):
        time.sleep(FREEZE_AFTER_S)
        os.kill(os.getpid(), signal.SIGSTOP)


def _reached(env: str, name: str) -> bool:
    """Whether this pass of crash point ``name`` is the one ``env`` names."""
    wanted = os.environ.get(env)
    if not wanted:
        return False
    target, _, nth = wanted.partition(":")
    if target != name:
        return False
    _passes[env, name] = _passes.get((env, name), 0) + 1
    return _passes[env, name] == int(nth or 1)
