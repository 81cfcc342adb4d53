"""kill -9 of the mapper at each of its named crash points, under a running load: after
a restart every acked change's newest version is emitted, once, in version order."""

from __future__ import annotations

import pytest

from services.core.contracts import ControlKind
from services.mapper.engine import CRASH_POINTS
from tests.faults.model import Load, audited_twice, check_updates, emitted_versions
from tests.faults.running import SteadyLoad, restart, wait_killed
from tests.support.broker_fixtures import end_offsets
from tests.support.polling import wait_for
from tests.support.services import Stack, held_changes

pytestmark = [pytest.mark.integration, pytest.mark.faults]

BATCH_POINTS = [p for p in CRASH_POINTS if p != "mapper-mid-release"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("point", BATCH_POINTS)
def test_kill_9_at_a_crash_point_under_load(point: str, stack: Stack, kafka_bootstrap: str) -> None:
    mapper = stack["mapper"]
    # The 3rd transaction: the load is under way (a round at least every 0.3 s, ten
    # rounds, so there are many more transactions than three).
    mapper.env["CRMSYNC_CRASH_AT"] = f"{point}:3"
    stack.start("mapper")
    load = Load(kafka_bootstrap, stack.prefix)
    steady = SteadyLoad(load, records=200, rounds=10, pause_s=0.3).start()
    try:
        wait_killed(mapper)
        started = restart(mapper)
        steady.finish()
    finally:
        steady.stop()
    outcome = check_updates(load, since=started)
    outcome.assert_exact(f"mapper killed at {point}")
    assert audited_twice(kafka_bootstrap, stack.prefix) == []


@pytest.mark.timeout(300)
def test_kill_9_in_the_middle_of_a_release(stack: Stack, kafka_bootstrap: str) -> None:
    """Held changes released in chunks over several transactions; killed inside one,
    the release goes on from the last committed chunk, in order, after the sync."""
    stack.config["services"]["mapper"]["batch_max_records"] = 100
    stack.write_config()
    mapper = stack["mapper"]
    # The 250th held change released: in the third chunk of a hundred.
    mapper.env["CRMSYNC_CRASH_AT"] = "mapper-mid-release:250"
    stack.start("mapper")
    load = Load(kafka_bootstrap, stack.prefix)
    records = 300
    load.control("s1", ControlKind.STARTED, changes_ends=_ends(stack, "changes"))
    assert wait_for(lambda: "full sync s1 of demo: started" in _log(stack))
    for version in (10, 20):  # held: newer than the sync's records
        for n in range(records):
            load.change(f"r{n}", version)
    for n in range(records):
        load.change(f"r{n}", 5, topic="fullsync")
    load.flush()
    # Every real-time change held before COMPLETED (a partition whose sync records
    # were mapped first would otherwise release before its changes were even read).
    assert wait_for(lambda: held_changes(stack) == 2 * records, timeout_s=60)
    load.control("s1", ControlKind.COMPLETED, changes_ends={})
    wait_killed(mapper)
    started = restart(mapper)
    outcome = check_updates(load, since=started)
    outcome.assert_exact("mapper killed mid-release")
    assert audited_twice(kafka_bootstrap, stack.prefix) == []
    # Barrier order: each record's sync version came before its held ones.
    assert set(map(tuple, emitted_versions(load).values())) == {(5, 10, 20)}
    assert "released 100 held changes" in _log(stack)


def _ends(stack: Stack, role: str) -> dict[int, int]:
    return end_offsets(stack.bootstrap, stack.topic(role))


def _log(stack: Stack) -> str:
    return stack["mapper"].log_path.read_text(errors="replace")
