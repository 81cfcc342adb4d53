"""kill -9 of the outbound service at its crash points, under a running load through
the whole pipeline: after a restart the destination holds every acked change's newest
version, each record's versions in order; only changes the destination had already
taken come again (at least once)."""

from __future__ import annotations

import time
from collections import Counter
from itertools import pairwise

import pytest

from services.outbound.delivery import CRASH_POINTS
from tests.fakes import webhook_receiver
from tests.fakes.server import ServerThread
from tests.fakes.webhook_receiver import Receiver
from tests.faults.model import REPORTED, SOURCE, Load, version_of
from tests.faults.running import SteadyLoad, restart, wait_killed
from tests.support.services import Stack

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SECRET = "whsec_ZmF1bHQtdGVzdC1ob29r"


def received_versions(receiver: Receiver) -> tuple[dict[str, list[int]], int]:
    """Per record, the first_name versions the destination took, each change once (by
    event id), in arrival order; and how many messages or changes came again (a message
    sent again with the same webhook-id, or a change again in another message)."""
    seen: Counter[str] = Counter()
    versions: dict[str, list[int]] = {}
    for change in receiver.changes():
        seen[change["event_id"]] += 1
        if seen[change["event_id"]] > 1 or "FirstName" not in change["fields"]:
            continue
        crm = next(i for i in change["identities"] if i.startswith(f"crm:{SOURCE}:"))
        versions.setdefault(crm.split(":", 2)[2], []).append(
            version_of(change["fields"]["FirstName"])
        )
    again = receiver.deliveries - len(receiver.messages)
    return versions, again + sum(n - 1 for n in seen.values())


@pytest.mark.timeout(300)
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_outbound_killed_at_a_crash_point_under_load(
    point: str, stack: Stack, kafka_bootstrap: str
) -> None:
    receiver = Receiver(SECRET)
    with ServerThread(webhook_receiver.server(receiver)) as server:
        stack.config["destinations"] = {
            "hook": {
                "kind": "webhook",
                "api": {"base_url": f"{server.url}/hook"},
                "secret": {"env": "CRMSYNC_FAULT_HOOK_SECRET"},
                "attributes": {"first_name": "FirstName"},
                "batch_size": 50,
            }
        }
        stack.write_config()
        outbound = stack["outbound"]
        outbound.env["CRMSYNC_FAULT_HOOK_SECRET"] = SECRET
        outbound.env["CRMSYNC_CRASH_AT"] = f"{point}:3"
        stack.start("mapper", "writer", "outbound")
        load = Load(kafka_bootstrap, stack.prefix)
        steady = SteadyLoad(load, records=200, rounds=10, pause_s=0.3).start()
        try:
            wait_killed(outbound)
            started = restart(outbound)
            steady.finish()
        finally:
            steady.stop()
        newest = load.newest()
        deadline = time.monotonic() + 120
        while True:
            versions, repeats = received_versions(receiver)
            finals = {record: told[-1] for record, told in versions.items()}
            if all(finals.get(r, -1) >= v for r, v in newest.items()):
                break
            assert time.monotonic() < deadline, f"not delivered:\n{outbound.log_tail()}"
            time.sleep(1)
    lost = sorted(r for r, v in newest.items() if finals.get(r, -1) < v)
    regressions = sorted(
        r for r, told in versions.items() if any(b <= a for a, b in pairwise(told))
    )
    line = (
        f"[fault] outbound killed at {point}: acked={len(load.acked)} records={len(newest)} "
        f"lost={len(lost)} regressions={len(regressions)} sent_again={repeats} "
        f"recovered_in={time.monotonic() - started:.1f}s"
    )
    print(line)
    REPORTED.append(line)
    assert not lost and not regressions
    assert repeats > 0, "the batch the destination had taken before the kill comes again"
