"""Every destination kind on the real broker, writer and outbound service, against the
fake of its vendor's API: profiles committed in two rounds reach the vendor, each once,
holding the second round's values; where the vendor checks emails, a profile whose
email it refuses is dead-lettered with the vendor's answer and holds up no other.

ProfileUpdates go straight on the profile-updates topic (sources and mapper are not
what is tested here). HubSpot, Salesforce and Mailchimp go the whole way in
test_outbound_crms.py, the webhook and the CDP in their own files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import pytest

from services.core.codecs import load_contracts
from services.core.contracts import RejectedEvent
from services.core.destinations.apsis import EMAIL_KEYSPACE
from tests.fakes import apsis, klaviyo, rest_receiver
from tests.fakes.pipedrive import API_TOKEN, FakePipedrive
from tests.fakes.s360 import WS_PASSWORD, ContactService, FakeS360, soap_server
from tests.fakes.server import FakeServer, Faults, ServerThread
from tests.fakes.webcrm import APP_TOKEN, FakeWebCrm
from tests.stores.changes import update
from tests.support.broker_fixtures import produce_updates, read_committed
from tests.support.polling import wait_for
from tests.support.services import Stack

pytestmark = pytest.mark.integration

PROFILES = 12
POISON = "not-an-email"
CONTRACTS = load_contracts()
SECTION = "com.apsis1.sections.default"
APSIS_FIRST, APSIS_LAST = "312460234", "312461234"
QUICK = {"max_attempts": 3, "backoff_initial_seconds": 0.05, "max_requests_per_second": 200}
Names = dict[str, str]
"""email -> the first name the vendor holds for it."""


@dataclass(frozen=True)
class Kind:
    served: Callable[[], tuple[Any, FakeServer]]
    """The fake's state and its server (not started)."""
    config: Callable[[str], dict[str, Any]]
    """The destination's settings, given the server's URL."""
    secret: str
    held: Callable[[Any], Names]
    refuses: str | None = None
    """What the vendor answers for an email it refuses (None: it takes any)."""


def pipedrive_served() -> tuple[Any, FakeServer]:
    fake = FakePipedrive()
    fake.reset_seconds = 0
    return fake, FakeServer(fake.app(), Faults(throttle_response=fake.throttle_response))


def webcrm_served() -> tuple[Any, FakeServer]:
    fake = FakeWebCrm()
    return fake, FakeServer(fake.app(), Faults(throttle_response=fake.throttle_response))


def s360_served() -> tuple[Any, FakeServer]:
    service = ContactService(FakeS360())
    return service, soap_server(service)


def klaviyo_served() -> tuple[Any, FakeServer]:
    account = klaviyo.Account()
    return account, klaviyo.server(account)


def apsis_served() -> tuple[Any, FakeServer]:
    account = apsis.Account(sections={SECTION: {APSIS_FIRST, APSIS_LAST}})
    return account, apsis.server(account)


def rest_served() -> tuple[Any, FakeServer]:
    api = rest_receiver.Receiver(
        refuse=lambda contact: "no such mailbox" if contact.get("email") == POISON else None
    )
    return api, rest_receiver.server(api)


KINDS: dict[str, Kind] = {
    "pipedrive": Kind(
        pipedrive_served,
        lambda url: {
            "kind": "pipedrive",
            "api": {"base_url": url, "token": {"env": "CRMSYNC_TEST_SECRET"}, **QUICK},
            "attributes": {"name": "name"},
        },
        API_TOKEN,
        lambda fake: {
            item["value"]: person["name"]
            for person in fake.persons.values()
            for item in person["emails"]
        },
    ),
    "webcrm": Kind(
        webcrm_served,
        lambda url: {
            "kind": "webcrm",
            "api": {
                "base_url": url,
                "token": {"env": "CRMSYNC_TEST_SECRET"},
                **QUICK,
                "max_requests_per_second": 4,
            },
            "attributes": {"name": "PersonFirstName"},
        },
        APP_TOKEN,
        lambda fake: {p["PersonEmail"]: p["PersonFirstName"] for p in fake.persons.values()},
    ),
    "s360": Kind(
        s360_served,
        lambda url: {
            "kind": "s360",
            "api": {"base_url": url, **QUICK},
            "username": "CRMSYNC_WS",
            "password": {"env": "CRMSYNC_TEST_SECRET"},
            "attributes": {"name": "firstName", "last_name": "lastName"},
        },
        WS_PASSWORD,
        lambda service: {
            c["individualContact"]["email"]: c["individualContact"]["firstName"]
            for c in service.crm.contacts.values()
        },
        refuses="invalid email",
    ),
    "klaviyo": Kind(
        klaviyo_served,
        lambda url: {
            "kind": "klaviyo",
            "api": {"base_url": url, "token": {"env": "CRMSYNC_TEST_SECRET"}, **QUICK},
            "attributes": {"name": "first_name"},
        },
        klaviyo.PRIVATE_KEY,
        lambda account: {p["email"]: p["first_name"] for p in account.profiles.values()},
        refuses="Invalid email address",
    ),
    "apsis": Kind(
        apsis_served,
        lambda url: {
            "kind": "apsis",
            "api": {"base_url": url, **QUICK},
            "client_id": apsis.CLIENT_ID,
            "client_secret": {"env": "CRMSYNC_TEST_SECRET"},
            "section": SECTION,
            "attributes": {"name": APSIS_FIRST, "last_name": APSIS_LAST},
        },
        apsis.CLIENT_SECRET,
        lambda account: {
            key: sections[SECTION][APSIS_FIRST]
            for (keyspace, key), sections in account.profiles.items()
            if keyspace == EMAIL_KEYSPACE
        },
    ),
    "rest": Kind(
        rest_served,
        lambda url: {
            "kind": "rest",
            "api": {"base_url": f"{url}/v1", "token": {"env": "CRMSYNC_TEST_SECRET"}, **QUICK},
            "method": "PUT",
            "path": "/contacts/{profile_id}",
            "idempotency_header": "Idempotency-Key",
            "headers": {"X-Api-Key": rest_receiver.API_KEY},
            "attributes": {"name": "first_name"},
        },
        rest_receiver.TOKEN,
        lambda api: {c["email"]: c["first_name"] for c in api.contacts.values()},
        refuses="no such mailbox",
    ),
}


@pytest.fixture(params=sorted(KINDS))
def destination(request: pytest.FixtureRequest, stack: Stack) -> Iterator[tuple[Kind, Any]]:
    kind = KINDS[str(request.param)]
    state, server = kind.served()
    served: AbstractContextManager[FakeServer] = ServerThread(server)
    with served as running:
        stack.config["destinations"] = {str(request.param): kind.config(running.url)}
        stack.write_config()
        stack["outbound"].env["CRMSYNC_TEST_SECRET"] = kind.secret
        yield kind, state


def test_committed_profiles_reach_the_vendor_once_with_their_latest_values(
    stack: Stack, destination: tuple[Kind, Any]
) -> None:
    kind, state = destination
    stack.start("writer", "outbound")
    emails = {i: f"person{i}@example.com" for i in range(PROFILES)}
    if kind.refuses is not None:
        emails[5] = POISON
    produce_updates(
        stack,
        [
            update(
                "hubspot",
                str(i),
                t=version,
                email=emails[i],
                attributes={"name": f"P{i} r{version}", "last_name": f"L{i}"},
            )
            for version in (1, 2)
            for i in range(PROFILES)
        ],
    )
    expected = {emails[i]: f"P{i} r2" for i in range(PROFILES) if emails[i] != POISON}
    assert wait_for(lambda: kind.held(state) == expected, timeout_s=90), (
        kind.held(state),
        stack["outbound"].log_tail(),
    )
    if kind.refuses is None:
        return

    def dead() -> list[RejectedEvent]:
        return [
            rejection
            for m in read_committed(stack.bootstrap, stack.topic("rejected"))
            if (rejection := CONTRACTS.rejected_event.decode(m.value() or b"")).stage == "outbound"
        ]

    # Both changes of the poison profile, each with the vendor's own answer.
    assert wait_for(lambda: len(dead()) == 2, timeout_s=30)
    for rejection in dead():
        assert kind.refuses in rejection.reason
        assert CONTRACTS.profile_changed.decode(rejection.value or b"").record_id == "5"
