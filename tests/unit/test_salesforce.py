"""The Salesforce connector: outbound messages, change events, SOQL paging, OAuth.

Payloads follow the documented shapes ("Understanding the Outbound Messaging WSDL",
"Change Event Message Structure", "Get Compound Fields in Change Events", "Gap Events",
the REST "Query" resource); the paging and OAuth tests run the connector through
``ApiClient`` against the fake Salesforce served in-process.
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from services.core.api_client import ApiClient, ApiError, StaticBearer
from services.core.contracts import Operation, Origin
from services.core.sources.salesforce import SalesforceSource
from services.ingest.connectors.base import (
    AuthError,
    Checkpoint,
    InboundRequest,
    PayloadError,
    PullPage,
    Stamp,
)
from services.ingest.connectors.salesforce import connectors
from services.ingest.connectors.salesforce.events import made_by, soql_name
from services.ingest.connectors.salesforce.oauth import OAuthSession
from services.ingest.connectors.salesforce.pull import SalesforcePullConnector, is_throttled
from services.ingest.connectors.salesforce.push import SalesforceWebhookConnector
from services.ingest.connectors.salesforce.times import salesforce_time, soql_datetime
from tests.fakes.salesforce import (
    CLIENT_ID,
    CLIENT_SECRET,
    HOOK_TOKEN,
    ORGANIZATION_ID,
    REFRESH_TOKEN,
    RELAY_SECRET,
    FakeSalesforce,
    salesforce_id,
)
from tests.fakes.server import FakeServer, Faults

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
RECEIVED = datetime(2026, 11, 23, 9, 5, tzinfo=UTC)
HOOK_TOKEN_ENV = "SALESFORCE_TEST_HOOK_TOKEN"
RELAY_ENV = "SALESFORCE_TEST_RELAY_SECRET"
SECRET_ENV = "SALESFORCE_TEST_CLIENT_SECRET"
REFRESH_ENV = "SALESFORCE_TEST_REFRESH_TOKEN"
SESSION_ENV = "SALESFORCE_TEST_SESSION_ID"
OTHER_ORG = salesforce_id("00D", 9999)


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HOOK_TOKEN_ENV, HOOK_TOKEN)
    monkeypatch.setenv(RELAY_ENV, RELAY_SECRET)
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)
    monkeypatch.setenv(REFRESH_ENV, REFRESH_TOKEN)
    monkeypatch.setenv(SESSION_ENV, "not-a-session")


def source(**overrides: Any) -> SalesforceSource:
    values: dict[str, Any] = {
        "kind": "salesforce",
        "outbound_messages": {"organization_id": ORGANIZATION_ID},
        "change_events": {"auth": {"kind": "standard_webhooks", "secret": {"env": RELAY_ENV}}},
    }
    values.update(overrides)
    return SalesforceSource.model_validate(values)


def webhook(**overrides: Any) -> SalesforceWebhookConnector:
    built = connectors("sf", source(**overrides)).webhook
    assert isinstance(built, SalesforceWebhookConnector)
    return built


def inbound(
    body: bytes, headers: dict[str, str], query: dict[str, str] | None = None
) -> InboundRequest:
    return InboundRequest(
        method="POST",
        url="https://crmsync.example/webhooks/sf",
        headers=headers,
        body=body,
        query=query or {},
    )


def accept(connector: SalesforceWebhookConnector, request: InboundRequest) -> list[Any]:
    connector.authenticate(request, now=RECEIVED)
    return list(connector.parse(request, received_at=RECEIVED))


SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}


def envelope(notifications: str, *, organization: str = ORGANIZATION_ID) -> bytes:
    """An outbound message as the WSDL defines it (the documented element order)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        "<soapenv:Body>"
        '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        f"<OrganizationId>{organization}</OrganizationId>"
        "<ActionId>04k5e000000CaRkAAK</ActionId>"
        '<SessionId xsi:nil="true"/>'
        "<EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/62.0/00D5e000000KQ2e"
        "</EnterpriseUrl>"
        "<PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/62.0/00D5e000000KQ2e"
        "</PartnerUrl>"
        f"{notifications}"
        "</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


def notification(
    notification_id: str = "04l5e00000Gx7QzAAJ",
    *,
    kind: str = "Contact",
    fields: str = "",
) -> str:
    return (
        f"<Notification><Id>{notification_id}</Id>"
        f'<sObject xsi:type="sf:{kind}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
        f"{fields}</sObject></Notification>"
    )


CONTACT_FIELDS = (
    "<sf:Id>0035e00000ZkM3hAAF</sf:Id>"
    "<sf:Email>ada@example.com</sf:Email>"
    "<sf:FirstName>Ada</sf:FirstName>"
    '<sf:Phone xsi:nil="true"/>'
    "<sf:HasOptedOutOfEmail>false</sf:HasOptedOutOfEmail>"
    "<sf:LastModifiedDate>2026-11-23T08:59:58.000Z</sf:LastModifiedDate>"
)


# --- times and names -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T09:00:00.000+0000", NOW),
        ("2026-11-23T09:00:00.000Z", NOW),
        ("2026-11-23T09:00:00Z", NOW),
        ("2026-11-23T10:00:00.000+01:00", NOW),
        ("2026-11-23T10:30:00.000+0130", NOW),
        ("2026-11-23T09:00:00.250+0000", NOW + timedelta(milliseconds=250)),
        (1795424400000, NOW),
    ],
)
def test_salesforce_datetimes_are_read_as_utc(text: Any, expected: datetime) -> None:
    assert salesforce_time(text, where="f") == expected


@pytest.mark.parametrize(
    "text", ["2026-11-23 09:00:00", "2026-11-23T09:00:00", "yesterday", None, True, 1.5, ""]
)
def test_other_datetimes_are_refused_naming_the_field(text: Any) -> None:
    with pytest.raises(PayloadError) as caught:
        salesforce_time(text, where="records[0].LastModifiedDate")
    assert caught.value.where == "records[0].LastModifiedDate"


def test_soql_datetime_literals_have_the_documented_form() -> None:
    moment = datetime(2026, 11, 23, 10, 0, 0, 999_000, tzinfo=UTC)
    assert soql_datetime(moment) == "2026-11-23T10:00:00Z"
    assert soql_datetime(moment.astimezone(UTC).replace(tzinfo=UTC)) == "2026-11-23T10:00:00Z"


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("Name.FirstName", "FirstName"),
        ("Name.Salutation", "Salutation"),
        ("MailingAddress.City", "MailingCity"),
        ("OtherAddress.PostalCode", "OtherPostalCode"),
        ("Address.Street", "Street"),
        ("Location__c.Latitude", "Location__Latitude__s"),
        ("Email", "Email"),
        ("Custom__c.Part", "Custom__c.Part"),
    ],
)
def test_compound_field_components_get_their_api_names(path: str, name: str) -> None:
    assert soql_name(path) == name


@pytest.mark.parametrize(
    ("status", "body", "throttled"),
    [
        (
            403,
            b'[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]',
            True,
        ),
        (403, b'[{"message":"x","errorCode":"INSUFFICIENT_ACCESS"}]', False),
        (403, b"not json", False),
        (
            401,
            b'[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]',
            False,
        ),
        (400, b'[{"errorCode":"REQUEST_LIMIT_EXCEEDED"}]', False),
    ],
)
def test_request_limit_exceeded_is_the_throttling_signal(
    status: int, body: bytes, throttled: bool
) -> None:
    assert is_throttled(status, body) is throttled


# --- outbound messages ---------------------------------------------------------------------


def test_an_outbound_message_becomes_changes_keyed_by_notification_id() -> None:
    body = envelope(
        notification(fields=CONTACT_FIELDS)
        + notification(
            "04l5e00000Gx7R0AAJ",
            fields="<sf:Id>0035e00000ZkM3iAAF</sf:Id><sf:IsDeleted>true</sf:IsDeleted>"
            "<sf:LastModifiedDate>2026-11-23T09:00:00.000Z</sf:LastModifiedDate>",
        )
    )
    first, second = accept(webhook(), inbound(body, SOAP_HEADERS))
    assert first.record_id == "0035e00000ZkM3hAAF"
    assert first.event_id == "04l5e00000Gx7QzAAJ"
    assert first.operation is Operation.UPSERT
    assert first.source_modified_at == NOW - timedelta(seconds=2)
    assert first.received_at == RECEIVED
    assert first.origin is Origin.WEBHOOK
    assert dict(first.fields) == {
        "Id": "0035e00000ZkM3hAAF",
        "Email": "ada@example.com",
        "FirstName": "Ada",
        "Phone": None,
        "HasOptedOutOfEmail": False,
        "LastModifiedDate": "2026-11-23T08:59:58.000Z",
    }
    assert (second.operation, second.event_id) == (Operation.DELETE, "04l5e00000Gx7R0AAJ")


def test_the_answer_is_the_documented_acknowledgement() -> None:
    connector = webhook()
    request = inbound(envelope(notification(fields=CONTACT_FIELDS)), SOAP_HEADERS)
    accept(connector, request)
    answer = connector.answer(request, 1)
    assert (answer.status, answer.content_type) == (200, "text/xml")
    root = ET.fromstring(answer.body)  # noqa: S314 - our own constant
    ack = root.find(
        "{http://schemas.xmlsoap.org/soap/envelope/}Body/"
        "{http://soap.sforce.com/2005/09/outbound}notificationsResponse/"
        "{http://soap.sforce.com/2005/09/outbound}Ack"
    )
    assert ack is not None and ack.text == "true"


def test_a_message_built_by_the_fake_is_read_with_the_latest_data() -> None:
    org = FakeSalesforce(clock=lambda: NOW)
    ada = org.upsert(FirstName="Ada", LastName="Lovelace", Email="ada@example.com")["Id"]
    org.upsert(ada, FirstName="Augusta")
    body, headers = org.outbound_message()
    changes = accept(webhook(), inbound(body, headers))
    assert [c.event_id for c in changes] == [n.id for n in org.notifications]
    assert {c.fields["FirstName"] for c in changes} == {"Augusta"}
    assert {c.source_modified_at for c in changes} == {NOW + timedelta(seconds=1)}


def test_without_last_modified_date_the_receipt_time_stands_in() -> None:
    fields = "<sf:Id>0035e00000ZkM3hAAF</sf:Id><sf:Email>a@example.com</sf:Email>"
    [change] = accept(webhook(), inbound(envelope(notification(fields=fields)), SOAP_HEADERS))
    assert change.source_modified_at == RECEIVED


def test_configured_field_types_read_numbers_and_keep_text() -> None:
    fields = (
        "<sf:Id>0035e00000ZkM3hAAF</sf:Id><sf:Score__c>42</sf:Score__c>"
        "<sf:Revenue__c>1.5</sf:Revenue__c><sf:DoNotCall>1</sf:DoNotCall>"
        "<sf:Zip__c>00123</sf:Zip__c><sf:HasOptedOutOfEmail>true</sf:HasOptedOutOfEmail>"
    )
    connector = webhook(
        outbound_messages={
            "organization_id": ORGANIZATION_ID,
            "field_types": {
                "Score__c": "int",
                "Revenue__c": "double",
                "HasOptedOutOfEmail": "string",
            },
        }
    )
    [change] = accept(connector, inbound(envelope(notification(fields=fields)), SOAP_HEADERS))
    assert change.fields["Score__c"] == 42
    assert change.fields["Revenue__c"] == 1.5
    assert change.fields["DoNotCall"] is True
    assert change.fields["Zip__c"] == "00123"
    assert change.fields["HasOptedOutOfEmail"] == "true"


def test_leads_are_taken_when_listed_and_other_objects_refused() -> None:
    lead = notification(kind="Lead", fields="<sf:Id>00Q5e00000ZkM3hAAF</sf:Id>")
    [change] = accept(webhook(push_objects=["Lead"]), inbound(envelope(lead), SOAP_HEADERS))
    assert change.record_id == "00Q5e00000ZkM3hAAF"
    account = notification(kind="Account", fields="<sf:Id>0015e00000ZkM3hAAF</sf:Id>")
    with pytest.raises(PayloadError) as caught:
        accept(webhook(), inbound(envelope(account), SOAP_HEADERS))
    assert caught.value.where == "notifications.Notification[0].sObject.type"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (
            envelope(notification(fields="<sf:Email>a@example.com</sf:Email>")),
            "notifications.Notification[0].sObject.Id",
        ),
        (
            envelope("<Notification><Id>04l5e00000Gx7QzAAJ</Id></Notification>"),
            "notifications.Notification[0].sObject",
        ),
        (envelope(notification("", fields=CONTACT_FIELDS)), "notifications.Notification[0].Id"),
        (
            envelope(notification(fields=CONTACT_FIELDS + "<sf:Email>b@example.com</sf:Email>")),
            "notifications.Notification[0].sObject.Email",
        ),
        (
            envelope(
                notification(
                    fields="<sf:Id>0035e00000ZkM3hAAF</sf:Id><sf:DoNotCall>maybe</sf:DoNotCall>"
                )
            ),
            "notifications.Notification[0].sObject.DoNotCall",
        ),
        (
            envelope(
                notification(
                    fields="<sf:Id>0035e00000ZkM3hAAF</sf:Id>"
                    "<sf:LastModifiedDate>today</sf:LastModifiedDate>"
                )
            ),
            "notifications.Notification[0].sObject.LastModifiedDate",
        ),
        (envelope(""), "notifications.Notification"),
        (envelope(notification(fields=CONTACT_FIELDS) * 101), "notifications.Notification"),
        (b"<a>not soap</a>", "Envelope"),
        (
            b"<soapenv:Envelope xmlns:soapenv='http://schemas.xmlsoap.org/soap/envelope/'>"
            b"<soapenv:Body><x/></soapenv:Body></soapenv:Envelope>",
            "Body.notifications",
        ),
        (b"<soapenv:Envelope", "body"),
    ],
)
def test_malformed_messages_are_refused_naming_the_field(body: bytes, where: str) -> None:
    # A shared token proves the sender, so even an unreadable body reaches parse (400).
    connector = webhook(
        outbound_messages={"organization_id": ORGANIZATION_ID, "token": {"env": HOOK_TOKEN_ENV}}
    )
    request = inbound(body, SOAP_HEADERS, {"token": HOOK_TOKEN})
    connector.authenticate(request, now=RECEIVED)
    with pytest.raises(PayloadError) as caught:
        connector.parse(request, received_at=RECEIVED)
    assert caught.value.where == where


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
    b"<lolz>&lol2;</lolz>"
)
EXTERNAL_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b"<soapenv:Envelope xmlns:soapenv='http://schemas.xmlsoap.org/soap/envelope/'>&xxe;"
    b"</soapenv:Envelope>"
)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (BILLION_LAUGHS, "DTDs"),
        (EXTERNAL_ENTITY, "DTDs"),
        (envelope(notification(fields=CONTACT_FIELDS)).decode().encode("utf-16"), "UTF-8"),
        (envelope("").replace(b'encoding="UTF-8"', b'encoding="ISO-8859-1"'), "encoding"),
        (b"<x>" + b" " * (4 << 20) + b"</x>", "larger"),
    ],
)
def test_dangerous_xml_never_reaches_the_parser(body: bytes, problem: str) -> None:
    connector = webhook(
        outbound_messages={"organization_id": ORGANIZATION_ID, "token": {"env": HOOK_TOKEN_ENV}}
    )
    request = inbound(body, SOAP_HEADERS, {"token": HOOK_TOKEN})
    with pytest.raises(PayloadError, match=problem):
        connector.parse(request, received_at=RECEIVED)
    # Without a token, such a body cannot show its OrganizationId: 401, not parsed.
    with pytest.raises(AuthError, match="cannot read the OrganizationId"):
        webhook().authenticate(inbound(body, SOAP_HEADERS), now=RECEIVED)


@pytest.mark.parametrize(
    ("settings", "body", "query", "headers", "reason"),
    [
        (
            {},
            envelope(notification(fields=CONTACT_FIELDS), organization=OTHER_ORG),
            {},
            {},
            "OrganizationId is not the configured organization",
        ),
        (
            {},
            envelope(notification(fields=CONTACT_FIELDS)).replace(
                b'<SessionId xsi:nil="true"/>', b"<SessionId>00D5e!AQ4AQLive</SessionId>"
            ),
            {},
            {},
            "turn off 'Send Session ID'",
        ),
        (
            {},
            envelope(notification(fields=CONTACT_FIELDS), organization=""),
            {},
            {},
            "cannot read the OrganizationId",
        ),
        (
            {"token": {"env": HOOK_TOKEN_ENV}},
            envelope(notification(fields=CONTACT_FIELDS)),
            {},
            {},
            "missing token parameter",
        ),
        (
            {"token": {"env": HOOK_TOKEN_ENV}},
            envelope(notification(fields=CONTACT_FIELDS)),
            {"token": "guess"},
            {},
            "invalid token parameter",
        ),
        (
            {"token": {"env": HOOK_TOKEN_ENV}},
            envelope(notification(fields=CONTACT_FIELDS), organization=OTHER_ORG),
            {"token": HOOK_TOKEN},
            {},
            "OrganizationId is not the configured organization",
        ),
        (
            {"client_cert_header": "X-SSL-Client-Verify", "client_cert_value": "SUCCESS"},
            envelope(notification(fields=CONTACT_FIELDS)),
            {},
            {"X-SSL-Client-Verify": "NONE"},
            "client certificate not verified",
        ),
        (
            {"client_cert_header": "X-SSL-Client-Verify", "client_cert_value": "SUCCESS"},
            envelope(notification(fields=CONTACT_FIELDS)),
            {},
            {},
            "client certificate",
        ),
    ],
)
def test_unproven_senders_are_refused(
    settings: dict[str, Any],
    body: bytes,
    query: dict[str, str],
    headers: dict[str, str],
    reason: str,
) -> None:
    connector = webhook(outbound_messages={"organization_id": ORGANIZATION_ID, **settings})
    with pytest.raises(AuthError, match=reason) as caught:
        connector.authenticate(inbound(body, {**SOAP_HEADERS, **headers}, query), now=RECEIVED)
    assert HOOK_TOKEN not in str(caught.value)


def test_every_configured_check_passing_proves_the_sender() -> None:
    connector = webhook(
        outbound_messages={
            "organization_id": ORGANIZATION_ID[:15],  # the 15-character form
            "token": {"env": HOOK_TOKEN_ENV},
            "client_cert_header": "X-SSL-Client-Verify",
            "client_cert_value": "SUCCESS",
        }
    )
    headers = {**SOAP_HEADERS, "x-ssl-client-verify": "SUCCESS"}
    request = inbound(envelope(notification(fields=CONTACT_FIELDS)), headers, {"token": HOOK_TOKEN})
    assert len(accept(connector, request)) == 1


def test_a_source_without_change_events_refuses_json() -> None:
    connector = webhook(change_events=None)
    with pytest.raises(AuthError, match="does not take change events"):
        connector.authenticate(inbound(b"[]", {"Content-Type": "application/json"}), now=RECEIVED)


# --- change events -----------------------------------------------------------------------------


def relay_headers(body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    from tests.fakes.salesforce import standard_webhooks_headers

    return standard_webhooks_headers(body, secret=RELAY_SECRET, timestamp=timestamp, now=RECEIVED)


def test_change_events_of_the_fake_become_changes_by_api_name() -> None:
    org = FakeSalesforce(clock=lambda: NOW)
    ada = org.upsert(
        FirstName="Ada", LastName="Lovelace", Email="ada@example.com", MailingCity="London"
    )["Id"]
    org.upsert(ada, FirstName="Augusta", Phone=None, MailingCity=None)
    org.delete(ada)
    connector = webhook()
    relayed = inbound(*org.relay_request(org.change_events))
    created, updated, deleted = accept(connector, relayed)
    assert created.fields["FirstName"] == "Ada"
    assert created.fields["MailingCity"] == "London"
    assert created.fields["Email"] == "ada@example.com"
    assert created.source_modified_at == NOW
    assert dict(updated.fields) == {
        "FirstName": "Augusta",
        "MailingCity": None,
        "LastModifiedDate": "2026-11-23T09:00:01.000Z",
        "Id": ada,
    }
    assert updated.source_modified_at == NOW + timedelta(seconds=1)
    assert (deleted.operation, dict(deleted.fields)) == (Operation.DELETE, {"Id": ada})
    assert deleted.source_modified_at == NOW + timedelta(seconds=2)
    assert created.sequence < updated.sequence < deleted.sequence
    header = org.change_events[0]["ChangeEventHeader"]
    assert created.event_id == f"{header['transactionKey']}:1:{ada}"
    assert json.loads(connector.answer(relayed, 3).body) == {"accepted": 3}


def test_the_documented_compound_field_example_and_cometd_messages() -> None:
    # "Get Compound Fields in Change Events", with a contact in place of the account.
    event = {
        "ChangeEventHeader": {
            "entityName": "Contact",
            "recordIds": ["0035f00002JUXA8AAP"],
            "changeType": "CREATE",
            "changeOrigin": "com/salesforce/api/soap/60.0;client=SfdcInternalAPI/",
            "transactionKey": "00006bec-ce66-0611-9018-30a98446c9f2",
            "sequenceNumber": 1,
            "commitTimestamp": 1714156685000,
            "commitNumber": 1100670838951,
            "commitUser": "0055f000005mc66AAA",
            "nulledFields": [],
            "diffFields": [],
            "changedFields": [],
        },
        "Name": {"Salutation": None, "FirstName": "Ada", "LastName": "Lovelace"},
        "MailingAddress": {
            "Street": "415 Mission Street",
            "City": "San Francisco",
            "Latitude": None,
        },
        "Email": "ada@example.com",
        "CreatedDate": 1714156685000,
        "LastModifiedDate": 1714156685000,
    }
    org = FakeSalesforce(clock=lambda: RECEIVED)
    [change] = accept(webhook(), inbound(*org.relay_request([event], cometd=True)))
    assert change.record_id == "0035f00002JUXA8AAP"
    assert change.event_id == "00006bec-ce66-0611-9018-30a98446c9f2:1:0035f00002JUXA8AAP"
    assert change.source_modified_at == datetime(2024, 4, 26, 18, 38, 5, tzinfo=UTC)
    assert change.sequence == (1100670838951 << 16) | 1
    assert {
        k: change.fields[k]
        for k in (
            "FirstName",
            "LastName",
            "Salutation",
            "MailingStreet",
            "MailingCity",
            "MailingLatitude",
            "Email",
        )
    } == {
        "FirstName": "Ada",
        "LastName": "Lovelace",
        "Salutation": None,
        "MailingStreet": "415 Mission Street",
        "MailingCity": "San Francisco",
        "MailingLatitude": None,
        "Email": "ada@example.com",
    }


def update_event(**header: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "entityName": "Contact",
        "recordIds": ["0035e00000ZkM3hAAF", "0035e00000ZkM3iAAF"],
        "changeType": "UPDATE",
        "transactionKey": "0002343d-9d90-e395-ed20-cf416ba652ad",
        "sequenceNumber": 2,
        "commitTimestamp": 1795424400000,
        "commitNumber": 10716283339728,
        "changedFields": ["Name.LastName", "Email", "Description", "LastModifiedDate"],
        "nulledFields": ["Email"],
        "diffFields": ["Description"],
    }
    values.update(header)
    # As a relay decoding Pub/Sub API events has it: every field, null when unchanged.
    return {
        "ChangeEventHeader": values,
        "Name": {"FirstName": None, "LastName": "Byron"},
        "Email": None,
        "Phone": None,
        "Description": "@@ -1 +1 @@\n-old\n+new",
        "LastModifiedDate": "2026-11-23T09:00:00.000Z",
    }


def test_a_merged_update_changes_every_record_with_only_the_changed_fields() -> None:
    body = json.dumps(update_event()).encode()
    first, second = accept(webhook(), inbound(body, relay_headers(body)))
    assert [first.record_id, second.record_id] == ["0035e00000ZkM3hAAF", "0035e00000ZkM3iAAF"]
    assert first.event_id != second.event_id
    assert dict(first.fields) == {
        "LastName": "Byron",
        "Email": None,
        "LastModifiedDate": "2026-11-23T09:00:00.000Z",
        "Id": "0035e00000ZkM3hAAF",
    }
    assert first.source_modified_at == NOW


def test_an_update_without_changed_fields_takes_what_the_body_carries() -> None:
    event = update_event(changedFields=[], nulledFields=[], diffFields=[])
    body = json.dumps(event).encode()
    first, _ = accept(webhook(), inbound(body, relay_headers(body)))
    assert set(first.fields) == {"LastName", "Description", "LastModifiedDate", "Id"}


@pytest.mark.parametrize(
    ("event", "where", "problem"),
    [
        (
            update_event(changedFields=["0x650004E0"]),
            "body.ChangeEventHeader.changedFields",
            "bitmap",
        ),
        (update_event(nulledFields=["3-0x01"]), "body.ChangeEventHeader.nulledFields", "bitmap"),
        (update_event(entityName="Account"), "body.ChangeEventHeader.entityName", "Account"),
        (update_event(changeType="SNAPSHOT"), "body.ChangeEventHeader.changeType", "unknown"),
        (update_event(recordIds="0035e00000ZkM3hAAF"), "body.ChangeEventHeader.recordIds", "list"),
        (update_event(recordIds=[]), "body.ChangeEventHeader.recordIds", "empty"),
        (
            update_event(commitTimestamp="yesterday"),
            "body.ChangeEventHeader.commitTimestamp",
            "integer",
        ),
        (update_event(sequenceNumber=None), "body.ChangeEventHeader.sequenceNumber", "integer"),
        (update_event(transactionKey=""), "body.ChangeEventHeader.transactionKey", "missing"),
        ({"Name": "no header"}, "body", "no ChangeEventHeader"),
        ({**update_event(), "LastModifiedDate": "soon"}, "body.LastModifiedDate", "dateTime"),
        (
            {**update_event(), "Name": {"LastName": {"deep": [{"x": 1}]}}},
            "body.Name.LastName.deep",
            "lists of objects",
        ),
    ],
)
def test_malformed_change_events_are_refused_naming_the_field(
    event: dict[str, Any], where: str, problem: str
) -> None:
    body = json.dumps(event).encode()
    with pytest.raises(PayloadError, match=problem) as caught:
        accept(webhook(), inbound(body, relay_headers(body)))
    assert caught.value.where == where


@pytest.mark.parametrize("change_type", ["GAP_UPDATE", "GAP_CREATE", "GAP_OVERFLOW"])
def test_gap_events_are_refused_with_what_to_do(change_type: str) -> None:
    org = FakeSalesforce(clock=lambda: RECEIVED)
    gap = org.gap_event(["0035e00000ZkM3hAAF"], change_type)
    with pytest.raises(PayloadError, match="run a full sync") as caught:
        accept(webhook(), inbound(*org.relay_request([gap])))
    assert caught.value.where == "body[0].ChangeEventHeader.changeType"


def test_gap_and_wildcard_events_can_be_left_to_the_poll() -> None:
    org = FakeSalesforce(clock=lambda: RECEIVED)
    connector = webhook(
        change_events={
            "auth": {"kind": "standard_webhooks", "secret": {"env": RELAY_ENV}},
            "gap_events": "acknowledge",
        },
        api={"base_url": "https://acme.my.salesforce.com", "token": {"env": SESSION_ENV}},
        poll={"interval_seconds": 60},
    )
    wildcard = update_event(recordIds=["003*"])
    events = [org.gap_event(["0035e00000ZkM3hAAF"]), wildcard]
    assert accept(connector, inbound(*org.relay_request(events))) == []


def test_relay_requests_must_be_signed_and_fresh() -> None:
    org = FakeSalesforce(clock=lambda: RECEIVED)
    body, headers = org.relay_request([update_event()])
    forged = {**headers, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}
    with pytest.raises(AuthError, match="invalid signature"):
        webhook().authenticate(inbound(body, forged), now=RECEIVED)
    stale = int((RECEIVED - timedelta(hours=1)).timestamp())
    body, headers = org.relay_request([update_event()], timestamp=stale)
    with pytest.raises(AuthError, match="outside the allowed window"):
        webhook().authenticate(inbound(body, headers), now=RECEIVED)
    bearer = webhook(change_events={"auth": {"kind": "bearer", "token": {"env": RELAY_ENV}}})
    with pytest.raises(AuthError, match="missing Authorization"):
        bearer.authenticate(inbound(body, {"Content-Type": "application/json"}), now=RECEIVED)


def test_an_unauthenticated_relay_cannot_be_configured() -> None:
    with pytest.raises(ValidationError):
        source(change_events={"auth": {"kind": "none"}})


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"outbound_messages": None, "change_events": None}, "needs 'outbound_messages'"),
        ({"outbound_messages": {"organization_id": "12345"}}, "starts with 00D"),
        (
            {"outbound_messages": {"organization_id": ORGANIZATION_ID, "token": "plain"}},
            "secret itself never goes in the config",
        ),
        (
            {
                "outbound_messages": {
                    "organization_id": ORGANIZATION_ID,
                    "client_cert_header": "X-Verify",
                }
            },
            "go together",
        ),
        ({"api": {"base_url": "https://acme.my.salesforce.com"}}, "needs 'oauth'"),
        (
            {
                "api": {
                    "base_url": "https://acme.my.salesforce.com/services/data",
                    "token": {"env": SESSION_ENV},
                }
            },
            "the org.s My Domain URL, https://acme.my.salesforce.com",
        ),
        ({"oauth": {"client_id": CLIENT_ID, "client_secret": {"env": SECRET_ENV}}}, "add 'api'"),
        (
            {
                "api": {"base_url": "https://a.my.salesforce.com"},
                "oauth": {
                    "grant_type": "refresh_token",
                    "client_id": CLIENT_ID,
                    "client_secret": {"env": SECRET_ENV},
                },
            },
            "needs 'refresh_token'",
        ),
        ({"poll": {"interval_seconds": 60}}, "add 'api'"),
        (
            {
                "api": {"base_url": "https://a.my.salesforce.com", "token": {"env": SESSION_ENV}},
                "poll": {"interval_seconds": 60, "page_size": 500},
            },
            "batch_size",
        ),
        (
            {
                "change_events": {
                    "auth": {"kind": "bearer", "token": {"env": RELAY_ENV}},
                    "gap_events": "acknowledge",
                }
            },
            "relies on a poll",
        ),
        ({"fields": ["Email; DELETE"]}, "not a field API name"),
        ({"object": "Contact WHERE"}, "not an sObject API name"),
        ({"batch_size": 100}, "greater than or equal to 200"),
        ({"api_version": "v62"}, "should match pattern"),
    ],
)
def test_settings_name_what_salesforce_needs(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        source(**overrides)


def test_select_fields_always_carry_what_the_connector_needs() -> None:
    settings = source(fields=["Email", "Id"], include_deleted=True)
    assert settings.select_fields == ["Id", "LastModifiedDate", "IsDeleted", "Email"]
    assert source(include_deleted=False, fields=["Email"]).select_fields == [
        "Id",
        "LastModifiedDate",
        "Email",
    ]


# --- pull --------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.requests: list[tuple[str, dict[str, str], str | None]] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


Served = tuple[FakeSalesforce, FakeServer, TestServer, Recorder]


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Served]:
    ticks = iter(range(10_000_000))
    # Five changes per second: records share LastModifiedDate values, as in a real org.
    org = FakeSalesforce(clock=lambda: NOW + timedelta(seconds=next(ticks) // 5), batch_size=200)
    recorder = Recorder()

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        recorder.requests.append(
            (request.path, dict(request.query), request.headers.get("Sforce-Query-Options"))
        )
        response: web.StreamResponse = await handler(request)
        return response

    app = org.app()
    app.middlewares.append(record)
    fake = FakeServer(app, Faults(throttle_response=org.throttle_response))
    test_server = TestServer(app)
    await test_server.start_server()
    yield org, fake, test_server, recorder
    await test_server.close()


def base_url(test_server: TestServer) -> str:
    return str(test_server.make_url("/")).rstrip("/")


def api_client(
    test_server: TestServer,
    session: httpx.AsyncClient,
    recorder: Recorder,
    *,
    oauth: dict[str, Any] | None = None,
    **settings: Any,
) -> tuple[ApiClient, SalesforcePullConnector, OAuthSession]:
    values: dict[str, Any] = {
        "api": {
            "base_url": base_url(test_server),
            "max_requests_per_second": 1000.0,
            "max_attempts": 5,
        },
        "oauth": oauth or {"client_id": CLIENT_ID, "client_secret": {"env": SECRET_ENV}},
        "outbound_messages": None,
        "change_events": None,
    }
    values.update(settings)
    built = connectors("sf", source(**values))
    assert built.api is not None
    assert isinstance(built.credentials, OAuthSession)
    assert isinstance(built.pull, SalesforcePullConnector)
    client = ApiClient(
        source="sf",
        settings=built.api,
        session=session,
        credentials=built.credentials,
        is_throttled=built.is_throttled,
        sleep=recorder.sleep,
    )
    return client, built.pull, built.credentials


async def collect(
    pull: SalesforcePullConnector,
    client: ApiClient,
    *,
    since: datetime | None = None,
    resume: Checkpoint | None = None,
    stop_after: int | None = None,
) -> list[PullPage]:
    pages: list[PullPage] = []
    stream = pull.pages(client, since=since, resume=resume, stamp=Stamp(Origin.FULL_SYNC, "s1"))
    async for page in stream:
        pages.append(page)
        if stop_after is not None and len(pages) == stop_after:
            await stream.aclose()  # type: ignore[attr-defined]
            break
    return pages


def queries(recorder: Recorder) -> list[str]:
    return [q["q"] for path, q, _ in recorder.requests if "q" in q]


@pytest.mark.asyncio
async def test_a_full_sync_follows_next_records_url_until_done(served: Served) -> None:
    org, _fake, test_server, recorder = served
    ids = org.seed(450)
    org.delete(ids[3])
    async with httpx.AsyncClient() as session:
        client, pull, _ = api_client(test_server, session, recorder)
        pages = await collect(pull, client)
    assert [len(p.changes) for p in pages] == [200, 200, 50]
    assert {p.total for p in pages} == {450}
    changes = [c for p in pages for c in p.changes]
    assert {c.record_id for c in changes} == set(ids)
    order = [(c.source_modified_at, c.record_id) for c in changes]
    assert order == sorted(order), "oldest change first"
    deleted = [c for c in changes if c.operation is Operation.DELETE]
    assert [c.record_id for c in deleted] == [ids[3]]
    assert changes[-1].record_id == ids[3], "the deletion moved LastModifiedDate"
    assert {(c.origin, c.sync_id) for c in changes} == {(Origin.FULL_SYNC, "s1")}
    first = changes[0]
    assert "attributes" not in first.fields
    assert first.fields["Email"] == "contact0@example.com"
    assert first.fields["HasOptedOutOfEmail"] is True
    marks = [p.checkpoint.watermark for p in pages if p.checkpoint.watermark is not None]
    assert len(marks) == 3 and marks == sorted(marks)
    assert marks[-1] == changes[-1].source_modified_at
    assert pages[-1].checkpoint.cursor is None
    [query] = queries(recorder)
    assert query == (
        "SELECT Id, LastModifiedDate, IsDeleted, FirstName, LastName, Email, Phone, "
        "HasOptedOutOfEmail FROM Contact ORDER BY LastModifiedDate, Id"
    )
    paths = [path for path, _, _ in recorder.requests if path.startswith("/services/data")]
    assert paths[0] == "/services/data/v62.0/queryAll"
    assert all(p.startswith("/services/data/v62.0/queryAll/01g") for p in paths[1:])
    assert {options for path, _, options in recorder.requests if "data" in path} == {
        "batchSize=2000"
    }


@pytest.mark.asyncio
async def test_a_poll_filters_on_last_modified_date_with_a_documented_literal(
    served: Served,
) -> None:
    org, _fake, test_server, recorder = served
    ids = org.seed(20)
    since = NOW + timedelta(seconds=2, milliseconds=500)
    async with httpx.AsyncClient() as session:
        client, pull, _ = api_client(test_server, session, recorder, include_deleted=False)
        pages = await collect(pull, client, since=since)
    assert queries(recorder) == [
        "SELECT Id, LastModifiedDate, FirstName, LastName, Email, Phone, HasOptedOutOfEmail "
        "FROM Contact WHERE LastModifiedDate >= 2026-11-23T09:00:02Z "
        "ORDER BY LastModifiedDate, Id"
    ]
    assert [c.record_id for c in pages[0].changes] == ids[10:]
    assert recorder.requests[-1][0] == "/services/data/v62.0/query"


@pytest.mark.asyncio
async def test_a_resumed_pull_whose_locator_expired_continues_after_the_last_record(
    served: Served,
) -> None:
    org, _fake, test_server, recorder = served
    ids = org.seed(450)
    async with httpx.AsyncClient() as session:
        client, pull, _ = api_client(test_server, session, recorder)
        [first] = await collect(pull, client, stop_after=1)
        org.expire_locators()
        rest = await collect(pull, client, resume=first.checkpoint)
    delivered = [c.record_id for p in [first, *rest] for c in p.changes]
    assert sorted(delivered) == sorted(ids), "no record missing, none twice"
    assert {p.total for p in rest} == {450}, "the total of the whole query"
    last = first.changes[-1]
    literal = soql_datetime(last.source_modified_at)
    assert queries(recorder)[-1].endswith(
        f"WHERE (LastModifiedDate > {literal} OR (LastModifiedDate = {literal} "
        f"AND Id > '{last.record_id}')) ORDER BY LastModifiedDate, Id"
    )


@pytest.mark.asyncio
async def test_an_expired_session_is_renewed_once_and_the_query_goes_on(served: Served) -> None:
    org, _fake, test_server, recorder = served
    ids = org.seed(450)
    async with httpx.AsyncClient() as session:
        client, pull, _ = api_client(test_server, session, recorder)
        pages: list[PullPage] = []
        async for page in pull.pages(client, since=None, resume=None, stamp=Stamp(Origin.POLL)):
            pages.append(page)
            if len(pages) == 1:
                org.expire_sessions()
    assert org.token_requests == 2
    delivered = [c.record_id for p in pages for c in p.changes]
    assert sorted(delivered) == sorted(ids)
    assert org.sessions, "a fresh session"


@pytest.mark.asyncio
async def test_the_refresh_token_flow(served: Served) -> None:
    org, _fake, test_server, recorder = served
    org.seed(3)
    oauth = {
        "grant_type": "refresh_token",
        "client_id": CLIENT_ID,
        "client_secret": {"env": SECRET_ENV},
        "refresh_token": {"env": REFRESH_ENV},
    }
    async with httpx.AsyncClient() as session:
        client, pull, _ = api_client(test_server, session, recorder, oauth=oauth)
        pages = await collect(pull, client)
    assert len(pages[0].changes) == 3


@pytest.mark.asyncio
async def test_refused_client_credentials_fail_with_the_oauth_error(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    org, _fake, test_server, recorder = served
    org.seed(3)
    monkeypatch.setenv(SECRET_ENV, "wrong-secret")
    async with httpx.AsyncClient() as session:
        client, pull, _ = api_client(test_server, session, recorder)
        with pytest.raises(ApiError, match="invalid_client") as caught:
            await collect(pull, client)
    assert "wrong-secret" not in str(caught.value)


@pytest.mark.asyncio
async def test_a_failing_token_endpoint_is_retried(served: Served) -> None:
    org, fake, test_server, recorder = served
    org.seed(3)
    fake.faults.script(503, 503)
    async with httpx.AsyncClient() as session:
        client, pull, _ = api_client(test_server, session, recorder)
        pages = await collect(pull, client)
    assert len(pages[0].changes) == 3
    assert org.token_requests == 1
    assert len(recorder.sleeps) == 2


@pytest.mark.asyncio
async def test_request_limit_exceeded_is_retried_with_backoff(served: Served) -> None:
    org, fake, test_server, recorder = served
    ids = org.seed(450)
    async with httpx.AsyncClient() as session:
        client, pull, credentials = api_client(test_server, session, recorder)
        await credentials.headers()  # the token first, so the limit hits the query
        fake.faults.script(429, 429, 429)  # answered as 403 REQUEST_LIMIT_EXCEEDED
        pages = await collect(pull, client)
    assert fake.statuses[403] == 3
    assert len(recorder.sleeps) == 3
    assert sorted(c.record_id for p in pages for c in p.changes) == sorted(ids)


@pytest.mark.asyncio
async def test_a_static_session_token_is_refused_with_invalid_session_id(served: Served) -> None:
    org, _fake, test_server, recorder = served
    org.seed(3)
    settings = source(
        api={"base_url": base_url(test_server), "token": {"env": SESSION_ENV}},
        outbound_messages=None,
        change_events=None,
    )
    built = connectors("sf", settings)
    assert built.credentials is None and built.api is not None
    assert isinstance(built.pull, SalesforcePullConnector)
    async with httpx.AsyncClient() as session:
        client = ApiClient(
            source="sf",
            settings=built.api,
            session=session,
            credentials=StaticBearer("not-a-session"),
            is_throttled=built.is_throttled,
            sleep=recorder.sleep,
        )
        with pytest.raises(ApiError, match="INVALID_SESSION_ID") as caught:
            await collect(built.pull, client)
    assert caught.value.status == 401


@pytest.mark.asyncio
async def test_a_bad_record_is_rejected_without_failing_its_batch(served: Served) -> None:
    org, _fake, test_server, recorder = served
    ids = org.seed(5)
    org.records[ids[2]]["LastModifiedDate"] = "2026-11-23T09:00:00.000"  # no zone
    async with httpx.AsyncClient() as session:
        client, pull, _ = api_client(test_server, session, recorder)
        [page] = await collect(pull, client)
    assert [c.record_id for c in page.changes] == [i for i in ids if i != ids[2]]
    [rejected] = page.rejected
    assert rejected.reason.startswith("records[")
    assert "LastModifiedDate" in rejected.reason
    assert json.loads(rejected.value or b"{}")["Id"] == ids[2]


@pytest.mark.asyncio
async def test_an_unreadable_cursor_starts_the_query_over(served: Served) -> None:
    org, _fake, test_server, recorder = served
    ids = org.seed(5)
    async with httpx.AsyncClient() as session:
        client, pull, _ = api_client(test_server, session, recorder)
        pages = await collect(pull, client, resume=Checkpoint(cursor="{not json"))
    assert [c.record_id for c in pages[0].changes] == ids


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("soql", "code"),
    [
        (
            "SELECT Id FROM Contact WHERE LastModifiedDate >= 2026-11-23T09:00:00.000Z",
            "MALFORMED_QUERY",
        ),
        (
            "SELECT Id FROM Contact WHERE LastModifiedDate >= '2026-11-23T09:00:00Z'",
            "INVALID_FIELD",
        ),
        ("SELECT Nope FROM Contact", "INVALID_FIELD"),
        ("SELECT Id FROM Nope", "INVALID_TYPE"),
        ("DELETE FROM Contact", "MALFORMED_QUERY"),
    ],
)
async def test_the_fake_answers_bad_soql_as_documented(
    served: Served, soql: str, code: str
) -> None:
    org, _fake, test_server, recorder = served
    token = org.issue_token()
    async with httpx.AsyncClient() as session:
        client = ApiClient(
            source="sf",
            settings=source(
                api={"base_url": base_url(test_server), "token": {"env": SESSION_ENV}}
            ).api,  # type: ignore[arg-type]
            session=session,
            credentials=StaticBearer(token),
            sleep=recorder.sleep,
        )
        with pytest.raises(ApiError) as caught:
            await client.request("GET", "/services/data/v62.0/query", params={"q": soql})
    assert caught.value.status == 400
    assert json.loads(caught.value.detail)[0]["errorCode"] == code


def test_change_events_of_crmsyncs_own_writes_are_dropped() -> None:
    def event(record: str, origin: str) -> dict[str, Any]:
        return {
            "ChangeEventHeader": {
                "entityName": "Contact",
                "recordIds": [record],
                "changeType": "UPDATE",
                "changeOrigin": origin,
                "transactionKey": f"tx-{record}",
                "sequenceNumber": 1,
                "commitTimestamp": 1714156685000,
                "commitNumber": 1,
                "commitUser": "0055f000005mc66AAA",
                "nulledFields": [],
                "diffFields": [],
                "changedFields": ["FirstName"],
            },
            "FirstName": "Ada",
        }

    ours = salesforce_id("003", 1)
    theirs = salesforce_id("003", 2)
    events = [
        event(ours, "com/salesforce/api/rest/60.0;client=crmsync"),
        event(theirs, "com/salesforce/api/rest/60.0;client=crmsync-other"),
    ]
    relay = {"auth": {"kind": "standard_webhooks", "secret": {"env": RELAY_ENV}}}
    org = FakeSalesforce(clock=lambda: RECEIVED)
    connector = webhook(change_events={**relay, "own_client": "crmsync"})
    assert [c.record_id for c in accept(connector, inbound(*org.relay_request(events)))] == [theirs]
    assert made_by("com/salesforce/api/rest/60.0;client=crmsync", "crmsync")
    assert not made_by("com/salesforce/api/soap/60.0;client=SfdcInternalAPI/", "crmsync")
    assert not made_by("", "crmsync")
