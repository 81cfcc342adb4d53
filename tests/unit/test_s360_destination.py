"""The S-360 destination against the fake contact SOAP service, served on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Unpack

import pytest

from services.core.api_client import ApiUnavailable
from services.core.destinations.s360 import S360Destination
from services.core.profile_changed import (
    ProfileChanged,
    ProfileChangeKind,
)
from services.outbound.destinations.base import Delivered
from services.outbound.destinations.s360 import fault_of, fault_status
from tests.fakes.s360 import WS_PASSWORD, ContactService, FakeS360, soap_server
from tests.fakes.server import FakeServer, ServerThread
from tests.support.destinations import Attributes, FromHubSpot, deliver, from_hubspot, linked

pytestmark = pytest.mark.unit


@pytest.fixture
def s360() -> Iterator[tuple[ContactService, FakeServer]]:
    service = ContactService(FakeS360())
    with ServerThread(soap_server(service)) as server:
        yield service, server


def settings(
    server: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    password: str = WS_PASSWORD,
    **values: object,
) -> S360Destination:
    monkeypatch.setenv("S360_TEST_PASSWORD", password)
    return S360Destination.model_validate(
        {
            "kind": "s360",
            "source": "s360",
            "api": {"base_url": server.url, "max_attempts": 3, "backoff_initial_seconds": 0.05},
            "username": "CRMSYNC_WS",
            "password": {"env": "S360_TEST_PASSWORD"},
            "attributes": {"first_name": "firstName", "last_name": "lastName"},
            "consents": {"newsletter": "NEWSLETTER"},
            **values,
        }
    )


def change(
    profile: int,
    email: str | None,
    attributes: Attributes,
    *,
    number: str | None = None,
    **given: Unpack[FromHubSpot],
) -> ProfileChanged:
    """A HubSpot profile's change; ``number``: the S-360 contact number it carries."""
    return from_hubspot(profile, email, attributes, crm=linked("s360", number), **given)


def test_a_new_contact_is_created_then_updated_by_its_number(
    s360: tuple[ContactService, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, server = s360
    destination = settings(server, monkeypatch)
    first = deliver(destination, [change(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1")])
    assert first.refused == []
    [(profile, number)] = first.assigned.items()
    assert profile == 1
    assert service.crm.contacts[number]["individualContact"] == {
        "email": "ada@x.io",
        "firstName": "Ada",
    }
    again = deliver(
        destination,
        [change(1, "ada@x.io", {"last_name": (None, "Lovelace")}, event="e2", number=number)],
    )
    assert again == Delivered()
    assert len(service.crm.contacts) == 1
    assert service.crm.contacts[number]["individualContact"]["lastName"] == "Lovelace"
    assert service.crm.queue == [number]  # S-360 would notify its webhook of the change


def test_changes_fold_per_contact_and_only_what_changed_is_sent(
    s360: tuple[ContactService, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, server = s360
    number = service.crm.upsert(individualContact={"email": "bob@x.io", "lastName": "Stone"})
    delivered = deliver(
        settings(server, monkeypatch),
        [
            change(2, "bob@x.io", {"first_name": (None, "Bob")}, event="e1", number=number),
            change(2, "bob@x.io", {"first_name": ("Bob", "Robert")}, event="e2", number=number),
            change(2, "bob@x.io", {"last_name": ("Stone", None)}, event="e3", number=number),
        ],
    )
    assert delivered == Delivered()
    assert service.calls == ["saveIndividualContactData"]
    assert service.crm.contacts[number]["individualContact"] == {
        "email": "bob@x.io",
        "lastName": "Stone",  # a clear is left out: S-360 documents no way to clear
        "firstName": "Robert",
    }


def test_a_contact_without_number_is_matched_by_email_so_a_resend_creates_none(
    s360: tuple[ContactService, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, server = s360
    destination = settings(server, monkeypatch)
    events = [change(3, "cy@x.io", {"first_name": (None, "Cy")}, event="e1")]
    first = deliver(destination, events)
    second = deliver(destination, events)
    assert first.assigned == second.assigned and len(service.crm.contacts) == 1


def test_consents_become_authorizations(
    s360: tuple[ContactService, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, server = s360
    delivered = deliver(
        settings(server, monkeypatch), [change(4, "di@x.io", {}, event="e1", newsletter="OPT_IN")]
    )
    [number] = delivered.assigned.values()
    assert service.crm.contacts[number]["authorizations"] == [{"code": "NEWSLETTER", "value": True}]


def test_a_failed_status_refuses_only_its_contact(
    s360: tuple[ContactService, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, server = s360
    delivered = deliver(
        settings(server, monkeypatch),
        [
            change(5, "not-an-email", {"first_name": (None, "E")}, event="e1"),
            change(6, "fa@x.io", {"first_name": (None, "Fa")}, event="e1"),
            change(7, "go@x.io", {"first_name": (None, "Go")}, event="e1", number="404"),
        ],
    )
    refused = {r.change.event.profile_id: r.answer for r in delivered.refused}
    assert refused == {
        5: "statusCode failed: invalid email: not-an-email",
        7: "statusCode failed: no contact with number 404",
    }
    assert list(delivered.assigned) == [6]
    assert len(service.crm.contacts) == 1


def test_a_client_fault_refuses_and_is_not_retried(
    s360: tuple[ContactService, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, server = s360
    destination = settings(server, monkeypatch, attributes={"shoe_size": "shoeSize"})
    delivered = deliver(destination, [change(8, "h@x.io", {"shoe_size": (None, 44)}, event="e1")])
    [refusal] = delivered.refused
    assert refusal.status == 400 and "unexpected element shoeSize" in refusal.answer
    assert server.requests == 1 and service.crm.contacts == {}


def test_erased_and_unmatchable_profiles_are_refused_before_sending(
    s360: tuple[ContactService, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    _service, server = s360
    delivered = deliver(
        settings(server, monkeypatch),
        [
            change(9, "i@x.io", {}, event="e1", kind=ProfileChangeKind.ERASED),
            change(10, None, {"first_name": (None, "J")}, event="e1"),
        ],
    )
    assert sorted((r.change.event.profile_id, r.status) for r in delivered.refused) == [
        (9, None),
        (10, None),
    ]
    assert server.requests == 0


def test_a_wrong_password_is_an_outage(
    s360: tuple[ContactService, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    _service, server = s360
    with pytest.raises(ApiUnavailable, match="credentials refused"):
        deliver(
            settings(server, monkeypatch, password="wrong"),
            [change(11, "k@x.io", {"first_name": (None, "K")}, event="e1")],
        )
    assert server.requests == 1


def test_throttling_and_server_faults_are_waited_out(
    s360: tuple[ContactService, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, server = s360
    server.faults.script(429, 503)
    delivered = deliver(
        settings(server, monkeypatch),
        [change(12, "l@x.io", {"first_name": (None, "L")}, event="e1")],
    )
    assert delivered.refused == [] and len(service.crm.contacts) == 1
    assert server.statuses[429] == 1 and server.statuses[200] == 1


def test_fault_codes_read_as_what_they_mean() -> None:
    def envelope(code: str) -> bytes:
        return (
            '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
            f"<faultcode>{code}</faultcode><faultstring>x</faultstring></s:Fault></s:Body>"
            "</s:Envelope>"
        ).encode()

    statuses = {}
    for code in ("s:Client", "s:Client.Validation", "s:Server", "wsse:InvalidSecurity"):
        fault = fault_of(envelope(code))
        assert fault is not None
        statuses[code] = fault_status(fault)
    assert statuses == {
        "s:Client": 400,
        "s:Client.Validation": 400,
        "s:Server": None,
        "wsse:InvalidSecurity": 401,
    }
    assert fault_of(b"<!DOCTYPE x [<!ENTITY a 'b'>]><x/>") is None


def test_settings_catch_what_s360_would_refuse() -> None:
    base = {
        "kind": "s360",
        "api": {"base_url": "https://myinstit.ws.secutix.com"},
        "username": "u",
        "password": {"env": "X"},
    }
    with pytest.raises(ValueError, match="map each profile attribute"):
        S360Destination.model_validate(base)
    with pytest.raises(ValueError, match="XML names"):
        S360Destination.model_validate({**base, "attributes": {"first_name": "first name"}})
    with pytest.raises(ValueError, match="host only"):
        S360Destination.model_validate(
            {
                **base,
                "api": {"base_url": "https://myinstit.ws.secutix.com/tnco"},
                "attributes": {"a": "b"},
            }
        )
