"""When a local copy of the mapper's state can be caught up from its changelog, and when
it must be rebuilt from the whole of it; and the lazy, staged-aware key iteration that
releases walk in chunks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.mapper.restore import Changelog, usable
from services.mapper.state import PartitionState

pytestmark = pytest.mark.unit

DAY_MS = 86_400_000
CHANGELOG = Changelog("t.mapper-state", delete_retention_ms=DAY_MS)


def written(
    tmp_path: Path, *, offset: int, age_s: float = 0, monkeypatch: pytest.MonkeyPatch | None = None
) -> PartitionState:
    state = PartitionState(tmp_path / "0", partition=0)
    state.put(b"r1", b"one")
    if monkeypatch is not None:
        # As if the commit were ``age_s`` ago.
        then = time.time() - age_s
        with monkeypatch.context() as patch:
            patch.setattr(time, "time", lambda: then)
            state.commit(changelog_offset=offset)
    else:
        state.commit(changelog_offset=offset)
    return state


def test_an_empty_copy_is_caught_up_from_the_start(tmp_path: Path) -> None:
    state = PartitionState(tmp_path / "0", partition=0)
    assert usable(state, low=0, high=100, changelog=CHANGELOG) is None


def test_a_recent_copy_within_the_changelog_is_caught_up(tmp_path: Path) -> None:
    state = written(tmp_path, offset=40)
    assert usable(state, low=0, high=100, changelog=CHANGELOG) is None
    # Its next offset is exactly where the changelog starts now.
    assert usable(state, low=41, high=100, changelog=CHANGELOG) is None


def test_a_copy_past_the_changelogs_end_is_rebuilt(tmp_path: Path) -> None:
    state = written(tmp_path, offset=40)
    why = usable(state, low=0, high=10, changelog=CHANGELOG)
    assert why is not None and "past the changelog's end" in why


def test_a_copy_whose_next_records_were_deleted_is_rebuilt(tmp_path: Path) -> None:
    state = written(tmp_path, offset=40)
    why = usable(state, low=60, high=100, changelog=CHANGELOG)
    assert why is not None and "starts at 60" in why


def test_a_copy_older_than_tombstone_retention_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compaction may have removed the deletion of a key the copy still holds."""
    assert (
        usable(
            written(tmp_path / "a", offset=40, age_s=3600, monkeypatch=monkeypatch),
            low=0,
            high=100,
            changelog=CHANGELOG,
        )
        is None
    )
    old = written(tmp_path / "b", offset=40, age_s=DAY_MS / 1000, monkeypatch=monkeypatch)
    why = usable(old, low=0, high=100, changelog=CHANGELOG)
    assert why is not None and "tombstone retention" in why


def test_items_merge_staged_writes_in_key_order_and_read_lazily(tmp_path: Path) -> None:
    state = PartitionState(tmp_path / "0", partition=0)
    for n in range(0, 10, 2):
        state.put(b"h%02d" % n, b"stored")
    state.put(b"x", b"other prefix")
    state.commit(changelog_offset=1)
    state.put(b"h03", b"staged")
    state.put(b"h04", None)  # deleted in the batch in hand
    state.put(b"h06", b"overwritten")
    assert list(state.items(b"h")) == [
        (b"h00", b"stored"),
        (b"h02", b"stored"),
        (b"h03", b"staged"),
        (b"h06", b"overwritten"),
        (b"h08", b"stored"),
    ]
    walk = state.items(b"h")
    assert next(walk) == (b"h00", b"stored")
    assert next(walk) == (b"h02", b"stored")
    assert list(state.items(b"none")) == []
