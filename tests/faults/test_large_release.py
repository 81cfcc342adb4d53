"""A full sync with 300,000 real-time changes held behind it, more than one
transaction could carry, and the mapper killed in the middle of their release."""

from __future__ import annotations

import pytest

from services.core.contracts import ControlKind
from tests.faults.model import Load, check_updates
from tests.faults.running import restart, wait_killed
from tests.support.broker_fixtures import end_offsets
from tests.support.polling import wait_for
from tests.support.services import Stack, held_changes

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RECORDS = 30_000
VERSIONS = range(10, 20)  # ten held changes a record: 300,000
SYNCED = 3_000  # records the full sync also brings, at an older version


@pytest.mark.timeout(1200)
def test_300000_held_changes_released_in_chunks_through_a_kill_9(
    stack: Stack, kafka_bootstrap: str
) -> None:
    held = RECORDS * len(VERSIONS)
    mapper = stack["mapper"]
    # Half-way through the release.
    mapper.env["CRMSYNC_CRASH_AT"] = f"mapper-mid-release:{held // 2}"
    stack.start("mapper")
    load = Load(kafka_bootstrap, stack.prefix)
    load.control(
        "big", ControlKind.STARTED, changes_ends=end_offsets(kafka_bootstrap, load.topic("changes"))
    )
    assert wait_for(lambda: "full sync big of demo: started" in _log(stack))
    for version in VERSIONS:
        for n in range(RECORDS):
            load.change(f"r{n}", version)
    for n in range(SYNCED):
        load.change(f"r{n}", 5, topic="fullsync")
    load.flush(600)
    assert len(load.acked) == held + SYNCED
    assert wait_for(lambda: held_changes(stack) == held, timeout_s=600)
    load.control("big", ControlKind.COMPLETED, changes_ends={})
    wait_killed(mapper, timeout_s=600)
    started = restart(mapper)
    assert wait_for(lambda: held_changes(stack) == 0, timeout_s=600)
    outcome = check_updates(load, since=started, timeout_s=120)
    outcome.assert_exact(f"{held} held changes, mapper killed mid-release")
    chunks = _log(stack).count("(more in the next transaction)")
    print(f"[fault] release went out in {chunks}+ transactions after the restart and before")
    assert chunks >= held // 2 // 2000


def _log(stack: Stack) -> str:
    return stack["mapper"].log_path.read_text(errors="replace")
