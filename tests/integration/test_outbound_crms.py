"""Both directions at once, on the real broker, mapper, writer and outbound service, with
HubSpot, Salesforce and Mailchimp faked after their public APIs.

HubSpot is a source and a destination. A change made in HubSpot reaches Salesforce and
Mailchimp and never goes back to HubSpot. A change from elsewhere is written to
HubSpot, which answers with the contact's id (linked to the profile as its HubSpot
identity) and then sends webhooks about the write, marked as made by crmsync's app:
those echoes are dropped at the door.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from services.core.config import load_settings
from services.core.contracts import Identity
from services.outbound.backlog import waiting_changes
from services.writer.stores.sqlite import SqliteProfileStore
from tests.fakes import mailchimp, salesforce
from tests.fakes.hubspot import APP_ID, CLIENT_SECRET, TOKEN, FakeHubSpot, webhook_request
from tests.fakes.mailchimp import Audience
from tests.fakes.salesforce import FakeSalesforce
from tests.fakes.server import FakeServer, ServerThread
from tests.support.polling import wait_for
from tests.support.services import Stack, http_get
from tests.support.webhooks import contact, post_webhook

pytestmark = pytest.mark.integration

PUBLIC_BASE_URL = "https://crmsync.example.com"
WEBHOOK_URL = f"{PUBLIC_BASE_URL}/webhooks/hubspot"
LIST_ID = "a1b2c3d4e5"
ENV = {
    "CRMSYNC_TEST_HUBSPOT_SECRET": CLIENT_SECRET,
    "CRMSYNC_TEST_HUBSPOT_TOKEN": TOKEN,
    "CRMSYNC_TEST_SALESFORCE_SECRET": salesforce.CLIENT_SECRET,
    "CRMSYNC_TEST_MAILCHIMP_KEY": mailchimp.API_KEY,
}
QUICK_RETRIES = {"max_attempts": 3, "backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.5}


class Systems:
    """The three vendors' fakes, served in this process."""

    def __init__(self, exits: ExitStack) -> None:
        self.hubspot = FakeHubSpot()
        self.salesforce = FakeSalesforce()
        self.audience = Audience(list_id=LIST_ID)
        self.hubspot_url = exits.enter_context(ServerThread(FakeServer(self.hubspot.app()))).url
        self.salesforce_url = exits.enter_context(
            ServerThread(FakeServer(self.salesforce.app()))
        ).url
        self.mailchimp_url = exits.enter_context(ServerThread(mailchimp.server(self.audience))).url


@pytest.fixture
def systems(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Stack, Systems]]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    with ExitStack() as exits:
        fakes = Systems(exits)
        stack = Stack(
            bootstrap=kafka_bootstrap,
            workdir=tmp_path / "stack",
            sources={
                "hubspot": {
                    "kind": "hubspot",
                    "webhooks": {
                        "client_secret": {"env": "CRMSYNC_TEST_HUBSPOT_SECRET"},
                        "own_source_ids": [str(APP_ID)],
                    },
                    "mapping": {
                        "email": "email",
                        "firstname": "first_name",
                        "lastname": "last_name",
                    },
                }
            },
        )
        stack.config["services"]["ingest"]["public_base_url"] = PUBLIC_BASE_URL
        stack.config["sources"]["demo"]["mapping"]["last_name"] = "last_name"
        stack.config["destinations"] = {
            "hubspot-crm": {
                "kind": "hubspot",
                "source": "hubspot",
                "api": {
                    "base_url": fakes.hubspot_url,
                    "token": {"env": "CRMSYNC_TEST_HUBSPOT_TOKEN"},
                    **QUICK_RETRIES,
                },
                "attributes": {"first_name": "firstname", "last_name": "lastname"},
            },
            "salesforce-crm": {
                "kind": "salesforce",
                "api": {"base_url": fakes.salesforce_url, **QUICK_RETRIES},
                "oauth": {
                    "client_id": salesforce.CLIENT_ID,
                    "client_secret": {"env": "CRMSYNC_TEST_SALESFORCE_SECRET"},
                },
                "api_version": salesforce.API_VERSION,
                "attributes": {"first_name": "FirstName", "last_name": "LastName"},
            },
            "newsletter": {
                "kind": "mailchimp",
                "api": {
                    "base_url": f"{fakes.mailchimp_url}/3.0",
                    "token": {"env": "CRMSYNC_TEST_MAILCHIMP_KEY"},
                    **QUICK_RETRIES,
                },
                "list_id": LIST_ID,
                "attributes": {"first_name": "FNAME"},
            },
        }
        stack.write_config()
        for name, value in ENV.items():
            stack["outbound"].env[name] = value
            stack["ingest"].env[name] = value
        try:
            yield stack, fakes
        finally:
            stack.stop()


def hubspot_webhook(stack: Stack, events: list[dict[str, Any]]) -> dict[str, Any]:
    body, headers = webhook_request(events, url=WEBHOOK_URL)
    status, _, answer = post_webhook(
        stack["ingest"].url, body, source="hubspot", token=None, headers=headers
    )
    assert status == 200, answer
    return answer


def delivered_everywhere(stack: Stack) -> bool:
    waiting = waiting_changes(load_settings(str(stack.config_path)))
    return bool(waiting) and not any(waiting.values())


def test_a_hubspot_change_reaches_salesforce_and_mailchimp_and_never_comes_back(
    systems: tuple[Stack, Systems],
) -> None:
    stack, fakes = systems
    stack.start("ingest", "mapper", "writer", "outbound")
    fakes.hubspot.upsert(email="ada@example.com", firstname="Ada", lastname="Lovelace")
    hubspot_webhook(stack, fakes.hubspot.take_events())

    def in_salesforce() -> list[dict[str, Any]]:
        return [r for r in fakes.salesforce.records.values() if r.get("Email") == "ada@example.com"]

    assert wait_for(lambda: len(in_salesforce()) == 1, timeout_s=60), stack["outbound"].log_tail()
    [contact] = in_salesforce()
    assert (contact["FirstName"], contact["LastName"]) == ("Ada", "Lovelace")
    assert wait_for(lambda: fakes.audience.member("ada@example.com") is not None, timeout_s=30)
    member = fakes.audience.member("ada@example.com")
    assert member is not None and member["merge_fields"]["FNAME"] == "Ada"
    # Every destination has taken the change (HubSpot's by skipping it): none was a write.
    assert wait_for(lambda: delivered_everywhere(stack), timeout_s=30)
    assert fakes.hubspot.write_requests == []


def test_a_write_to_hubspot_links_its_contact_id_and_its_echo_is_dropped(
    systems: tuple[Stack, Systems],
) -> None:
    stack, fakes = systems
    stack.start("ingest", "mapper", "writer", "outbound")
    answer = post_webhook(
        stack["ingest"].url,
        contact("g-1", email="grace@example.com", first_name="Grace", last_name="Hopper"),
    )
    assert answer[0] == 200, answer

    def in_hubspot() -> dict[str, Any] | None:
        found = [
            c["properties"]
            for c in fakes.hubspot.contacts.values()
            if c["properties"].get("email") == "grace@example.com"
        ]
        return found[0] if found else None

    assert wait_for(lambda: in_hubspot() is not None, timeout_s=60), stack["outbound"].log_tail()
    written = in_hubspot()
    assert written is not None and written["firstname"] == "Grace"
    contact_id = str(written["hs_object_id"])
    # HubSpot's id for the contact crmsync created becomes the profile's identity ...
    store = SqliteProfileStore(stack.db_path, read_only=True)
    try:
        assert wait_for(
            lambda: store.find_profile(Identity("crm", f"hubspot:{contact_id}")) is not None,
            timeout_s=30,
        ), stack["mapper"].log_tail()
        profile = store.find_profile(Identity("email", "grace@example.com"))
        assert profile is not None
        assert Identity("crm", f"hubspot:{contact_id}") in profile.identities
    finally:
        store.close()
    # ... and the webhooks HubSpot sends about crmsync's own write are dropped.
    echoes = fakes.hubspot.take_events()
    assert echoes and all(e["sourceId"] == str(APP_ID) for e in echoes)
    assert all(e["changeSource"] == "INTEGRATION" for e in echoes)
    assert hubspot_webhook(stack, echoes) == {"accepted": 0}
    metrics = http_get(f"{stack['ingest'].url}/metrics")[1].decode()
    assert f'crmsync_echoes_dropped_total{{source="hubspot"}} {float(len(echoes))}' in metrics
    # The link is no news for HubSpot: it was written to once. The others have it all.
    assert wait_for(lambda: delivered_everywhere(stack), timeout_s=30)
    assert len(fakes.hubspot.write_requests) == 1
    assert [r["LastName"] for r in fakes.salesforce.records.values()] == ["Hopper"]
    assert fakes.audience.member("grace@example.com") is not None


def test_outbound_only_hubspot_sets_nothing_on_profiles_yet_gets_its_ids_linked(
    systems: tuple[Stack, Systems],
) -> None:
    stack, fakes = systems
    stack.config["destinations"]["hubspot-crm"]["direction"] = "outbound"
    stack.write_config()
    stack.start("ingest", "mapper", "writer", "outbound")
    fakes.hubspot.upsert(email="ada@example.com", firstname="Ada", lastname="Lovelace")
    hubspot_webhook(stack, fakes.hubspot.take_events())
    answer = post_webhook(
        stack["ingest"].url,
        contact("g-1", email="grace@example.com", first_name="Grace", last_name="Hopper"),
    )
    assert answer[0] == 200, answer
    store = SqliteProfileStore(stack.db_path, read_only=True)
    try:

        def linked() -> bool:
            profile = store.find_profile(Identity("email", "grace@example.com"))
            return profile is not None and any(
                i.kind == "crm" and i.value.startswith("hubspot:") for i in profile.identities
            )

        assert wait_for(linked, timeout_s=60), stack["outbound"].log_tail()
        # HubSpot's own change came in first and was kept from the profiles.
        assert store.find_profile(Identity("email", "ada@example.com")) is None
    finally:
        store.close()
    metrics = http_get(f"{stack['mapper'].url}/metrics")[1].decode()
    assert 'crmsync_mapper_drops_total{reason="outbound_only",source="hubspot"}' in metrics
