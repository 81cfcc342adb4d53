"""A crash point kills (or stops) its process at the named pass, and only there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from services.core.crash_points import CRASH_ENV, FREEZE_ENV

# Passes crash point "here" five times, printing the pass before each.
PASSES = """
from services.core.crash_points import crash_point
for n in range(1, 6):
    print(n, flush=True)
    crash_point("here")
print("done", flush=True)
"""


def run(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PASSES],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_crash_point_does_nothing_unless_named() -> None:
    process = run({CRASH_ENV: "elsewhere", FREEZE_ENV: "elsewhere:2"})
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert out.split() == ["1", "2", "3", "4", "5", "done"]


def test_a_named_crash_point_kills_the_process_at_its_nth_pass() -> None:
    process = run({CRASH_ENV: "here:3"})
    out, _ = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert out.split() == ["1", "2", "3"]


def test_a_named_freeze_point_stops_the_process_until_it_is_woken() -> None:
    process = run({FREEZE_ENV: "here:2"})
    try:
        pid, status = os.waitpid(process.pid, os.WUNTRACED)
        assert pid == process.pid and os.WIFSTOPPED(status)
        assert os.WSTOPSIG(status) == signal.SIGSTOP
        time.sleep(0.2)
        assert process.poll() is None
    finally:
        os.kill(process.pid, signal.SIGCONT)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert out.split() == ["1", "2", "3", "4", "5", "done"]
