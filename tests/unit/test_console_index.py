"""The console's index on a real SQLite file: rows and positions together, no row
twice, retention, and finding a contact's history by email, record or profile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.console.index import (
    RECEIVED,
    ConsoleIndex,
    Count,
    RejectionFilter,
    RejectionRow,
    TimelineRow,
    Where,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


def received(offset: int, record: str, email: str | None, at: datetime = NOW) -> TimelineRow:
    return TimelineRow(
        where=Where("changes", 0, offset),
        at=at,
        kind="received",
        source="crm",
        record_id=record,
        email=email,
        detail={"fields": {}},
    )


def test_rows_and_positions_commit_together_and_a_row_is_kept_once(tmp_path: Path) -> None:
    index = ConsoleIndex(tmp_path / "console.db")
    index.write(
        [received(0, "r1", "a@x"), Count("crm", "2026-12-03", RECEIVED)], {("changes", 0): 1}
    )
    # The same message again (a restart before the position was read) adds nothing.
    index.write([received(0, "r1", "a@x")], {("changes", 0): 1})
    assert index.positions() == {("changes", 0): 1}
    assert len(index.timeline(emails=["a@x"], records=[], profiles=[])) == 1
    assert index.daily("2026-12-03") == {("crm", RECEIVED): 1}
    # A failing batch leaves neither its rows nor its positions.
    with pytest.raises(TypeError):
        index.write([received(1, "r2", "b@x"), "not a row"], {("changes", 0): 2})  # type: ignore[list-item]
    assert index.positions() == {("changes", 0): 1}
    assert index.timeline(emails=["b@x"], records=[], profiles=[]) == []
    reopened = ConsoleIndex(tmp_path / "console.db", read_only=True)
    assert reopened.positions() == {("changes", 0): 1}


def test_a_history_is_found_through_the_email_record_and_profile_it_links(tmp_path: Path) -> None:
    index = ConsoleIndex(tmp_path / "console.db")
    written = TimelineRow(
        where=Where("profile-changes", 0, 0),
        at=NOW,
        kind="written",
        source="crm",
        record_id="r1",
        email="a@x",
        profile_id=7,
        detail={},
    )
    other_source = TimelineRow(
        where=Where("profile-changes", 0, 1),
        at=NOW + timedelta(seconds=1),
        kind="written",
        source="shop",
        record_id="s9",
        email=None,
        profile_id=7,
        detail={},
    )
    index.write([received(0, "r1", "a@x"), written, other_source], {})
    linked = index.linked(email="a@x", record=None)
    assert linked.records == {("crm", "r1"), ("shop", "s9")}
    assert linked.profiles == {7}
    by_record = index.linked(email=None, record=("shop", "s9"))
    assert by_record.emails == {"a@x"}


def test_rejections_filter_and_expire_after_the_retention(tmp_path: Path) -> None:
    index = ConsoleIndex(tmp_path / "console.db")
    rows = [
        RejectionRow(
            where=Where("rejected", 0, i),
            rejected_at=NOW - timedelta(days=age),
            stage="mapper",
            reason=f"phone: not a phone number ({i})",
            source="crm",
            email="a@x" if i == 0 else None,
        )
        for i, age in enumerate((0, 1, 20))
    ]
    index.write(rows, {})
    assert index.count_rejections(RejectionFilter(source="crm")) == 3
    assert index.count_rejections(RejectionFilter(email="a@x")) == 1
    assert index.count_rejections(RejectionFilter(reason="(2)")) == 1
    assert index.reasons("crm") == [("phone", 3)]
    [newest] = index.rejections(RejectionFilter(email="a@x"))
    index.mark_replayed([newest["id"]], NOW)
    assert index.count_rejections(RejectionFilter(replayed=False)) == 2
    assert index.expire(NOW, timedelta(days=14)) == 1
    assert index.count_rejections(RejectionFilter()) == 2


def test_lag_is_from_receiving_a_change_to_the_store_taking_it(tmp_path: Path) -> None:
    index = ConsoleIndex(tmp_path / "console.db")

    def pair(n: int, seconds: float) -> list[TimelineRow]:
        got = TimelineRow(
            where=Where("changes", 0, n),
            at=NOW + timedelta(minutes=n),
            kind="received",
            source="crm",
            record_id=f"r{n}",
            event_id=f"e{n}",
            detail={},
        )
        stored = TimelineRow(
            where=Where("profile-changes", 0, n),
            at=got.at + timedelta(seconds=seconds),
            kind="written",
            source="crm",
            record_id=f"r{n}",
            event_id=f"e{n}",
            profile_id=n,
            detail={},
        )
        return [got, stored]

    index.write([*pair(0, 0.5), *pair(1, 2.0), *pair(2, 0.25)], {})
    assert index.lags("crm") == [0.25, 2.0, 0.5]
    assert index.lags("other") == []
