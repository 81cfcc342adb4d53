"""Pausing a destination on the real broker: its changes wait in Kafka, through a
kill -9 and restart of the outbound service, another destination goes on, and on
resume every change is delivered in order."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.integration.test_outbound_webhook import (
    Destinations,
    metric,
    rounds,
    rounds_received,
)
from tests.support.broker_fixtures import produce_updates as produce
from tests.support.polling import wait_for
from tests.support.services import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def hooks(stack: Stack) -> Iterator[Destinations]:
    with ExitStack() as exits:
        yield Destinations(stack, exits)


def test_a_paused_destination_holds_its_changes_until_resumed_and_then_gets_them_in_order(
    stack: Stack, hooks: Destinations
) -> None:
    held = hooks.add("held-hook")
    other = hooks.add("other-hook")
    stack.start("ingest", "writer", "outbound")
    produce(stack, rounds("hubspot", [1], range(20)))
    assert wait_for(lambda: len(held.changes()) == 20, timeout_s=60)

    paused = stack.cli("destination", "pause", "held-hook")
    assert paused.returncode == 0, paused.stderr
    assert stack["ingest"].admin("POST", "/destinations/held-hook/pause")[0] == 409
    assert stack["ingest"].admin("POST", "/destinations/nowhere/pause")[0] == 404
    assert wait_for(
        lambda: metric(stack, "crmsync_destination_paused", destination="held-hook") == 1
    )
    produce(stack, rounds("hubspot", [2, 3], range(20)))
    assert wait_for(lambda: len(other.changes()) == 60, timeout_s=60)
    time.sleep(3)
    assert len(held.changes()) == 20

    # Remembered through a kill -9: the restarted service holds from its first moment.
    stack["outbound"].kill()
    stack.start("outbound")
    produce(stack, rounds("hubspot", [4], range(20)))
    assert wait_for(lambda: len(other.changes()) == 80, timeout_s=60)
    time.sleep(3)
    assert len(held.changes()) == 20
    _code, status = stack["ingest"].admin("GET", "/status")
    assert status["destinations"]["held-hook"]["paused"]["pause_id"].startswith("pause-held-hook")
    shown = stack.cli("status")
    assert "held-hook (destination, webhook): paused" in shown.stdout, shown.stderr

    resumed = stack.cli("destination", "resume", "held-hook")
    assert resumed.returncode == 0, resumed.stderr
    expected = {f"crm:hubspot:{i}": [1, 2, 3, 4] for i in range(20)}
    assert wait_for(lambda: rounds_received(held) == expected, timeout_s=90), stack[
        "outbound"
    ].log_tail()
    assert metric(stack, "crmsync_destination_paused", destination="held-hook") == 0
