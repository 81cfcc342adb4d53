"""kill -9 of the writer at each of its named crash points, under a running load:
after a restart the store holds every acked change's newest version, and the
profile-changes topic tells every stored change, in order (only a kill after the
relay's produce may send events again, with their event ids)."""

from __future__ import annotations

import pytest

from services.writer.loop import CRASH_POINTS
from services.writer.outbox_relay import CRASH_AFTER_RELAY_PRODUCE
from tests.faults.model import Load, check_relayed, check_store
from tests.faults.running import SteadyLoad, restart, wait_killed
from tests.support.services import Stack

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_writer_killed_at_a_crash_point_under_load(
    point: str, stack: Stack, kafka_bootstrap: str
) -> None:
    writer = stack["writer"]
    # The 3rd batch: the load is under way and has many more to go.
    writer.env["CRMSYNC_CRASH_AT"] = f"{point}:3"
    stack.start("mapper", "writer")
    load = Load(kafka_bootstrap, stack.prefix)
    steady = SteadyLoad(load, records=200, rounds=10, pause_s=0.3).start()
    try:
        wait_killed(writer)
        started = restart(writer)
        steady.finish()
    finally:
        steady.stop()
    outcome = check_store(load, stack.db_path, since=started)
    outcome.assert_exact(f"writer killed at {point}")
    relayed, repeats = check_relayed(load, stack.db_path, since=started)
    relayed.assert_exact(f"profile changes relayed, writer killed at {point}")
    print(f"[fault] writer killed at {point}: profile changes sent again={repeats}")
    if point == CRASH_AFTER_RELAY_PRODUCE:
        assert repeats > 0, "the events Kafka had before the kill are sent again"
    else:
        assert repeats == 0
