"""The Pipedrive destination against the fake persons API v2, served on loopback: which
person a profile becomes, what each request carries, and what each answer does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Unpack

import pytest
from pydantic import ValidationError

from services.core.api_client import ApiUnavailable
from services.core.destinations.pipedrive import PipedriveDestination
from services.core.profile_changed import (
    ProfileChanged,
    ProfileChangeKind,
)
from tests.fakes.pipedrive import API_TOKEN, NEWSLETTER, TOKEN_USER_ID, FakePipedrive
from tests.fakes.server import FakeServer, Faults, ServerThread
from tests.support.destinations import Attributes, FromHubSpot, deliver, from_hubspot, linked

pytestmark = pytest.mark.unit

TOKEN_ENV = "PIPEDRIVE_DESTINATION_TEST_TOKEN"


@pytest.fixture
def crm() -> Iterator[tuple[FakePipedrive, FakeServer]]:
    fake = FakePipedrive()
    fake.reset_seconds = 0
    server = FakeServer(fake.app(), Faults(throttle_response=fake.throttle_response))
    with ServerThread(server) as running:
        yield fake, running


def settings(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, **values: Any
) -> PipedriveDestination:
    monkeypatch.setenv(TOKEN_ENV, API_TOKEN)
    document: dict[str, Any] = {
        "kind": "pipedrive",
        "source": "pd",
        "api": {
            "base_url": server.url,
            "token": {"env": TOKEN_ENV},
            "max_attempts": 3,
            "backoff_initial_seconds": 0.01,
            "max_requests_per_second": 1000,
        },
        "attributes": {
            "full_name": "name",
            "mobile": "phone",
            "visibility": "visible_to",
            "newsletter": f"custom_fields.{NEWSLETTER}",
        },
        "consents": {"marketing": "marketing_status"},
        **values,
    }
    return PipedriveDestination.model_validate(document)


def change(
    profile: int,
    email: str | None,
    attributes: Attributes | None = None,
    *,
    person: int | None = None,
    consent: str | None = None,
    **given: Unpack[FromHubSpot],
) -> ProfileChanged:
    """A HubSpot profile's change; ``person``: the Pipedrive person id it carries,
    ``consent``: the status of its marketing subscription."""
    consents = None if consent is None else {"marketing": consent}
    return from_hubspot(
        profile, email, attributes, crm=linked("pd", person), consents=consents, **given
    )


def emails(person: dict[str, Any]) -> list[str]:
    return [item["value"] for item in person["emails"]]


def test_a_new_profile_is_created_then_updated_by_its_id(
    crm: tuple[FakePipedrive, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    destination = settings(server, monkeypatch)
    created = deliver(
        destination,
        [
            change(1, "ada@x.io", {"full_name": (None, "Ada")}, event="e1"),
            change(1, "ada@x.io", {"full_name": ("Ada", "Ada L.")}, event="e2"),
        ],
    )
    assert created.refused == []
    [(person_id, person)] = fake.persons.items()
    assert created.assigned == {1: str(person_id)}
    assert (person["name"], emails(person)) == ("Ada L.", ["ada@x.io"])
    assert fake.bodies[-1] == {
        "name": "Ada L.",
        "emails": [{"value": "ada@x.io", "primary": True, "label": "work"}],
    }

    updated = deliver(
        destination,
        [change(1, "ada@x.io", {"mobile": (None, "+4511")}, event="e3", person=person_id)],
    )
    assert updated.assigned == {1: str(person_id)} and updated.refused == []
    assert fake.searches == 1  # the update went by id, without a search
    assert fake.bodies[-1] == {"phones": [{"value": "+4511", "primary": True, "label": "work"}]}
    assert fake.persons[person_id]["name"] == "Ada L."


def test_a_person_with_the_email_is_found_not_duplicated(
    crm: tuple[FakePipedrive, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    existing = fake.upsert(first_name="Bob", email="Bob@X.io", custom={NEWSLETTER: "yes"})
    delivered = deliver(
        settings(server, monkeypatch),
        [change(2, "bob@x.io", {"newsletter": ("yes", "no")}, event="e1")],
    )
    assert delivered.assigned == {2: str(existing["id"])}
    assert len(fake.persons) == 1
    assert fake.persons[existing["id"]]["custom_fields"][NEWSLETTER] == "no"
    assert fake.bodies == [{"custom_fields": {NEWSLETTER: "no"}}]


def test_the_same_chunk_sent_twice_leaves_one_person_each(
    crm: tuple[FakePipedrive, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    events = [
        change(1, "ada@x.io", {"full_name": (None, "Ada")}, event="e1"),
        change(2, "bob@x.io", {"full_name": (None, "Bob")}, event="e2"),
    ]
    first = deliver(settings(server, monkeypatch), events)
    state = {pid: (p["name"], emails(p)) for pid, p in fake.persons.items()}
    again = deliver(settings(server, monkeypatch), events)
    assert again.assigned == first.assigned and len(first.assigned) == 2
    assert {pid: (p["name"], emails(p)) for pid, p in fake.persons.items()} == state


def test_each_profile_is_one_request_and_the_chunk_stays_small(
    crm: tuple[FakePipedrive, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    destination = settings(server, monkeypatch)
    assert destination.batch_size == 20
    for n in range(1, 4):
        fake.upsert(n, first_name=f"Old{n}")
    events = [
        change(n, None, {"full_name": (None, f"P{n}")}, event=f"e{n}", person=n)
        for n in range(1, 4)
    ]
    before = server.requests
    assert deliver(destination, events).refused == []
    assert server.requests - before == 3 and fake.api_writes == 3
    with pytest.raises(ValidationError, match="less than or equal to 100"):
        settings(server, monkeypatch, batch_size=101)


def test_a_value_pipedrive_refuses_refuses_only_that_profile(
    crm: tuple[FakePipedrive, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    delivered = deliver(
        settings(server, monkeypatch),
        [
            change(1, "ada@x.io", {"visibility": (None, 3)}, event="e1"),
            change(2, "bob@x.io", {"visibility": (None, 99)}, event="e2"),
            change(3, "cy@x.io", {"full_name": (None, "Cy")}, event="e3"),
        ],
    )
    [refused] = delivered.refused
    assert refused.change.event.profile_id == 2 and refused.status == 400
    assert "visible_to must be one of" in refused.answer
    assert sorted(delivered.assigned) == [1, 3]
    assert sorted(e for p in fake.persons.values() for e in emails(p)) == ["ada@x.io", "cy@x.io"]


def test_what_cannot_be_sent_is_refused_and_nothing_to_send_is_delivered(
    crm: tuple[FakePipedrive, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    delivered = deliver(
        settings(server, monkeypatch),
        [
            change(1, None, {"full_name": (None, "Ada")}, event="e1"),
            change(2, "bob@x.io", {}, event="e2", kind=ProfileChangeKind.DETACHED),
        ],
    )
    [refused] = delivered.refused
    assert refused.change.event.profile_id == 1 and refused.status is None
    assert delivered.assigned == {} and fake.persons == {} and fake.searches == 0


def test_a_clear_is_sent_as_null_only_when_asked(
    crm: tuple[FakePipedrive, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    person = fake.upsert(first_name="Bob", email="bob@x.io", custom={NEWSLETTER: "yes"})
    clear = {"newsletter": ("yes", None)}
    deliver(settings(server, monkeypatch), [change(2, "bob@x.io", clear, event="e1")])
    assert fake.persons[person["id"]]["custom_fields"][NEWSLETTER] == "yes"
    assert fake.api_writes == 0  # nothing left to send
    deliver(
        settings(server, monkeypatch, send_clears=True),
        [change(2, "bob@x.io", clear, event="e2")],
    )
    assert fake.persons[person["id"]]["custom_fields"][NEWSLETTER] is None


def test_the_marketing_consent_becomes_the_marketing_status(
    crm: tuple[FakePipedrive, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    destination = settings(server, monkeypatch)
    deliver(destination, [change(1, "ada@x.io", event="e1", consent="OPT_IN")])
    [person] = fake.persons.values()
    assert person["marketing_status"] == "subscribed"
    deliver(destination, [change(1, "ada@x.io", event="e2", consent="OPT_OUT")])
    assert person["id"] in fake.persons
    assert fake.persons[person["id"]]["marketing_status"] == "unsubscribed"


def test_an_erased_profile_deletes_its_person_once(
    crm: tuple[FakePipedrive, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    by_id = fake.upsert(first_name="Ada", email="ada@x.io")
    by_email = fake.upsert(first_name="Bob", email="bob@x.io")
    events = [
        change(1, "ada@x.io", event="e1", kind=ProfileChangeKind.ERASED, person=by_id["id"]),
        change(2, "bob@x.io", event="e2", kind=ProfileChangeKind.ERASED),
        change(3, "nobody@x.io", event="e3", kind=ProfileChangeKind.ERASED),
    ]
    delivered = deliver(settings(server, monkeypatch), events, times=2)
    assert delivered.refused == [] and delivered.assigned == {}
    assert fake.persons == {}
    assert sorted(fake.deleted) == [by_id["id"], by_email["id"]]


def test_api_writes_come_back_as_webhooks_marked_api_by_the_tokens_user(
    crm: tuple[FakePipedrive, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    fake.upsert(first_name="Old", email="old@x.io")
    deliver(settings(server, monkeypatch), [change(1, "ada@x.io", event="e1", consent="OPT_IN")])
    app_edit, api_write = fake.events
    assert (app_edit["meta"]["change_source"], app_edit["meta"]["user_id"]) == ("app", "123")
    assert api_write["meta"]["action"] == "create"
    assert (api_write["meta"]["change_source"], api_write["meta"]["user_id"]) == (
        "api",
        TOKEN_USER_ID,
    )


def test_throttling_is_waited_out(
    crm: tuple[FakePipedrive, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    server.faults.script(429, 503)
    delivered = deliver(
        settings(server, monkeypatch),
        [change(1, "ada@x.io", {"full_name": (None, "A")}, event="e")],
    )
    assert delivered.refused == [] and len(fake.persons) == 1
    assert server.statuses[429] == 1 and server.statuses[503] == 1


def test_a_refused_token_is_an_outage(
    crm: tuple[FakePipedrive, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    destination = settings(server, monkeypatch)
    monkeypatch.setenv(TOKEN_ENV, "wrong")
    with pytest.raises(ApiUnavailable, match="credentials refused"):
        deliver(destination, [change(1, "ada@x.io", {"full_name": (None, "A")}, event="e1")])
    assert fake.persons == {}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"attributes": {"city": "city"}}, "not a Pipedrive person field"),
        ({"attributes": {"x": "custom_fields.short"}}, "not a Pipedrive person field"),
        ({"attributes": {}}, "name the Pipedrive person field"),
        ({"consents": {"news": "newsletter"}}, "marketing_status"),
        ({"api": {"token": {"env": TOKEN_ENV}, "base_url": "https://x.io/api/v2"}}, "host only"),
        ({"api": {"base_url": "https://api.pipedrive.com"}}, "personal API token"),
    ],
)
def test_settings_refuse_what_pipedrive_cannot_take(
    crm: tuple[FakePipedrive, FakeServer],
    monkeypatch: pytest.MonkeyPatch,
    values: dict[str, Any],
    message: str,
) -> None:
    _fake, server = crm
    with pytest.raises(ValidationError, match=message):
        settings(server, monkeypatch, **values)


def test_the_api_host_defaults_to_pipedrives() -> None:
    destination = PipedriveDestination.model_validate(
        {
            "kind": "pipedrive",
            "api": {"token": {"env": TOKEN_ENV}},
            "attributes": {"full_name": "name"},
        }
    )
    assert destination.api.base_url == "https://api.pipedrive.com"
