"""The webCRM destination against the fake webCRM REST API, served on loopback: which
person a profile becomes, what is written, and what each answer does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Unpack

import pytest
from pydantic import ValidationError

from services.core.api_client import ApiUnavailable
from services.core.destinations.webcrm import WebCrmDestination
from services.core.profile_changed import (
    ProfileChanged,
    ProfileChangeKind,
)
from tests.fakes.server import FakeServer, Faults, ServerThread
from tests.fakes.webcrm import APP_TOKEN, FakeWebCrm
from tests.support.destinations import Attributes, FromHubSpot, deliver, from_hubspot, linked

pytestmark = pytest.mark.unit

TOKEN_ENV = "WEBCRM_DESTINATION_TEST_TOKEN"


@pytest.fixture
def crm() -> Iterator[tuple[FakeWebCrm, FakeServer]]:
    fake = FakeWebCrm()
    server = FakeServer(fake.app(), Faults(throttle_response=fake.throttle_response))
    with ServerThread(server) as running:
        yield fake, running


def settings(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, **values: Any
) -> WebCrmDestination:
    monkeypatch.setenv(TOKEN_ENV, APP_TOKEN)
    document: dict[str, Any] = {
        "kind": "webcrm",
        "source": "crm",
        "api": {
            "base_url": server.url,
            "token": {"env": TOKEN_ENV},
            "max_attempts": 3,
            "backoff_initial_seconds": 0.01,
        },
        "attributes": {
            "first_name": "PersonFirstName",
            "last_name": "PersonLastName",
            "title": "PersonTitle",
            "organisation": "PersonOrganisationId",
        },
        "consents": {"newsletter": "PersonBlockMassEmail", "events": "PersonCheckMark2"},
        **values,
    }
    return WebCrmDestination.model_validate(document)


def change(
    profile: int,
    email: str | None,
    attributes: Attributes | None = None,
    *,
    person: int | None = None,
    consents: dict[str, str] | None = None,
    **given: Unpack[FromHubSpot],
) -> ProfileChanged:
    """A HubSpot profile's change; ``person``: the webCRM PersonId it carries."""
    crm = linked("crm", person)
    return from_hubspot(profile, email, attributes, crm=crm, consents=consents, **given)


def test_a_new_profile_is_created_then_updated_by_its_id(
    crm: tuple[FakeWebCrm, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    destination = settings(server, monkeypatch, organisation_id=1)
    created = deliver(
        destination,
        [
            change(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1"),
            change(1, "ada@x.io", {"last_name": (None, "Lovelace")}, event="e2"),
        ],
    )
    assert created.refused == []
    [(person_id, person)] = fake.persons.items()
    assert created.assigned == {1: str(person_id)}
    assert fake.bodies == [
        {
            "PersonId": 0,
            "PersonOrganisationId": 1,
            "PersonFirstName": "Ada",
            "PersonLastName": "Lovelace",
            "PersonEmail": "ada@x.io",
        }
    ]
    assert person["PersonName"] == "Ada Lovelace"

    updated = deliver(
        destination, [change(1, "ada@x.io", {"title": (None, "CTO")}, event="e3", person=person_id)]
    )
    assert updated.assigned == {1: str(person_id)} and updated.refused == []
    assert fake.scripts == [fake.scripts[0]]  # by id: no second query
    after = fake.persons[person_id]
    # The whole person went back (PUT replaces): only the title changed.
    assert (after["PersonTitle"], after["PersonFirstName"], after["PersonEmail"]) == (
        "CTO",
        "Ada",
        "ada@x.io",
    )
    assert after["PersonPassword"] == person["PersonPassword"]


def test_a_person_with_the_email_is_found_not_duplicated(
    crm: tuple[FakeWebCrm, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    old = fake.upsert(PersonFirstName="Bob", PersonEmail="bob@x.io", PersonCustom1="keep")
    fake.upsert(PersonFirstName="Bob2", PersonEmail="bob@x.io")
    delivered = deliver(
        settings(server, monkeypatch),
        [change(2, "bob@x.io", {"last_name": (None, "Builder")}, event="e1")],
    )
    assert delivered.assigned == {2: str(old["PersonId"])} and len(fake.persons) == 2
    person = fake.persons[old["PersonId"]]
    assert (person["PersonLastName"], person["PersonCustom1"]) == ("Builder", "keep")
    assert "PersonEmail = 'bob@x.io'" in fake.scripts[-1]


def test_the_same_chunk_sent_twice_leaves_one_person_each(
    crm: tuple[FakeWebCrm, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    events = [
        change(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1"),
        change(2, "bob@x.io", {"first_name": (None, "Bob")}, event="e2"),
    ]
    first = deliver(settings(server, monkeypatch), events)
    state = {pid: (p["PersonFirstName"], p["PersonEmail"]) for pid, p in fake.persons.items()}
    again = deliver(settings(server, monkeypatch), events)
    assert again.assigned == first.assigned and len(first.assigned) == 2
    assert {pid: (p["PersonFirstName"], p["PersonEmail"]) for pid, p in fake.persons.items()} == (
        state
    )
    assert len(fake.bodies) == 2  # the resend found both unchanged: nothing written


def test_only_a_change_is_written_and_a_chunk_is_one_person_per_request(
    crm: tuple[FakeWebCrm, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    for n in range(1, 4):
        fake.upsert(n, PersonFirstName=f"Old{n}", PersonEmail=f"p{n}@x.io")
    destination = settings(server, monkeypatch)
    assert destination.batch_size == 20
    events = [
        change(n, None, {"first_name": (f"Old{n}", f"New{n}")}, event=f"e{n}", person=n)
        for n in range(1, 4)
    ]
    assert deliver(destination, events).refused == []
    assert [body["PersonId"] for body in fake.bodies] == [1, 2, 3]
    assert [fake.persons[n]["PersonFirstName"] for n in range(1, 4)] == ["New1", "New2", "New3"]
    with pytest.raises(ValidationError, match="less than or equal to 50"):
        settings(server, monkeypatch, batch_size=51)


def test_a_person_webcrm_refuses_refuses_only_that_profile(
    crm: tuple[FakeWebCrm, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    delivered = deliver(
        settings(server, monkeypatch),
        [
            change(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1"),
            change(2, "bob@x.io", {"organisation": (None, 77)}, event="e2"),
            change(3, "cy@x.io", {"first_name": (None, "Cy")}, event="e3"),
            change(4, "o'hara@x.io", {"first_name": (None, "O")}, event="e4"),
            change(5, None, {"first_name": (None, "N")}, event="e5"),
        ],
    )
    refused = {r.change.event.profile_id: (r.status, r.answer) for r in delivered.refused}
    assert refused[2][0] == 400 and "Organisation 77 does not exist" in refused[2][1]
    assert refused[4] == (None, "the profile's email has characters a webCRM query cannot carry")
    assert refused[5][0] is None and sorted(refused) == [2, 4, 5]
    assert sorted(p["PersonEmail"] for p in fake.persons.values()) == ["ada@x.io", "cy@x.io"]


def test_consents_become_the_mass_email_block_and_check_marks(
    crm: tuple[FakeWebCrm, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    destination = settings(server, monkeypatch)
    deliver(
        destination,
        [change(1, "ada@x.io", event="e1", consents={"newsletter": "OPT_OUT", "events": "OPT_IN"})],
    )
    [person] = fake.persons.values()
    assert (person["PersonBlockMassEmail"], person["PersonCheckMark2"]) == (True, True)
    deliver(destination, [change(1, "ada@x.io", event="e2", consents={"newsletter": "OPT_IN"})])
    assert fake.persons[person["PersonId"]]["PersonBlockMassEmail"] is False


def test_a_clear_is_sent_as_empty_text_only_when_asked(
    crm: tuple[FakeWebCrm, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    person = fake.upsert(PersonTitle="CEO", PersonEmail="bob@x.io")
    clear = {"title": ("CEO", None)}
    deliver(settings(server, monkeypatch), [change(2, "bob@x.io", clear, event="e1")])
    assert fake.persons[person["PersonId"]]["PersonTitle"] == "CEO" and fake.bodies == []
    deliver(
        settings(server, monkeypatch, send_clears=True), [change(2, "bob@x.io", clear, event="e2")]
    )
    assert fake.persons[person["PersonId"]]["PersonTitle"] == ""


def test_an_erased_profile_deletes_its_person_once(
    crm: tuple[FakeWebCrm, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    by_id = fake.upsert(PersonEmail="ada@x.io")
    fake.upsert(PersonEmail="bob@x.io")
    events = [
        change(1, "ada@x.io", event="e1", kind=ProfileChangeKind.ERASED, person=by_id["PersonId"]),
        change(2, "bob@x.io", event="e2", kind=ProfileChangeKind.ERASED),
        change(3, "nobody@x.io", event="e3", kind=ProfileChangeKind.ERASED),
        change(4, "cy@x.io", {}, event="e4", kind=ProfileChangeKind.DETACHED),
    ]
    delivered = deliver(settings(server, monkeypatch), events, times=2)
    assert delivered.refused == [] and delivered.assigned == {}
    assert fake.persons == {}


def test_a_delete_webcrm_does_not_serve_is_refused_not_taken_as_done(
    crm: tuple[FakeWebCrm, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    person = fake.upsert(PersonEmail="ada@x.io")
    fake.serves_delete = False
    delivered = deliver(
        settings(server, monkeypatch),
        [change(1, "ada@x.io", event="e1", kind=ProfileChangeKind.ERASED)],
    )
    [refused] = delivered.refused
    assert refused.status == 405 and "does not support http method" in refused.answer
    assert person["PersonId"] in fake.persons


def test_throttling_is_waited_out(
    crm: tuple[FakeWebCrm, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    fake.retry_after_seconds = 0
    server.faults.script(429, 502)
    delivered = deliver(
        settings(server, monkeypatch),
        [change(1, "ada@x.io", {"first_name": (None, "A")}, event="e")],
    )
    assert delivered.refused == [] and len(fake.persons) == 1
    assert server.statuses[429] == 1 and server.statuses[502] == 1


def test_a_refused_token_is_an_outage(
    crm: tuple[FakeWebCrm, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = crm
    destination = settings(server, monkeypatch)
    monkeypatch.setenv(TOKEN_ENV, "00000000-0000-0000-0000-000000000000")
    with pytest.raises(ApiUnavailable, match="credentials refused"):
        deliver(destination, [change(1, "ada@x.io", {"first_name": (None, "A")}, event="e1")])
    assert fake.persons == {}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"attributes": {"city": "city"}}, "not a webCRM person field"),
        ({"attributes": {"pw": "PersonPassword"}}, "not written by crmsync"),
        ({"attributes": {"mail": "PersonEmail"}}, "not written by crmsync"),
        ({"attributes": {}}, "name the webCRM person field"),
        ({"consents": {"news": "PersonCustom1"}}, "PersonBlockMassEmail"),
        ({"api": {"token": {"env": TOKEN_ENV}, "max_requests_per_second": 5}}, "250"),
        ({"api": {}}, "application token"),
    ],
)
def test_settings_refuse_what_webcrm_cannot_take(
    crm: tuple[FakeWebCrm, FakeServer],
    monkeypatch: pytest.MonkeyPatch,
    values: dict[str, Any],
    message: str,
) -> None:
    _fake, server = crm
    with pytest.raises(ValidationError, match=message):
        settings(server, monkeypatch, **values)
