"""What of a profile change goes to a destination, and how a webhook destination
signs and shapes it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from services.core.api_client import ApiUnavailable
from services.core.config import Settings
from services.core.contracts import Identity, Operation, Origin
from services.core.destinations import WebhookDestination
from services.core.profile_changed import (
    AttributeChange,
    ConsentStatusChange,
    ProfileChanged,
    ProfileChangeKind,
)
from services.core.standard_webhooks import signature, signed_headers, signing_key
from services.mapper.rules.errors import RuleError
from services.outbound.destinations.profiles import side_by_side
from services.outbound.destinations.webhook import message_body, message_id
from services.outbound.links import link_change
from services.outbound.outgoing import ECHO, UNMAPPED, OutgoingChange, outgoing

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)


def change(**values: object) -> ProfileChanged:
    fields: dict[str, object] = {
        "event_id": "e1:7",
        "profile_id": 7,
        "kind": ProfileChangeKind.UPDATED,
        "committed_at": NOW,
        "source": "hubspot",
        "record_id": "1",
        "source_event_id": "e1",
        "source_modified_at": NOW,
        "mapping_version": 1,
        "identities": (Identity("crm", "hubspot:1"), Identity("email", "ada@x.io")),
        "attributes": (
            AttributeChange("first_name", "Ada", "Ada L."),
            AttributeChange("score", None, 3),
        ),
        **values,
    }
    return ProfileChanged(**fields)  # type: ignore[arg-type]


def destination(**values: object) -> WebhookDestination:
    return WebhookDestination.model_validate(
        {
            "kind": "webhook",
            "api": {"base_url": "http://127.0.0.1:1/hook"},
            "secret": {"env": "UNUSED"},
            **values,
        }
    )


def test_a_change_never_goes_back_to_the_system_it_came_from() -> None:
    assert outgoing(change(), destination(source="hubspot")) == ECHO
    assert isinstance(outgoing(change(), destination(source="salesforce")), OutgoingChange)


def test_only_mapped_attributes_go_out_under_the_destinations_names() -> None:
    shaped = outgoing(change(), destination(attributes={"first_name": "FirstName"}))
    assert isinstance(shaped, OutgoingChange)
    assert shaped.fields == {"FirstName": "Ada L."}
    assert shaped.previous == {"FirstName": "Ada"}
    everything = outgoing(change(), destination())
    assert isinstance(everything, OutgoingChange)
    assert everything.fields == {"first_name": "Ada L.", "score": 3}


def test_a_change_touching_nothing_mapped_is_skipped_unless_it_changes_the_profile() -> None:
    narrow = destination(attributes={"city": "City"})
    assert outgoing(change(), narrow) == UNMAPPED
    created = outgoing(change(kind=ProfileChangeKind.CREATED), narrow)
    assert isinstance(created, OutgoingChange) and created.fields == {}
    assert isinstance(
        outgoing(change(kind=ProfileChangeKind.ERASED, attributes=()), narrow), OutgoingChange
    )
    new_email = change(identities_added=(Identity("email", "new@x.io"),))
    assert isinstance(outgoing(new_email, narrow), OutgoingChange)


def test_consents_go_out_as_opted_in_or_not() -> None:
    consented = change(
        consents=(
            ConsentStatusChange("newsletter", "EMAIL", None, "OPT_IN", NOW),
            ConsentStatusChange("offers", "SMS", "OPT_IN", "OPT_OUT", NOW),
        )
    )
    shaped = outgoing(
        consented,
        destination(attributes={"city": "City"}, consents={"newsletter": "nl", "offers": "of"}),
    )
    assert isinstance(shaped, OutgoingChange)
    assert shaped.consents == {"nl": True, "of": False}


def test_the_signature_is_the_standard_webhooks_reference_vector() -> None:
    """The example of the Standard Webhooks reference libraries' tests."""
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert (
        signature(key, message_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp="1614265330", body=body)
        == b"g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    headers = signed_headers(key, message_id="msg_1", timestamp=1614265330, body=body)
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1614265330"
    assert headers["webhook-signature"].startswith("v1,")


def test_a_message_names_its_changes_and_keeps_its_id_when_sent_again() -> None:
    shaped = outgoing(change(), destination())
    assert isinstance(shaped, OutgoingChange)
    body = orjson.loads(message_body([shaped], now=NOW))
    assert body["type"] == "profile.changed"
    assert body["timestamp"] == "2026-12-03T09:30:00Z"
    [sent] = body["data"]["changes"]
    assert sent["event_id"] == "e1:7" and sent["kind"] == "updated"
    assert sent["identities"] == ["crm:hubspot:1", "email:ada@x.io"]
    assert sent["fields"] == {"first_name": "Ada L.", "score": 3}
    assert message_id([shaped]) == message_id([shaped])
    other = outgoing(change(event_id="e2:7"), destination())
    assert isinstance(other, OutgoingChange)
    assert message_id([shaped]) != message_id([other])


def test_a_destination_naming_an_unknown_source_is_a_config_error() -> None:
    config = {
        "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
        "store": {"kind": "sqlite"},
        "destinations": {
            "hook": {
                "kind": "webhook",
                "api": {"base_url": "https://hooks.example.com/x"},
                "secret": {"env": "HOOK_SECRET"},
                "source": "hubspot",
            }
        },
    }
    with pytest.raises(ValidationError, match="names source 'hubspot', which is not configured"):
        Settings.model_validate(config)
    config["sources"] = {
        "hubspot": {"kind": "generic_webhook", "auth": {"kind": "none"}, "mapping": {}}
    }
    assert Settings.model_validate(config).destinations["hook"].source == "hubspot"


def test_an_id_a_destination_assigns_links_back_as_a_change_of_its_source() -> None:
    event = change(source="salesforce", record_id="003A")
    link = link_change(
        event, "901", source="hubspot", email_field="email", destination="hs", now=NOW
    )
    assert link is not None
    assert (link.source, link.record_id, link.operation) == ("hubspot", "901", Operation.UPSERT)
    assert link.origin is Origin.WRITE_BACK
    assert dict(link.fields) == {"email": "ada@x.io"}
    assert link.event_id == "writeback:hs:e1:7"
    # The profile holds the id already (HubSpot's own contact): nothing to link.
    assert (
        link_change(event, "1", source="hubspot", email_field="email", destination="hs", now=NOW)
        is None
    )
    # No email to be found by: nothing to link either.
    anonymous = change(identities=(Identity("crm", "salesforce:003A"),))
    assert (
        link_change(
            anonymous, "901", source="hubspot", email_field="email", destination="hs", now=NOW
        )
        is None
    )


def test_a_fields_transform_shapes_its_value_or_refuses_the_change() -> None:
    settings = destination(
        attributes={"first_name": "FirstName", "score": "Score"},
        transforms={
            "FirstName": {"values": {"Ada L.": "Ada"}, "unmapped": "reject"},
            "Score": {"type": "string"},
        },
    )
    shaped = outgoing(change(), settings)
    assert isinstance(shaped, OutgoingChange)
    assert shaped.fields == {"FirstName": "Ada", "Score": "3"}
    renamed = change(attributes=(AttributeChange("first_name", "Ada", "Grace"),))
    with pytest.raises(RuleError, match=r"transforms.FirstName"):
        outgoing(renamed, settings)


HTTP_STORE = {"kind": "http", "url": "https://cdp.example.com", "token": {"env": "X"}}


def test_transforms_and_filters_are_checked_with_the_config() -> None:
    with pytest.raises(ValidationError, match="transforms name fields no attribute is sent to"):
        destination(attributes={"first_name": "FirstName"}, transforms={"Nope": {}})
    with pytest.raises(ValidationError, match="direction outbound names the source"):
        destination(direction="outbound")
    config = {
        "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
        "store": HTTP_STORE,
        "destinations": {
            "hook": {
                "kind": "webhook",
                "api": {"base_url": "https://hooks.example.com"},
                "secret": {"env": "X"},
                "send_if": {"all": [{"field": "country", "op": "eq", "value": "DK"}]},
            }
        },
    }
    with pytest.raises(ValidationError, match="send_if, which reads profiles from the store"):
        Settings.model_validate(config)


def test_profiles_are_written_side_by_side_and_every_write_ends_before_a_failure() -> None:
    in_flight: list[int] = []
    most = 0
    finished: list[int] = []

    async def write(profile: int) -> None:
        nonlocal most
        in_flight.append(profile)
        most = max(most, len(in_flight))
        await asyncio.sleep(0.01 if profile != 2 else 0)
        in_flight.remove(profile)
        if profile == 2:
            raise ApiUnavailable(status=503, path="/x", detail="down")
        finished.append(profile)

    with pytest.raises(ApiUnavailable):
        asyncio.run(side_by_side(range(10), write, limit=3))
    assert most == 3
    assert sorted(finished) == [p for p in range(10) if p != 2]
