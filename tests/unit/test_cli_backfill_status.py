"""What ``crmsync status`` says of a destination's backfill."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.cli.status_command import push_line
from services.writer.stores.snapshots import PushProgress

pytestmark = pytest.mark.unit

AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_a_destination_is_due_until_pushed_under_its_mapping_version() -> None:
    running = PushProgress("cdp", "r1", 500, 500, 1000, AT, mapping_version=2)
    done = PushProgress("cdp", "r1", 1000, 1000, 1000, AT, finished_at=AT, mapping_version=2)
    assert push_line(None, 2).startswith("due: never pushed")
    assert push_line(running, 2) == (
        "interrupted at 500 of 1000 profiles: crmsync destination push NAME resumes it"
    )
    assert push_line(done, 2) == "done, 1000 of 1000 profiles at 2026-12-03 12:00Z"
    assert push_line(done, 3) == "due: pushed under mapping v2, now v3"
