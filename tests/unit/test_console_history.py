"""A profile's history from the console's index: identity and attribute changes with
their source record and rule, merged profiles' history included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.console.history import history, merged_into
from services.console.index import ConsoleIndex, TimelineRow, Where

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


def written(offset: int, profile_id: int, source: str, record: str, **detail: Any) -> TimelineRow:
    return TimelineRow(
        where=Where("profile-changes", 0, offset),
        at=NOW + timedelta(seconds=offset),
        kind="written",
        source=source,
        record_id=record,
        email=None,
        profile_id=profile_id,
        event_id=f"e{offset}",
        detail={"change": "UPDATED", "attributes": [], "identities_added": [],
                "identities_removed": [], "merged_profile_ids": [], **detail},
    )  # fmt: skip


def decided(offset: int, event_id: str, rule: str) -> TimelineRow:
    return TimelineRow(
        where=Where("audit", 0, offset),
        at=NOW,
        kind="decided",
        source="crm",
        record_id="1",
        email=None,
        event_id=event_id,
        detail={"changes": [{"field": "first_name", "old": None, "new": "Mo", "rule": rule}]},
    )


def test_a_history_names_each_change_its_record_and_its_rule(tmp_path: Path) -> None:
    index = ConsoleIndex(tmp_path / "console.db")
    rows = [
        written(
            0, 1, "crm", "1",
            change="CREATED",
            attributes=[{"name": "first_name", "old": None, "new": "Mo"}],
            identities_added=["email:old@x", "crm:crm:1"],
        ),
        decided(0, "e0", "map fn (keep)"),
        written(1, 1, "crm", "1", identities_added=["email:new@x"],
                identities_removed=["email:old@x"]),
        written(2, 2, "other", "9", change="CREATED", identities_added=["crm:other:9"]),
        written(3, 1, "other", "9", merged_profile_ids=[2], identities_added=["crm:other:9"],
                attributes=[{"name": "city", "old": None, "new": "Oslo"}]),
    ]  # fmt: skip
    index.write(rows, {("profile-changes", 0): 4, ("audit", 0): 1})
    ids = merged_into(1, lambda some: index.timeline(emails=[], records=[], profiles=some))
    assert ids == [1, 2]
    found = index.timeline(emails=[], records=[], profiles=ids)
    entries = history(found, index.decisions(["e0", "e1", "e3"]), lambda _name: "last_writer_wins")
    said = [(e["what"], e.get("name") or e.get("identity"), e["rule"]) for e in entries]
    assert ("attribute", "first_name", "map fn (keep); last_writer_wins") in said
    assert ("identity added", "email:old@x", "asserted by crm record 1") in said
    assert (
        "identity removed",
        "email:old@x",
        "retired: crm record 1 no longer asserts it",
    ) in said
    assert ("attribute", "city", "merge of profile 2 (last_writer_wins)") in said
    assert {e["profile_id"] for e in entries} == {1, 2}
