"""Progress of the CLI's long work (a full sync followed, a CSV import, a push): a bar on
a terminal, plain lines everywhere else.

A command reports each step as a count (done, and the total when known) and as the
plain line it has always printed. On a terminal (stderr is a TTY) a tqdm bar on stderr
shows the count, the rate and the ETA, and the lines are not printed; anywhere else
(scripts, CI, tests) the lines are printed as before, since those read them. The
lines go to ``notes``: stdout, or stderr when ``--json`` keeps stdout for the JSON.
"""

from __future__ import annotations

import os
import sys
import time
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Never, TextIO

from tqdm import tqdm


class Progress(ABC):
    """One piece of long work's progress; ``end`` (or leaving the ``with``) closes it."""

    @abstractmethod
    def step(self, *, done: int, total: int | None, line: str, note: str = "") -> None:
        """``done`` of ``total``; ``line`` says it in plain words, ``note`` is what the
        bar adds after its figures."""

    @abstractmethod
    def end(self, line: str | None = None) -> None:
        """Close, leaving ``line`` as the last word (once, however the progress showed)."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        _kind: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.end()


class PlainLines(Progress):
    """Each step's line, at most one per ``every_s`` seconds (the first after that)."""

    def __init__(self, notes: TextIO, *, every_s: float = 0.0) -> None:
        self._notes = notes
        self._every_s = every_s
        self._printed_at = time.monotonic()
        self._last: str | None = None

    def step(self, *, done: int, total: int | None, line: str, note: str = "") -> None:
        now = time.monotonic()
        if self._every_s and now - self._printed_at < self._every_s:
            return
        self._say(line)
        self._printed_at = now

    def end(self, line: str | None = None) -> None:
        # A follow loop's last step is usually its last word too: said once.
        if line is not None and line != self._last:
            self._say(line)

    def _say(self, line: str) -> None:
        print(line, file=self._notes, flush=True)
        self._last = line


class ProgressBar(Progress):
    """A tqdm bar, opened at the first step so its rate counts only what it saw move
    (a full sync followed halfway through does not start at zero)."""

    def __init__(self, *, terminal: TextIO, notes: TextIO, unit: str, label: str) -> None:
        self._terminal = terminal
        self._notes = notes
        self._unit = unit
        self._label = label
        self._bar: tqdm[Never] | None = None
        self._ended = False

    def step(self, *, done: int, total: int | None, line: str, note: str = "") -> None:
        if self._bar is None:
            columns, lines = terminal_size(self._terminal)
            self._bar = tqdm(
                desc=self._label,
                total=total,
                initial=done,
                unit=self._unit,
                file=self._terminal,
                ncols=columns,
                nrows=lines,
                postfix=note or None,
            )
        bar = self._bar
        if total is not None:
            # A push may pass the count it started with (profiles created meanwhile).
            bar.total = max(total, done)
        if note:
            bar.set_postfix_str(note, refresh=False)
        if done >= bar.n:
            bar.update(done - bar.n)
        else:  # a backlog that grew again: the bar goes back
            bar.n = done
            bar.refresh()

    def end(self, line: str | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        if self._bar is not None:
            self._bar.close()
        if line is not None:
            print(line, file=self._notes, flush=True)


def terminal_size(terminal: TextIO) -> tuple[int, int]:
    """(columns, lines), 80x24 where the terminal reports none: tqdm draws nothing on
    a terminal of size 0 (one a script or a container opened without a size)."""
    try:
        columns, lines = os.get_terminal_size(terminal.fileno())
    except (OSError, ValueError):
        return 80, 24
    return columns or 80, lines or 24


def progress_for(
    *,
    unit: str,
    label: str,
    notes: TextIO,
    every_s: float = 0.0,
    terminal: TextIO | None = None,
) -> Progress:
    """A bar on ``terminal`` (stderr by default) when it is a TTY, else plain lines to
    ``notes`` (at most one per ``every_s`` seconds)."""
    shown_on = terminal if terminal is not None else sys.stderr
    if shown_on.isatty():
        return ProgressBar(terminal=shown_on, notes=notes, unit=unit, label=label)
    return PlainLines(notes, every_s=every_s)
