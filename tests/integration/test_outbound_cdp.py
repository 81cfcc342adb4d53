"""Profile changes out to the product documents' CDP (its records API, faked after its
public documentation), on the real broker, writer and outbound service."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from services.core.codecs import load_contracts
from tests.fakes import experiture
from tests.fakes.experiture import Workspace
from tests.fakes.server import FakeServer, ServerThread
from tests.stores.changes import update
from tests.support.broker_fixtures import produce_updates, read_committed
from tests.support.polling import wait_for
from tests.support.services import Stack

pytestmark = pytest.mark.integration

CONTRACTS = load_contracts()


@pytest.fixture
def cdp(stack: Stack) -> Iterator[tuple[Workspace, FakeServer]]:
    space = Workspace(
        fields={"email", "hubspot_contact_id", "first_name", "round", "newsletter"},
        identity_keys={"email", "hubspot_contact_id"},
    )
    with ServerThread(experiture.server(space)) as server:
        stack.config["destinations"] = {
            "cdp": {
                "kind": "cdp",
                "api": {
                    "base_url": f"{server.url}/public/v1",
                    "token": {"env": "CRMSYNC_TEST_CDP_TOKEN"},
                    "max_requests_per_second": 50,
                },
                "match_key": "email",
                "identities": {"email": "email", "crm:hubspot": "hubspot_contact_id"},
                "attributes": {"name": "first_name", "round": "round"},
                "batch_size": 25,
            }
        }
        stack.write_config()
        stack["outbound"].env["CRMSYNC_TEST_CDP_TOKEN"] = experiture.TOKEN
        yield space, server


def test_changes_reach_the_cdp_and_a_record_it_refuses_is_dead_lettered_alone(
    stack: Stack, cdp: tuple[Workspace, FakeServer]
) -> None:
    space, server = cdp
    server.faults.script(429, 503)  # a throttled and a failing answer first
    stack.start("writer", "outbound")
    emails = {i: f"person{i}@example.com" for i in range(60)}
    emails[13] = "not-an-email"
    changes = [
        update(
            "hubspot",
            str(i),
            t=version,
            email=emails[i],
            attributes={"name": f"P{i}", "round": version},
        )
        for version in (1, 2)
        for i in range(60)
    ]
    produce_updates(stack, changes)

    def rows() -> dict[str, dict[str, Any]]:
        return {row["hubspot_contact_id"]: row for row in space.rows}

    assert wait_for(
        lambda: len(rows()) == 59 and all(r.get("round") == 2 for r in rows().values()),
        timeout_s=90,
    ), stack["outbound"].log_tail()
    assert "13" not in rows()
    assert rows()["7"] == {
        "email": "person7@example.com",
        "hubspot_contact_id": "7",
        "first_name": "P7",
        "round": 2,
    }
    assert server.statuses[429] == 1

    def dead() -> list[Any]:
        return [
            rejection
            for m in read_committed(stack.bootstrap, stack.topic("rejected"))
            if (rejection := CONTRACTS.rejected_event.decode(m.value() or b"")).stage == "outbound"
        ]

    # Both changes of the refused profile, each with the CDP's own answer.
    assert wait_for(lambda: len(dead()) == 2, timeout_s=30)
    for rejection in dead():
        assert rejection.attributes == {"destination": "cdp", "status": "400"}
        assert "email: invalid email format" in rejection.reason
        assert CONTRACTS.profile_changed.decode(rejection.value or b"").record_id == "13"
