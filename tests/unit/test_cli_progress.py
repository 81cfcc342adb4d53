"""Long CLI work shows a bar on a terminal and the plain lines scripts read elsewhere."""

from __future__ import annotations

import fcntl
import io
import os
import select
import struct
import termios
from collections.abc import Iterator
from typing import TextIO

import pytest

from services.cli.progress import PlainLines, ProgressBar, progress_for, terminal_size

pytestmark = pytest.mark.unit


@pytest.fixture
def terminal() -> Iterator[tuple[TextIO, int]]:
    """A real pseudo-terminal: the stream the CLI writes to, and the side a person reads."""
    reader, writer = os.openpty()
    stream = os.fdopen(writer, "w")
    try:
        yield stream, reader
    finally:
        stream.close()
        os.close(reader)


def read_screen(reader: int) -> str:
    chunks: list[bytes] = []
    while select.select([reader], [], [], 0.2)[0]:
        chunks.append(os.read(reader, 65536))
    return b"".join(chunks).decode()


def test_not_a_terminal_prints_each_steps_line_and_the_last_word_once() -> None:
    notes, not_a_tty = io.StringIO(), io.StringIO()
    with progress_for(unit="rows", label="demo", notes=notes, terminal=not_a_tty) as progress:
        assert isinstance(progress, PlainLines)
        progress.step(done=10, total=None, line="  10 rows, 0 rejected, 10/s")
        progress.step(done=20, total=100, line="demo-1 COMPLETED 20/100")
        progress.end("demo-1 COMPLETED 20/100")
    assert notes.getvalue() == "  10 rows, 0 rejected, 10/s\ndemo-1 COMPLETED 20/100\n"
    assert not_a_tty.getvalue() == ""


def test_plain_lines_can_be_spaced_out() -> None:
    notes = io.StringIO()
    progress = progress_for(
        unit="profiles", label="cdp", notes=notes, every_s=3600, terminal=io.StringIO()
    )
    for done in range(1, 50):
        progress.step(done=done, total=50, line=f"cdp: {done} of 50 profiles queued")
    progress.end()
    assert notes.getvalue() == ""


def test_a_terminal_gets_a_bar_with_count_total_and_rate_and_no_lines(
    terminal: tuple[TextIO, int],
) -> None:
    stream, reader = terminal
    notes = io.StringIO()
    with progress_for(unit="rows", label="demo", notes=notes, terminal=stream) as progress:
        assert isinstance(progress, ProgressBar)
        progress.step(done=0, total=400, line="never printed")
        progress.step(done=100, total=400, line="never printed", note="3 rejected")
        progress.step(done=400, total=400, line="never printed")
        progress.end("demo-1 COMPLETED 400/400")
    screen = read_screen(reader)
    assert "demo:" in screen
    assert "400/400" in screen
    assert "rows/s" in screen
    assert "never printed" not in screen
    # The last word is said once, where the plain lines would have gone.
    assert notes.getvalue() == "demo-1 COMPLETED 400/400\n"


def test_a_bar_counts_without_a_total_and_goes_back_when_a_backlog_grows(
    terminal: tuple[TextIO, int],
) -> None:
    stream, reader = terminal
    progress = progress_for(unit="changes", label="cdp", notes=io.StringIO(), terminal=stream)
    progress.step(done=0, total=None, line="")
    progress.step(done=250, total=None, line="")
    progress.step(done=5, total=10, line="")
    progress.end()
    screen = read_screen(reader)
    assert "cdp: 0changes [" in screen  # no total: a count and a rate, no percentage
    assert "| 5/10 [" in screen


def test_a_terminal_without_a_size_is_taken_as_80_by_24(terminal: tuple[TextIO, int]) -> None:
    stream, _ = terminal
    assert terminal_size(stream) == (80, 24)  # a new pty reports 0x0, tqdm would draw nothing
    fcntl.ioctl(stream.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
    assert terminal_size(stream) == (132, 50)
