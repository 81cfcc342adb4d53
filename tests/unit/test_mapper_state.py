"""The mapper's local state: staged writes over RocksDB, committed only with an offset."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.mapper.state import PartitionState

pytestmark = pytest.mark.unit


def test_staged_writes_are_read_back_before_they_are_committed(tmp_path: Path) -> None:
    state = PartitionState(tmp_path / "0", partition=0)
    state.put(b"r1", b"one")
    assert state.get(b"r1") == b"one"
    state.put(b"r1", None)
    assert state.get(b"r1") is None
    state.close()


def test_an_aborted_batch_leaves_nothing_behind(tmp_path: Path) -> None:
    state = PartitionState(tmp_path / "0", partition=0)
    state.put(b"r1", b"one")
    state.commit(changelog_offset=4)
    state.put(b"r1", b"two")
    state.put(b"r2", b"new")
    state.abort()
    assert state.get(b"r1") == b"one"
    assert state.get(b"r2") is None
    assert state.applied_offset() == 4
    state.close()


def test_committed_writes_and_their_offset_survive_a_reopen(tmp_path: Path) -> None:
    state = PartitionState(tmp_path / "3", partition=3)
    assert state.applied_offset() == -1
    state.put(b"r1", b"one")
    state.put(b"r2", b"two")
    state.commit(changelog_offset=9)
    state.put(b"r2", None)
    state.commit(changelog_offset=10)
    state.close()

    reopened = PartitionState(tmp_path / "3", partition=3)
    assert reopened.get(b"r1") == b"one"
    assert reopened.get(b"r2") is None
    assert reopened.applied_offset() == 10
    reopened.close()


def test_items_of_a_prefix_merge_staged_writes_in_key_order(tmp_path: Path) -> None:
    state = PartitionState(tmp_path / "0", partition=0)
    for key in (b"ha\x00002", b"ha\x00001", b"hb\x00001", b"r1"):
        state.put(key, key)
    state.commit(changelog_offset=1)
    state.put(b"ha\x00003", b"staged")
    state.put(b"ha\x00001", None)
    assert list(state.items(b"ha\x00")) == [(b"ha\x00002", b"ha\x00002"), (b"ha\x00003", b"staged")]
    state.close()


def test_restore_applies_changelog_records_and_tombstones(tmp_path: Path) -> None:
    state = PartitionState(tmp_path / "0", partition=0)
    state.put(b"gone", b"x")
    state.commit(changelog_offset=0)
    state.restore([(b"r1", b"one"), (b"gone", None)], last_offset=7)
    assert state.get(b"r1") == b"one"
    assert state.get(b"gone") is None
    assert state.applied_offset() == 7
    state.close()
