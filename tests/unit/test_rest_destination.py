"""The generic REST destination against a receiving JSON API, served on loopback."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Unpack

import pytest

from services.core.api_client import ApiUnavailable
from services.core.destinations.rest import RestDestination
from services.core.profile_changed import (
    ProfileChanged,
    ProfileChangeKind,
)
from services.outbound.destinations.base import Delivered
from services.outbound.destinations.rest import RestRecords, pointed
from tests.fakes import rest_receiver
from tests.fakes.rest_receiver import Receiver
from tests.fakes.server import FakeServer, ServerThread
from tests.support.destinations import (
    Attributes,
    FromHubSpot,
    from_hubspot,
    linked,
    send_each,
    shaped,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, FakeServer]]:
    api = Receiver()
    with ServerThread(rest_receiver.server(api)) as server:
        yield api, server


def settings(
    server: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    token: str = rest_receiver.TOKEN,
    **values: object,
) -> RestDestination:
    monkeypatch.setenv("REST_TEST_TOKEN", token)
    monkeypatch.setenv("REST_TEST_KEY", rest_receiver.API_KEY)
    return RestDestination.model_validate(
        {
            "kind": "rest",
            "source": "crm",
            "api": {
                "base_url": f"{server.url}/v1",
                "token": {"env": "REST_TEST_TOKEN"},
                "max_attempts": 3,
                "backoff_initial_seconds": 0.05,
            },
            "method": "PATCH",
            "path": "/contacts/{crm_id}",
            "create_path": "/contacts",
            "delete_path": "/contacts/{crm_id}",
            "secret_headers": {"X-Api-Key": {"env": "REST_TEST_KEY"}},
            "headers": {"X-Source": "crmsync"},
            "idempotency_header": "Idempotency-Key",
            "id_pointer": "/data/id",
            **values,
        }
    )


def change(
    profile: int,
    email: str | None,
    attributes: Attributes,
    *,
    crm_id: str | None = None,
    **given: Unpack[FromHubSpot],
) -> ProfileChanged:
    """A HubSpot profile's change; ``crm_id``: the receiving API's id it carries."""
    return from_hubspot(profile, email, attributes, crm=linked("crm", crm_id), **given)


def send(destination: RestDestination, *chunks: Sequence[ProfileChanged]) -> list[Delivered]:
    """The chunks sent in turn by one opened destination (the receiver's idempotency
    ledger and id counter see them as one client's)."""
    chunks_out = [shaped(events, destination) for events in chunks]
    return send_each(RestRecords("rest", destination), chunks_out)


def test_a_record_is_created_then_updated_by_id_with_only_what_changed(
    receiver: tuple[Receiver, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, server = receiver
    destination = settings(server, monkeypatch, consents={"newsletter": "newsletter"})
    [created] = send(
        destination,
        [
            change(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1"),
            change(
                1, "ada@x.io", {"first_name": ("Ada", "Ada L.")}, event="e2", newsletter="OPT_IN"
            ),
        ],
    )
    assert created == Delivered(assigned={1: "100"})
    [updated] = send(
        destination,
        [
            change(
                1,
                "ada@x.io",
                {"city": (None, "Oslo"), "first_name": ("Ada L.", None)},
                event="e3",
                crm_id="100",
            )
        ],
    )
    assert updated == Delivered()
    assert api.contacts == {
        "100": {"email": "ada@x.io", "first_name": "Ada L.", "newsletter": True, "city": "Oslo"}
    }
    assert [(m, p) for m, p, _ in api.requests] == [
        ("POST", "/v1/contacts"),
        ("PATCH", "/v1/contacts/100"),
    ]
    assert api.requests[1][2] == {"email": "ada@x.io", "city": "Oslo"}


def test_a_chunk_sent_again_is_answered_from_the_idempotency_ledger(
    receiver: tuple[Receiver, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, server = receiver
    events = [change(2, "bob@x.io", {"first_name": (None, "Bob")}, event="e1")]
    first, second = send(settings(server, monkeypatch), events, events)
    assert first == second == Delivered(assigned={2: "100"})
    assert len(api.contacts) == 1 and api.replayed == 1


def test_a_refusal_names_only_its_profile(
    receiver: tuple[Receiver, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, server = receiver
    api.refuse = lambda contact: "no bots" if contact.get("first_name") == "Bot" else None
    [delivered] = send(
        settings(server, monkeypatch),
        [
            change(3, "cy@x.io", {"first_name": (None, "Cy")}, event="e1"),
            change(4, "bot@x.io", {"first_name": (None, "Bot")}, event="e1"),
            change(5, "di@x.io", {"first_name": (None, "Di")}, event="e1", crm_id="999"),
        ],
    )
    refused = {r.change.event.profile_id: (r.status, r.answer) for r in delivered.refused}
    assert refused[4] == (422, '{"error": "no bots"}')
    assert refused[5][0] == 404
    assert delivered.assigned == {3: "100"}


def test_batches_wrap_profiles_and_report_ids_by_index(
    receiver: tuple[Receiver, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, server = receiver
    destination = settings(
        server,
        monkeypatch,
        method="POST",
        path="/contacts/batch",
        create_path=None,
        batch_key="contacts",
        batch_size=rest_receiver.MAX_BATCH,
        identities={"email": "email", "crm": "id"},
        id_pointer="/results/{index}/id",
    )
    events = [
        change(p, f"p{p}@x.io", {"first_name": (None, f"P{p}")}, event="e1") for p in range(1, 5)
    ]
    first, second = send(destination, events[:3], events[3:])
    assert first.assigned == {1: "100", 2: "101", 3: "102"} and second.assigned == {4: "103"}
    assert [len(body["contacts"]) for _, _, body in api.requests] == [3, 1]
    [too_many] = send(destination, events)
    assert {r.status for r in too_many.refused} == {400} and len(too_many.refused) == 4


def test_erased_records_are_deleted_else_refused(
    receiver: tuple[Receiver, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, server = receiver
    api.contacts["7"] = {"email": "e@x.io"}
    erase = [change(6, "e@x.io", {}, event="e1", crm_id="7", kind=ProfileChangeKind.ERASED)]
    first, second = send(settings(server, monkeypatch), erase, erase)
    assert first == second == Delivered() and api.contacts == {}
    [kept] = send(settings(server, monkeypatch, delete_path=None), erase)
    assert [(r.status, r.answer[:15]) for r in kept.refused] == [(None, "no delete_path ")]


def test_a_wrong_token_is_an_outage_and_throttling_is_waited_out(
    receiver: tuple[Receiver, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    _api, server = receiver
    with pytest.raises(ApiUnavailable, match="credentials refused"):
        send(
            settings(server, monkeypatch, token="wrong"),
            [change(7, "f@x.io", {"first_name": (None, "F")}, event="e1")],
        )
    server.faults.script(429, 408, 503)
    destination = settings(server, monkeypatch)
    destination = destination.model_copy(
        update={"api": destination.api.model_copy(update={"max_attempts": 5})}
    )
    [delivered] = send(destination, [change(8, "g@x.io", {"first_name": (None, "G")}, event="e1")])
    assert delivered == Delivered(assigned={8: "100"})
    assert server.statuses[429] == 1 and server.statuses[408] == 1


def test_a_profile_without_what_the_path_needs_is_refused_before_sending(
    receiver: tuple[Receiver, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, server = receiver
    [delivered] = send(
        settings(server, monkeypatch, create_path=None),
        [change(9, "h@x.io", {"first_name": (None, "H")}, event="e1")],
    )
    assert [r.status for r in delivered.refused] == [None] and api.requests == []


def test_json_pointers() -> None:
    document = {"data": {"id": 5, "a/b": [1, {"~": "x"}]}}
    assert pointed(document, "/data/id") == 5
    assert pointed(document, "/data/a~1b/1/~0") == "x"
    assert pointed(document, "/data/missing") is None


def test_settings_catch_what_an_operator_gets_wrong() -> None:
    base = {"kind": "rest", "api": {"base_url": "https://api.example.com"}}
    with pytest.raises(ValueError, match="unknown placeholder id"):
        RestDestination.model_validate({**base, "path": "/contacts/{id}"})
    with pytest.raises(ValueError, match="source"):
        RestDestination.model_validate({**base, "path": "/contacts/{crm_id}"})
    with pytest.raises(ValueError, match="without placeholders"):
        RestDestination.model_validate({**base, "path": "/c/{email}", "batch_key": "contacts"})
    with pytest.raises(ValueError, match="retry_statuses"):
        RestDestination.model_validate({**base, "path": "/c", "retry_statuses": [401]})


def test_an_api_down_past_its_retries_holds_the_changes_instead_of_refusing_them(
    receiver: tuple[Receiver, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, server = receiver
    api.contacts["100"] = {"email": "e@x.io"}
    down = settings(server, monkeypatch, delete_path="/contacts/{crm_id}")
    for chunk in (
        [change(8, "g@x.io", {"first_name": (None, "G")}, event="e1")],
        [change(7, "e@x.io", {}, event="e2", kind=ProfileChangeKind.ERASED, crm_id="100")],
    ):
        server.faults.script(503, 503, 503)  # every attempt the settings allow
        with pytest.raises(ApiUnavailable):
            send(down, chunk)
    assert api.contacts == {"100": {"email": "e@x.io"}}
