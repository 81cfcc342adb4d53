"""The CDP destination against the fake of its records API, served on loopback: what a
chunk of changes becomes, and what each answer does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.core.api_client import ApiUnavailable
from services.core.destinations import CdpDestination
from services.core.profile_changed import ProfileChangeKind
from services.outbound.destinations.cdp import idempotency_key
from services.outbound.outgoing import OutgoingChange
from tests.fakes import experiture
from tests.fakes.experiture import Workspace
from tests.fakes.server import FakeServer, ServerThread
from tests.support.destinations import deliver, from_hubspot

pytestmark = pytest.mark.unit


@pytest.fixture
def workspace() -> Iterator[tuple[Workspace, FakeServer]]:
    space = Workspace(
        fields={"email", "hubspot_contact_id", "first_name", "city", "newsletter"},
        identity_keys={"email", "hubspot_contact_id"},
    )
    with ServerThread(experiture.server(space)) as server:
        yield space, server


def settings(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, **values: object
) -> CdpDestination:
    monkeypatch.setenv("CDP_TEST_TOKEN", experiture.TOKEN)
    return CdpDestination.model_validate(
        {
            "kind": "cdp",
            "api": {
                "base_url": f"{server.url}/public/v1",
                "token": {"env": "CDP_TEST_TOKEN"},
                "max_attempts": 2,
                "backoff_initial_seconds": 0.05,
            },
            "match_key": "email",
            "identities": {"email": "email", "crm:hubspot": "hubspot_contact_id"},
            **values,
        }
    )


def test_a_profile_is_one_record_with_its_identities_and_what_changed(
    workspace: tuple[Workspace, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = workspace
    destination = settings(server, monkeypatch)
    events = [
        from_hubspot(
            1, "ada@x.io", {"first_name": (None, "Ada"), "city": (None, "Oslo")}, event="e1"
        ),
        from_hubspot(1, "ada@x.io", {"first_name": ("Ada", "Ada L.")}, event="e2"),
        from_hubspot(2, "bob@x.io", {"city": ("Rome", None)}, event="e3"),
    ]
    assert deliver(destination, events).refused == []
    assert space.rows == [
        {"hubspot_contact_id": "1", "email": "ada@x.io", "first_name": "Ada L.", "city": "Oslo"},
        {"hubspot_contact_id": "2", "email": "bob@x.io"},
    ]


def test_a_clear_is_sent_as_null_only_when_asked(
    workspace: tuple[Workspace, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = workspace
    space.seed({"email": "bob@x.io", "city": "Rome"})
    deliver(
        settings(server, monkeypatch),
        [from_hubspot(2, "bob@x.io", {"city": ("Rome", None)}, event="e1")],
    )
    assert space.rows[0]["city"] == "Rome"
    deliver(
        settings(server, monkeypatch, send_clears=True),
        [from_hubspot(2, "bob@x.io", {"city": ("Rome", None)}, event="e2")],
    )
    assert "city" not in space.rows[0]


def test_a_chunk_sent_again_is_answered_from_the_idempotency_ledger(
    workspace: tuple[Workspace, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = workspace
    events = [from_hubspot(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1")]
    assert deliver(settings(server, monkeypatch), events, times=2).refused == []
    assert (space.upserts, space.replayed) == (1, 1)


def test_only_the_record_the_cdp_names_is_refused(
    workspace: tuple[Workspace, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = workspace
    events = [
        from_hubspot(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1"),
        from_hubspot(2, "not-an-email", {"first_name": (None, "Bob")}, event="e2"),
        from_hubspot(3, "cy@x.io", {"first_name": (None, "Cy")}, event="e3"),
    ]
    [refused] = deliver(settings(server, monkeypatch), events).refused
    assert refused.change.event.profile_id == 2 and refused.status == 400
    assert "records[1].email: invalid email format" in refused.answer
    assert [row["email"] for row in space.rows] == ["ada@x.io", "cy@x.io"]


def test_what_the_cdp_cannot_take_is_refused_before_sending(
    workspace: tuple[Workspace, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = workspace
    events = [
        from_hubspot(1, None, {"first_name": (None, "Ada")}, event="e1"),
        from_hubspot(2, "bob@x.io", {}, event="e2", kind=ProfileChangeKind.ERASED),
        from_hubspot(3, "cy@x.io", {"first_name": (None, "Cy")}, event="e3"),
    ]
    refused = deliver(settings(server, monkeypatch), events).refused
    assert sorted((r.change.event.profile_id, r.status) for r in refused) == [(1, None), (2, None)]
    assert [row["email"] for row in space.rows] == ["cy@x.io"]


def test_a_field_the_schema_lacks_refuses_its_record_and_a_wrong_token_is_an_outage(
    workspace: tuple[Workspace, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    _space, server = workspace
    destination = settings(server, monkeypatch)
    [refused] = deliver(
        destination, [from_hubspot(1, "ada@x.io", {"shoe_size": (None, 44)}, event="e1")]
    ).refused
    assert refused.status == 422 and "CDP_ETL.VALIDATION.REQUEST_SCHEMA" in refused.answer
    monkeypatch.setenv("CDP_OTHER_TOKEN", "wrong")
    with pytest.raises(ApiUnavailable, match="credentials refused"):
        deliver(
            settings(
                server,
                monkeypatch,
                api={
                    "base_url": f"{server.url}/public/v1",
                    "token": {"env": "CDP_OTHER_TOKEN"},
                    "max_attempts": 1,
                },
            ),
            [from_hubspot(2, "b@x.io", {"first_name": (None, "B")}, event="e2")],
        )


def test_throttling_is_waited_out(
    workspace: tuple[Workspace, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = workspace
    server.faults.script(429, 409, 503)
    destination = settings(server, monkeypatch).model_copy(
        update={"api": settings(server, monkeypatch).api.model_copy(update={"max_attempts": 5})}
    )
    event = from_hubspot(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1")
    assert deliver(destination, [event]).refused == []
    assert len(space.rows) == 1
    assert server.statuses[429] == 1 and server.statuses[200] == 1


def test_the_idempotency_key_is_a_uuid_of_the_changes() -> None:
    import uuid

    first = [OutgoingChange(from_hubspot(1, "a@x.io", {}, event="e1"))]
    again = [OutgoingChange(from_hubspot(1, "a@x.io", {}, event="e1"))]
    other = [OutgoingChange(from_hubspot(1, "a@x.io", {}, event="e2"))]
    assert idempotency_key(first) == idempotency_key(again) != idempotency_key(other)
    assert uuid.UUID(idempotency_key(first)).version == 4
