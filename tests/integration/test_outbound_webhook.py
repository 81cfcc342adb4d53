"""Profile changes out to webhook destinations, on the real broker, writer and outbound
service, against receivers that check Standard Webhooks signatures as the spec says.

ProfileUpdates go straight on the profile-updates topic (the sources and the mapper
are not what is tested here); the writer commits them and relays their
ProfileChanged events; the outbound service delivers them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Any

import pytest

from services.core.codecs import load_contracts
from services.core.config import load_settings
from services.core.contracts import ProfileUpdate
from services.outbound.backlog import waiting_changes
from tests.fakes import webhook_receiver
from tests.fakes.server import FakeServer, ServerThread
from tests.fakes.webhook_receiver import Receiver
from tests.stores.changes import update
from tests.support.broker_fixtures import produce_updates as produce
from tests.support.broker_fixtures import read_committed
from tests.support.polling import wait_for
from tests.support.services import Stack, http_get

pytestmark = pytest.mark.integration

CONTRACTS = load_contracts()
SECRET = "whsec_dGVzdC1vdXRib3VuZC1zZWNyZXQtMQ=="


def rounds(source: str, versions: Sequence[int], records: range) -> list[ProfileUpdate]:
    return [
        update(
            source,
            str(i),
            t=version,
            email=f"{source}{i}@example.com",
            attributes={"name": f"{source} {i}", "round": version},
        )
        for version in versions
        for i in records
    ]


class Destinations:
    """Webhook receivers served in this process, one per destination of the stack."""

    def __init__(self, stack: Stack, exits: ExitStack) -> None:
        self.stack = stack
        self._exits = exits
        self.receivers: dict[str, Receiver] = {}
        self.servers: dict[str, FakeServer] = {}

    def add(self, name: str, **settings: Any) -> Receiver:
        receiver = Receiver(SECRET)
        server = self._exits.enter_context(ServerThread(webhook_receiver.server(receiver)))
        self.receivers[name], self.servers[name] = receiver, server
        self.stack["outbound"].env["CRMSYNC_TEST_HOOK_SECRET"] = SECRET
        self.stack.config.setdefault("destinations", {})[name] = {
            "kind": "webhook",
            "api": {
                "base_url": f"{server.url}/hook",
                "max_attempts": 2,
                "backoff_initial_seconds": 0.1,
                "backoff_max_seconds": 0.5,
            },
            "secret": {"env": "CRMSYNC_TEST_HOOK_SECRET"},
            "attributes": {"name": "Name", "round": "Round"},
            **settings,
        }
        self.stack.write_config()
        return receiver


@pytest.fixture
def destinations(stack: Stack) -> Iterator[Destinations]:
    with ExitStack() as exits:
        yield Destinations(stack, exits)


def rounds_received(receiver: Receiver) -> dict[str, list[int]]:
    """Per record (its CRM identity), the rounds received, in order."""
    told: dict[str, list[int]] = {}
    for change in receiver.changes():
        crm = next(i for i in change["identities"] if i.startswith("crm:"))
        if "Round" in change["fields"]:
            told.setdefault(crm, []).append(change["fields"]["Round"])
    return told


def metric(stack: Stack, name: str, **labels: str) -> float:
    """The sum of the outbound service's ``name`` series carrying ``labels``."""
    _status, body = http_get(f"{stack['outbound'].url}/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_changes_reach_the_webhook_signed_in_order_and_never_go_back_where_they_came_from(
    stack: Stack, destinations: Destinations
) -> None:
    receiver = destinations.add("crm-hook", source="sfdc")
    stack.config["sources"]["sfdc"] = {
        "kind": "generic_webhook",
        "auth": {"kind": "bearer", "token": {"env": "CRMSYNC_DEMO_TOKEN"}},
        "mapping": {"email": "email"},
    }
    stack.write_config()
    stack.start("writer", "outbound")
    produce(stack, rounds("hubspot", [1, 2, 3], range(40)))
    produce(stack, rounds("sfdc", [1], range(10)))
    expected = {f"crm:hubspot:{i}": [1, 2, 3] for i in range(40)}
    assert wait_for(lambda: rounds_received(receiver) == expected, timeout_s=90), stack[
        "outbound"
    ].log_tail()
    # The sfdc changes sit on other partitions: they may be decided after the last
    # hubspot one arrived.
    assert wait_for(
        lambda: metric(stack, "crmsync_destination_skipped_total", why="own_source") == 10,
        timeout_s=30,
    )
    assert not [c for c in receiver.changes() if c["source"] == "sfdc"]
    assert metric(stack, "crmsync_destination_sent_total", destination="crm-hook") == 120
    first = receiver.changes()[0]
    assert first["kind"] == "created" and first["previous"] == {"Name": None, "Round": None}


def test_a_destination_down_loses_nothing_and_holds_back_no_other(
    stack: Stack, destinations: Destinations
) -> None:
    """One destination down for a minute: the other takes every round as it comes; the
    one down gets them all, in order, once it is back."""
    down = destinations.add("down-hook")
    up = destinations.add("up-hook")
    outage = destinations.servers["down-hook"].faults
    outage.error_rate = 1.0  # every request answered 500, 502 or 503
    stack.start("writer", "outbound")
    went_down = time.monotonic()
    produce(stack, rounds("hubspot", [1], range(30)))
    assert wait_for(lambda: len(up.changes()) == 30, timeout_s=60)
    assert wait_for(
        lambda: metric(stack, "crmsync_destination_unavailable", destination="down-hook") == 1,
        timeout_s=30,
    )
    # A round every 15 s while it stays down: each reaches the other within seconds.
    for version in (2, 3, 4):
        time.sleep(max(0.0, went_down + 15 * (version - 1) - time.monotonic()))
        produce(stack, rounds("hubspot", [version], range(30)))
        assert wait_for(lambda v=version: len(up.changes()) == 30 * v, timeout_s=10)
    time.sleep(max(0.0, went_down + 60 - time.monotonic()))
    assert down.changes() == []
    outage.error_rate = 0.0
    expected = {f"crm:hubspot:{i}": [1, 2, 3, 4] for i in range(30)}
    assert rounds_received(up) == expected
    assert wait_for(lambda: rounds_received(down) == expected, timeout_s=120), stack[
        "outbound"
    ].log_tail()
    assert metric(stack, "crmsync_destination_retries_total", destination="down-hook") >= 1
    assert metric(stack, "crmsync_destination_unavailable", destination="down-hook") == 0


def test_a_refused_change_is_dead_lettered_with_the_answer_and_its_neighbours_delivered(
    stack: Stack, destinations: Destinations
) -> None:
    receiver = destinations.add("picky-hook")

    def locked(change: dict[str, Any]) -> str | None:
        if change["fields"].get("Name") == "hubspot 7":
            return "contact hubspot 7 is locked for editing"
        return None

    receiver.refuse = locked
    stack.start("writer", "outbound")
    produce(stack, rounds("hubspot", [1], range(20)))
    assert wait_for(lambda: len(receiver.changes()) == 19, timeout_s=60), stack[
        "outbound"
    ].log_tail()
    assert "crm:hubspot:7" not in rounds_received(receiver)

    def dead_letters() -> list[Any]:
        found = []
        for message in read_committed(stack.bootstrap, stack.topic("rejected")):
            rejection = CONTRACTS.rejected_event.decode(message.value() or b"")
            if rejection.stage == "outbound":
                found.append(rejection)
        return found

    assert wait_for(lambda: len(dead_letters()) == 1, timeout_s=30)
    [dead] = dead_letters()
    assert dead.attributes == {"destination": "picky-hook", "status": "422"}
    assert "locked for editing" in dead.reason
    assert dead.origin_topic == stack.topic("profile-changes")
    refused = CONTRACTS.profile_changed.decode(dead.value or b"")
    assert refused.record_id == "7"


def test_a_paused_destination_keeps_its_changes_for_later(
    stack: Stack, destinations: Destinations
) -> None:
    receiver = destinations.add("paused-hook", paused=True)
    stack.start("writer", "outbound")
    produce(stack, rounds("hubspot", [1], range(5)))
    settings = load_settings(str(stack.config_path))
    assert wait_for(lambda: waiting_changes(settings) == {"paused-hook": 5}, timeout_s=30)
    time.sleep(2)
    assert receiver.changes() == []
    stack["outbound"].stop()
    stack.config["destinations"]["paused-hook"]["paused"] = False
    stack.write_config()
    stack.start("outbound")
    expected = {f"crm:hubspot:{i}": [1] for i in range(5)}
    assert wait_for(lambda: rounds_received(receiver) == expected, timeout_s=60)
    assert wait_for(lambda: waiting_changes(settings) == {"paused-hook": 0}, timeout_s=30)


def test_refused_credentials_hold_the_changes_until_they_are_fixed(
    stack: Stack, destinations: Destinations
) -> None:
    """The receiver refuses a wrong signing secret (401): that is no verdict on the changes,
    which wait, none dead-lettered, and go out once the secret is right."""
    receiver = destinations.add("wrong-secret-hook")
    stack.config["destinations"]["wrong-secret-hook"]["secret"] = {"env": "CRMSYNC_OTHER_SECRET"}
    stack.write_config()
    stack["outbound"].env["CRMSYNC_OTHER_SECRET"] = "whsec_b3RoZXItc2VjcmV0"
    stack.start("writer", "outbound")
    produce(stack, rounds("hubspot", [1], range(2)))
    assert wait_for(
        lambda: (
            metric(stack, "crmsync_destination_unavailable", destination="wrong-secret-hook") == 1
        ),
        timeout_s=60,
    ), stack["outbound"].log_tail()
    assert receiver.changes() == []
    assert metric(stack, "crmsync_destination_dead_lettered_total") == 0
    stack["outbound"].stop()
    stack["outbound"].env["CRMSYNC_OTHER_SECRET"] = SECRET
    stack.start("outbound")
    assert wait_for(lambda: len(receiver.changes()) == 2, timeout_s=60)


def test_only_profiles_matching_send_if_go_out_with_their_fields_transformed(
    stack: Stack, destinations: Destinations
) -> None:
    receiver = destinations.add(
        "danish-hook",
        attributes={"name": "Name", "round": "Round", "country": "Country"},
        send_if={"all": [{"field": "country", "op": "eq", "value": "DK"}]},
        transforms={
            "Country": {"values": {"DK": "Denmark"}, "unmapped": "reject"},
            "Round": {"type": "string"},
        },
    )
    stack.start("writer", "outbound")
    produce(
        stack,
        [
            update(
                "hubspot",
                str(i),
                t=1,
                email=f"p{i}@example.com",
                attributes={"name": f"P{i}", "round": 1, "country": "DK" if i % 2 else "SE"},
            )
            for i in range(10)
        ],
    )
    danes = {f"crm:hubspot:{i}" for i in range(1, 10, 2)}
    assert wait_for(lambda: len(receiver.changes()) == 5, timeout_s=60), stack[
        "outbound"
    ].log_tail()
    assert {
        next(i for i in c["identities"] if i.startswith("crm:")) for c in receiver.changes()
    } == danes
    assert all(
        c["fields"]["Country"] == "Denmark" and c["fields"]["Round"] == "1"
        for c in receiver.changes()
    )
    assert wait_for(
        lambda: metric(stack, "crmsync_destination_skipped_total", why="filtered_out") == 5,
        timeout_s=30,
    )
