"""The HubSpot destination against the fake HubSpot's CRM v3 batch endpoints, served on
loopback: what a chunk of changes becomes, and what each answer does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Unpack

import pydantic
import pytest

from services.core.api_client import ApiUnavailable
from services.core.destinations.hubspot import HubSpotDestination
from services.core.profile_changed import (
    ProfileChanged,
    ProfileChangeKind,
)
from services.outbound.destinations.hubspot import property_text
from tests.fakes import hubspot
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.server import FakeServer, ServerThread
from tests.support.destinations import Changed, deliver, linked, profile_changed

pytestmark = pytest.mark.unit

UPSERT = "/crm/v3/objects/contacts/batch/upsert"
UPDATE = "/crm/v3/objects/contacts/batch/update"
GDPR_DELETE = "/crm/v3/objects/contacts/gdpr-delete"


@pytest.fixture
def account() -> Iterator[tuple[FakeHubSpot, FakeServer]]:
    crm = FakeHubSpot(search_requests_per_second=None)
    with ServerThread(FakeServer(crm.app())) as server:
        yield crm, server


def settings(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, **values: Any
) -> HubSpotDestination:
    monkeypatch.setenv("HUBSPOT_TEST_TOKEN", hubspot.TOKEN)
    api = {
        "base_url": server.url,
        "token": {"env": "HUBSPOT_TEST_TOKEN"},
        "max_attempts": 3,
        "backoff_initial_seconds": 0.05,
        **values.pop("api", {}),
    }
    return HubSpotDestination.model_validate(
        {"kind": "hubspot", "source": "hubspot", "api": api, **values}
    )


def change(profile: int, *, contact: str | None = None, **given: Unpack[Changed]) -> ProfileChanged:
    """A change made in the shop; ``contact``: the HubSpot contact id the profile carries."""
    return profile_changed(profile, crm=linked("hubspot", contact), source="shop", **given)


def live(crm: FakeHubSpot) -> dict[str, dict[str, Any]]:
    return {i: r for i, r in crm.contacts.items() if not r["archived"]}


def test_a_profile_is_created_by_email_then_updated_by_its_contact_id(
    account: tuple[FakeHubSpot, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    crm, server = account
    destination = settings(server, monkeypatch)
    first = deliver(
        destination,
        [
            change(1, event="e1", email="Ada@X.io", attributes={"firstname": (None, "Ada")}),
            change(1, event="e2", email="Ada@X.io", attributes={"firstname": ("Ada", "Ada L.")}),
        ],
    )
    assert first.refused == []
    [contact_id] = live(crm)
    assert first.assigned == {1: contact_id}
    assert crm.contacts[contact_id]["properties"]["email"] == "ada@x.io"
    assert crm.contacts[contact_id]["properties"]["firstname"] == "Ada L."

    second = deliver(
        destination,
        [
            change(
                1,
                event="e3",
                email="ada@x.io",
                contact=contact_id,
                attributes={"lastname": (None, "Lovelace")},
            )
        ],
    )
    assert second.refused == [] and second.assigned == {1: contact_id}
    assert [path for path, _ in crm.write_requests] == [UPSERT, UPDATE]
    _, body = crm.write_requests[-1]
    assert body["inputs"] == [
        {"id": contact_id, "objectWriteTraceId": "1", "properties": {"lastname": "Lovelace"}}
    ]
    assert crm.contacts[contact_id]["properties"]["lastname"] == "Lovelace"
    assert len(live(crm)) == 1


def test_only_what_changed_is_sent_and_a_clear_only_when_asked(
    account: tuple[FakeHubSpot, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    crm, server = account
    existing = crm.upsert(email="bob@x.io", firstname="Bob", city="Rome")["id"]
    delivered = deliver(
        settings(server, monkeypatch),
        [change(2, event="e1", contact=existing, attributes={"city": ("Rome", None)})],
    )
    assert delivered.refused == [] and crm.write_requests == []  # nothing to send
    deliver(
        settings(server, monkeypatch),
        [
            change(
                2,
                event="e2",
                contact=existing,
                attributes={"city": ("Rome", None), "age": (None, 41), "vip": (None, True)},
            )
        ],
    )
    [(_, body)] = crm.write_requests
    assert body["inputs"][0]["properties"] == {"age": "41", "vip": "true"}
    assert crm.contacts[existing]["properties"]["city"] == "Rome"
    deliver(
        settings(server, monkeypatch, send_clears=True),
        [change(2, event="e3", contact=existing, attributes={"city": ("Rome", None)})],
    )
    assert crm.write_requests[-1][1]["inputs"][0]["properties"] == {"city": ""}
    assert crm.contacts[existing]["properties"]["city"] == ""
    assert crm.contacts[existing]["properties"]["firstname"] == "Bob"


def test_values_are_strings_as_hubspot_stores_them() -> None:
    assert [property_text(v) for v in (None, False, 3, 2.5, ["a", "b"], "x")] == [
        "",
        "false",
        "3",
        "2.5",
        "a;b",
        "x",
    ]


def test_consents_are_checkbox_properties(
    account: tuple[FakeHubSpot, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    crm, server = account
    destination = settings(
        server, monkeypatch, consents={"newsletter": "newsletter_opt_in", "sms": "sms_opt_in"}
    )
    delivered = deliver(
        destination,
        [
            change(
                3, event="e1", email="cy@x.io", consents={"newsletter": "OPT_IN", "sms": "OPT_OUT"}
            )
        ],
    )
    [record] = live(crm).values()
    assert delivered.assigned == {3: record["id"]}
    assert record["properties"]["newsletter_opt_in"] == "true"
    assert record["properties"]["sms_opt_in"] == "false"


def test_a_chunk_over_the_limit_is_split_into_requests_of_100(
    account: tuple[FakeHubSpot, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    crm, server = account
    events = [
        change(n, event="e1", email=f"p{n}@x.io", attributes={"firstname": (None, f"P{n}")})
        for n in range(1, 102)
    ]
    delivered = deliver(settings(server, monkeypatch), events)
    assert delivered.refused == []
    assert [len(body["inputs"]) for _, body in crm.write_requests] == [100, 1]
    assert len(live(crm)) == 101 and len(delivered.assigned) == 101
    by_email = {r["properties"]["email"]: r["id"] for r in live(crm).values()}
    assert all(delivered.assigned[n] == by_email[f"p{n}@x.io"] for n in range(1, 102))


def test_only_the_inputs_hubspot_names_are_refused(
    account: tuple[FakeHubSpot, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    crm, server = account
    known = crm.upsert(email="dee@x.io")["id"]
    events = [
        change(1, event="e1", email="ada@x.io", attributes={"firstname": (None, "Ada")}),
        change(2, event="e1", email="not-an-email", attributes={"firstname": (None, "Bob")}),
        change(3, event="e1", contact="999999", attributes={"firstname": (None, "Cy")}),
        change(4, event="e1", contact=known, attributes={"firstname": (None, "Dee")}),
    ]
    delivered = deliver(settings(server, monkeypatch), events)
    refused = {r.change.event.profile_id: r for r in delivered.refused}
    assert sorted(refused) == [2, 3]
    assert refused[2].status == 400 and "VALIDATION_ERROR" in refused[2].answer
    assert refused[3].status == 400 and "OBJECT_NOT_FOUND" in refused[3].answer
    assert sorted(delivered.assigned) == [1, 4]
    names = sorted(r["properties"].get("firstname") or "" for r in live(crm).values())
    assert names == ["Ada", "Dee"]


def test_a_request_refused_as_a_whole_refuses_its_changes(
    account: tuple[FakeHubSpot, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    crm, server = account
    crm.upsert(email="ada@x.io")
    # Two profiles sharing an email: HubSpot refuses duplicate ids in one request.
    events = [
        change(1, event="e1", email="ada@x.io", attributes={"firstname": (None, "Ada")}),
        change(2, event="e1", email="ADA@x.io", attributes={"firstname": (None, "Ava")}),
    ]
    delivered = deliver(settings(server, monkeypatch), events)
    assert [(r.change.event.profile_id, r.status) for r in delivered.refused] == [
        (1, 400),
        (2, 400),
    ]
    assert "Duplicate IDs" in delivered.refused[0].answer


def test_sending_the_same_chunk_twice_leaves_the_same_contacts(
    account: tuple[FakeHubSpot, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    crm, server = account
    events = [
        change(1, event="e1", email="ada@x.io", attributes={"firstname": (None, "Ada")}),
        change(2, event="e1", email="bob@x.io", attributes={"firstname": (None, "Bob")}),
    ]
    destination = settings(server, monkeypatch)
    first = deliver(destination, events)
    state = {i: dict(r["properties"]) for i, r in live(crm).items()}
    crm.take_events()
    again = deliver(destination, events)
    assert again.assigned == first.assigned
    after = {i: dict(r["properties"]) for i, r in live(crm).items()}
    for properties in (*state.values(), *after.values()):
        properties.pop("lastmodifieddate")
    assert after == state
    assert crm.take_events() == []  # nothing changed: no webhook events either


def test_writes_are_marked_as_the_apps_own_in_webhook_events(
    account: tuple[FakeHubSpot, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    crm, server = account
    crm.upsert(email="eve@x.io")  # a user's edit in HubSpot
    deliver(
        settings(server, monkeypatch),
        [change(1, event="e1", email="ada@x.io", attributes={"firstname": (None, "Ada")})],
    )
    events = crm.take_events()
    origins = {(e["changeSource"], e["sourceId"]) for e in events[:2]}
    assert origins == {("CRM_UI", "userId:4242")}
    ours = events[2:]
    assert {e["subscriptionType"] for e in ours} == {"contact.creation", "contact.propertyChange"}
    assert {(e["changeSource"], e["sourceId"]) for e in ours} == {
        ("INTEGRATION", str(hubspot.APP_ID))
    }


def test_throttling_is_waited_out(
    account: tuple[FakeHubSpot, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    crm, server = account
    server.faults.retry_after_seconds = 1
    server.faults.script(429, 502)
    started = asyncio.run(_monotonic())
    delivered = deliver(
        settings(server, monkeypatch),
        [change(1, event="e1", email="ada@x.io", attributes={"firstname": (None, "Ada")})],
    )
    assert delivered.refused == [] and len(live(crm)) == 1
    assert asyncio.run(_monotonic()) - started >= 1.0  # Retry-After was honoured
    assert (server.statuses[429], server.statuses[502], server.statuses[200]) == (1, 1, 1)


async def _monotonic() -> float:
    return asyncio.get_running_loop().time()


def test_a_refused_token_is_an_outage(
    account: tuple[FakeHubSpot, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    crm, server = account
    monkeypatch.setenv("HUBSPOT_WRONG_TOKEN", "pat-na1-wrong")
    destination = settings(
        server, monkeypatch, api={"token": {"env": "HUBSPOT_WRONG_TOKEN"}, "max_attempts": 1}
    )
    with pytest.raises(ApiUnavailable, match="credentials refused"):
        deliver(
            destination,
            [change(1, event="e1", email="ada@x.io", attributes={"firstname": (None, "Ada")})],
        )
    assert crm.contacts == {}


def test_an_erased_profile_is_gdpr_deleted_by_id_or_email(
    account: tuple[FakeHubSpot, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    crm, server = account
    by_id = crm.upsert(email="ada@x.io")["id"]
    crm.upsert(email="bob@x.io")
    crm.take_events()
    erased = ProfileChangeKind.ERASED
    events = [
        change(1, event="e1", contact=by_id, attributes={"firstname": (None, "Ada")}),
        change(1, event="e2", contact=by_id, kind=erased),
        change(2, event="e2", email="BOB@x.io", kind=erased),
        change(3, event="e2", kind=erased),
    ]
    delivered = deliver(settings(server, monkeypatch), events, times=2)  # the second: 404
    assert [(r.change.event.profile_id, r.status) for r in delivered.refused] == [(3, None)]
    assert crm.contacts == {}
    assert [body for path, body in crm.write_requests] == [
        {"objectId": by_id},
        {"objectId": "BOB@x.io", "idProperty": "email"},
        {"objectId": by_id},
        {"objectId": "BOB@x.io", "idProperty": "email"},
    ]
    assert crm.blocklist == {"bob@x.io"}  # the second time HubSpot no longer knows it
    kinds = [(e["subscriptionType"], e["changeSource"]) for e in crm.take_events()]
    assert ("contact.privacyDeletion", "INTEGRATION") in kinds


def test_a_profile_without_id_or_email_and_a_detach_send_nothing(
    account: tuple[FakeHubSpot, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    crm, server = account
    delivered = deliver(
        settings(server, monkeypatch),
        [
            change(1, event="e1", attributes={"firstname": (None, "Ada")}),
            change(2, event="e1", email="b@x.io", kind=ProfileChangeKind.DETACHED),
        ],
    )
    assert [(r.change.event.profile_id, r.status) for r in delivered.refused] == [(1, None)]
    assert crm.write_requests == []


def test_settings_catch_what_hubspot_would_refuse(
    account: tuple[FakeHubSpot, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUBSPOT_TEST_TOKEN", hubspot.TOKEN)
    token = {"env": "HUBSPOT_TEST_TOKEN"}
    defaults = HubSpotDestination.model_validate({"kind": "hubspot", "api": {"token": token}})
    assert defaults.api.base_url == "https://api.hubapi.com" and defaults.batch_size == 100
    cases = [
        ({"batch_size": 101}, "less than or equal to 100"),
        ({"attributes": {"first_name": "First Name"}}, "internal name"),
        ({"api": {}}, "private app's access token"),
        ({"api": {"token": token, "base_url": "https://api.hubapi.com/crm/v3"}}, "host only"),
    ]
    for values, problem in cases:
        with pytest.raises(pydantic.ValidationError, match=problem):
            HubSpotDestination.model_validate(
                {"kind": "hubspot", "api": {"token": token}, **values}
            )
