"""The full-sync barrier: which real-time changes wait, and when they may go."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.core.contracts import ControlKind, PartitionOffset, SyncControl
from services.mapper.barrier import Barriers

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def control(
    kind: ControlKind,
    *,
    sync_id: str = "s1",
    source: str = "crm",
    starts: dict[int, int] | None = None,
    ends: dict[int, int] | None = None,
) -> SyncControl:
    return SyncControl(
        source=source,
        sync_id=sync_id,
        kind=kind,
        at=NOW,
        changes_start_offsets=tuple(PartitionOffset(p, o) for p, o in (starts or {}).items()),
        fullsync_end_offsets=tuple(PartitionOffset(p, o) for p, o in (ends or {}).items()),
    )


def barriers(*controls: SyncControl) -> Barriers:
    result = Barriers()
    for each in controls:
        result.observe(each)
    return result


def holding(
    b: Barriers,
    *,
    offset: int = 100,
    partition: int = 0,
    released: str | None = None,
    source: str = "crm",
) -> bool:
    return b.holding(source, partition=partition, offset=offset, released=released)


def due(
    b: Barriers,
    *,
    position: int,
    partition: int = 0,
    released: str | None = None,
    source: str = "crm",
) -> str | None:
    return b.due(source, partition=partition, fullsync_position=position, released=released)


STARTED = control(ControlKind.STARTED, starts={0: 10, 1: 20})
COMPLETED = control(ControlKind.COMPLETED, ends={0: 500, 1: 700})


def test_without_a_sync_nothing_is_held_or_due() -> None:
    b = Barriers()
    assert not holding(b)
    assert due(b, position=0) is None
    assert b.latest("crm") is None
    assert list(b.sources()) == []


def test_while_started_changes_from_the_start_offset_on_are_held() -> None:
    b = barriers(STARTED)
    assert holding(b, partition=0, offset=10)
    assert holding(b, partition=1, offset=25)
    assert due(b, position=10_000) is None


def test_changes_before_the_start_offset_are_applied_as_usual() -> None:
    b = barriers(STARTED)
    assert not holding(b, partition=0, offset=9)
    assert not holding(b, partition=1, offset=19)


def test_a_partition_the_start_does_not_name_is_held_from_its_beginning() -> None:
    assert holding(barriers(STARTED), partition=7, offset=0)


def test_after_completion_changes_stay_held_until_released() -> None:
    b = barriers(STARTED, COMPLETED)
    assert holding(b, partition=0, offset=10)
    assert holding(b, partition=0, offset=600)
    # COMPLETED does not repeat where holding starts; STARTED's offsets still count.
    assert not holding(b, partition=0, offset=9)
    assert not holding(b, partition=0, offset=600, released="s1")


def test_a_completed_sync_whose_start_was_not_seen_holds_the_whole_partition() -> None:
    # Without STARTED's offsets, holding everything is the safe side: a held change
    # is applied later, never lost.
    assert holding(barriers(COMPLETED), partition=0, offset=0)


def test_a_completed_sync_is_due_once_the_fullsync_position_reaches_its_end_offset() -> None:
    b = barriers(STARTED, COMPLETED)
    assert due(b, partition=0, position=499) is None
    assert due(b, partition=0, position=500) == "s1"
    assert due(b, partition=0, position=501) == "s1"
    assert due(b, partition=1, position=500) is None
    assert due(b, partition=1, position=700) == "s1"


def test_a_partition_the_completion_does_not_name_is_due_at_once() -> None:
    assert due(barriers(STARTED, COMPLETED), partition=3, position=0) == "s1"


@pytest.mark.parametrize("kind", [ControlKind.CANCELLED, ControlKind.FAILED])
def test_a_cancelled_or_failed_sync_holds_nothing_and_is_due_at_once(kind: ControlKind) -> None:
    b = barriers(STARTED, control(kind))
    assert not holding(b, partition=0, offset=100)
    assert due(b, partition=0, position=0) == "s1"
    assert due(b, partition=0, position=0, released="s1") is None


def test_a_released_sync_is_never_due_again() -> None:
    b = barriers(STARTED, COMPLETED)
    assert due(b, partition=0, position=10_000, released="s1") is None
    assert not holding(b, partition=0, offset=10_000, released="s1")


def test_a_new_sync_after_a_release_holds_again_from_its_own_start() -> None:
    b = barriers(STARTED, COMPLETED, control(ControlKind.STARTED, sync_id="s2", starts={0: 900}))
    assert holding(b, partition=0, offset=900, released="s1")
    assert not holding(b, partition=0, offset=899, released="s1")
    assert due(b, partition=0, position=10_000, released="s1") is None


def test_a_new_sync_completing_uses_its_own_end_offsets() -> None:
    b = barriers(
        STARTED,
        COMPLETED,
        control(ControlKind.STARTED, sync_id="s2", starts={0: 900}),
        control(ControlKind.COMPLETED, sync_id="s2", ends={0: 1_000}),
    )
    assert holding(b, partition=0, offset=900, released="s1")
    assert not holding(b, partition=0, offset=899, released="s1")
    assert due(b, partition=0, position=999, released="s1") is None
    assert due(b, partition=0, position=1_000, released="s1") == "s2"


def test_a_completion_of_another_sync_does_not_reuse_the_earlier_start() -> None:
    b = barriers(STARTED, control(ControlKind.COMPLETED, sync_id="s2", ends={0: 500}))
    # s1's start offsets say nothing about s2, so s2 holds the partition from 0.
    assert holding(b, partition=0, offset=0)


def test_other_sources_are_never_held() -> None:
    b = barriers(STARTED, COMPLETED)
    assert not holding(b, source="erp", offset=10_000)
    assert due(b, source="erp", position=10_000) is None
    assert list(b.sources()) == ["crm"]


def test_each_source_has_its_own_barrier() -> None:
    b = barriers(
        STARTED,
        control(ControlKind.STARTED, source="erp", sync_id="e1", starts={0: 50}),
        control(ControlKind.CANCELLED, source="erp", sync_id="e1"),
    )
    assert holding(b, source="crm", offset=50)
    assert not holding(b, source="erp", offset=50)
    assert due(b, source="crm", position=10_000) is None
    assert due(b, source="erp", position=0) == "e1"


def test_the_latest_control_of_a_source_is_what_counts() -> None:
    b = barriers(STARTED, COMPLETED)
    assert b.latest("crm") == COMPLETED


def test_a_pause_holds_changes_from_where_it_began_until_resumed() -> None:
    paused = barriers(control(ControlKind.PAUSED, sync_id="p1", starts={0: 50}))
    assert not holding(paused, offset=49)
    assert holding(paused, offset=50)
    assert paused.due("crm", partition=0, fullsync_position=0, released=None) is None

    resumed = barriers(
        control(ControlKind.PAUSED, sync_id="p1", starts={0: 50}),
        control(ControlKind.RESUMED, sync_id="p1"),
    )
    assert not holding(resumed, offset=50)
    assert resumed.due("crm", partition=0, fullsync_position=0, released=None) == "p1"
    assert resumed.due("crm", partition=0, fullsync_position=0, released="p1") is None
