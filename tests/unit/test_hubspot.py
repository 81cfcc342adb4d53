"""The HubSpot connector: signatures, event batches, settings, and paging against the fake.

Signature vectors: v2 uses the two examples of HubSpot's "Validating requests" page;
v3 (for which HubSpot publishes none) is computed here from the documented recipe,
independently of the connector and of the fake.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from prometheus_client import REGISTRY

from services.core.api_client import ApiClient, ApiError, ApiUnavailable, StaticBearer
from services.core.config import ConfigError, parse_settings
from services.core.contracts import Operation, Origin
from services.core.settings_base import SecretRef
from services.core.sources.common import ApiSettings
from services.core.sources.hubspot import SEARCH_BODY_OVERHEAD, HubSpotSource
from services.ingest.connectors.base import (
    AuthError,
    Checkpoint,
    InboundRequest,
    PayloadError,
    PullPage,
    Stamp,
)
from services.ingest.connectors.hubspot import connectors
from services.ingest.connectors.hubspot.pull import (
    HubSpotPullConnector,
    ListPosition,
    SearchPosition,
    decode_cursor,
    encode_cursor,
    is_throttled,
    next_search_position,
    search_body,
)
from services.ingest.connectors.hubspot.push import HubSpotWebhookConnector, v3_uri
from tests.fakes.hubspot import (
    CLIENT_SECRET,
    PORTAL_ID,
    TOKEN,
    FakeHubSpot,
    millis,
    ten_secondly_throttle,
    webhook_request,
)
from tests.fakes.server import FakeServer, Faults

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
URL = "https://crmsync.example.com/webhooks/hubspot"
SECRET_ENV = "CRMSYNC_TEST_HUBSPOT_SECRET"
TOKEN_ENV = "CRMSYNC_TEST_HUBSPOT_TOKEN"
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
POLL = Stamp(Origin.POLL)


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def source(**overrides: Any) -> HubSpotSource:
    values: dict[str, Any] = {"kind": "hubspot", "webhooks": {"client_secret": {"env": SECRET_ENV}}}
    values.update(overrides)
    return HubSpotSource.model_validate(values)


def webhook(**options: Any) -> HubSpotWebhookConnector:
    hooks = {"client_secret": {"env": SECRET_ENV}, **options.pop("webhooks", {})}
    return HubSpotWebhookConnector(source="hubspot", settings=source(webhooks=hooks, **options))


def inbound(
    body: bytes, headers: dict[str, str], *, url: str = URL, method: str = "POST"
) -> InboundRequest:
    return InboundRequest(method=method, url=url, headers=CIMultiDict(headers), body=body)


def signed(
    events: list[dict[str, Any]],
    *,
    version: str = "v3",
    at: datetime = NOW,
    url: str = URL,
    secret: str = CLIENT_SECRET,
) -> InboundRequest:
    body, headers = webhook_request(
        events, url=url, secret=secret, version=version, timestamp_ms=millis(at)
    )
    return inbound(body, headers, url=url)


def event(kind: str, object_id: int = 501, **extra: Any) -> dict[str, Any]:
    return {
        "eventId": 3816279340,
        "subscriptionId": 25,
        "portalId": PORTAL_ID,
        "appId": 1160452,
        "occurredAt": 1462216307945,
        "subscriptionType": kind,
        "attemptNumber": 0,
        "objectId": object_id,
        "changeSource": "CRM",
        **extra,
    }


def parse(events: Any, **options: Any) -> list[Any]:
    body = events if isinstance(events, bytes) else json.dumps(events).encode()
    return list(webhook(**options).parse(inbound(body, {}), received_at=NOW))


# --- signatures ---------------------------------------------------------------------------

DOC_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"


@pytest.mark.parametrize(
    ("method", "body", "signature"),
    [
        ("GET", b"", "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e"),
        (
            "POST",
            b'{"example_field":"example_value"}',
            "9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900",
        ),
    ],
)
def test_v2_signature_matches_the_documented_examples(
    monkeypatch: pytest.MonkeyPatch, method: str, body: bytes, signature: str
) -> None:
    monkeypatch.setenv(SECRET_ENV, DOC_SECRET)
    connector = webhook(webhooks={"signature_versions": ["v2"]})
    headers = {"X-HubSpot-Signature-Version": "v2", "X-HubSpot-Signature": signature}
    request = inbound(body, headers, url="https://www.example.com/webhook_uri", method=method)
    connector.authenticate(request, now=NOW)


def test_v3_signature_decodes_the_documented_escapes_only() -> None:
    url = "https://crmsync.example.com/webhooks/hubspot?next=%2Fhome%3Fa%3D1&who=a%40b%20c"
    body = json.dumps([event("contact.creation")]).encode()
    timestamp = str(millis(NOW))
    # HubSpot decodes %2F %3F %40 (and the rest of its table), not %3D or %20.
    source_uri = "https://crmsync.example.com/webhooks/hubspot?next=/home?a%3D1&who=a@b%20c"
    assert v3_uri(url) == source_uri
    message = f"POST{source_uri}{body.decode()}{timestamp}".encode()
    expected = base64.b64encode(
        hmac.new(CLIENT_SECRET.encode(), message, hashlib.sha256).digest()
    ).decode()
    headers = {"X-HubSpot-Signature-v3": expected, "X-HubSpot-Request-Timestamp": timestamp}
    webhook().authenticate(inbound(body, headers, url=url), now=NOW)


def test_v3_decodes_lower_case_escapes_too() -> None:
    assert v3_uri("https://h.example/a%2fb%3a%20") == "https://h.example/a/b:%20"


def test_v3_accepts_a_request_signed_just_inside_the_window() -> None:
    webhook().authenticate(
        signed([event("contact.creation")], at=NOW - timedelta(seconds=299)), now=NOW
    )


def test_v2_is_accepted_when_configured_and_no_v3_is_sent() -> None:
    request = signed([event("contact.creation")], version="v2")
    webhook(webhooks={"signature_versions": ["v3", "v2"]}).authenticate(request, now=NOW)


def _without(request: InboundRequest, name: str) -> InboundRequest:
    headers = CIMultiDict(request.headers)
    del headers[name]
    return inbound(request.body, dict(headers), url=request.url)


def _with(request: InboundRequest, **changes: str) -> InboundRequest:
    headers = CIMultiDict(request.headers)
    for name, value in changes.items():
        headers[name.replace("_", "-")] = value
    return inbound(request.body, dict(headers), url=request.url)


GOOD = [event("contact.creation")]
Refusal = Callable[[], tuple[InboundRequest, list[str]]]
REFUSALS: dict[str, tuple[Refusal, str]] = {
    "no signature": (
        lambda: (_without(signed(GOOD), "X-HubSpot-Signature-v3"), ["v3"]),
        "missing X-HubSpot-Signature-v3 header",
    ),
    "no timestamp": (
        lambda: (_without(signed(GOOD), "X-HubSpot-Request-Timestamp"), ["v3"]),
        "missing X-HubSpot-Request-Timestamp header",
    ),
    "wrong secret": (
        lambda: (signed(GOOD, secret="not-the-secret"), ["v3"]),
        "invalid signature in X-HubSpot-Signature-v3",
    ),
    "expired": (
        lambda: (signed(GOOD, at=NOW - timedelta(seconds=301)), ["v3"]),
        "timestamp outside the allowed window (possible replay)",
    ),
    "from the future": (
        lambda: (signed(GOOD, at=NOW + timedelta(seconds=301)), ["v3"]),
        "timestamp outside the allowed window (possible replay)",
    ),
    "timestamp swapped for a fresh one": (
        lambda: (
            _with(
                signed(GOOD, at=NOW - timedelta(hours=1)),
                X_HubSpot_Request_Timestamp=str(millis(NOW)),
            ),
            ["v3"],
        ),
        "invalid signature in X-HubSpot-Signature-v3",
    ),
    "not a timestamp": (
        lambda: (_with(signed(GOOD), X_HubSpot_Request_Timestamp="yesterday"), ["v3"]),
        "timestamp is not a Unix time",
    ),
    "tampered body": (
        lambda: (
            inbound(
                json.dumps([event("contact.deletion")]).encode(),
                dict(signed(GOOD).headers),
            ),
            ["v3"],
        ),
        "invalid signature in X-HubSpot-Signature-v3",
    ),
    "signed for another URL": (
        lambda: (
            inbound(
                signed(GOOD, url=URL + "-other").body,
                dict(signed(GOOD, url=URL + "-other").headers),
            ),
            ["v3"],
        ),
        "invalid signature in X-HubSpot-Signature-v3",
    ),
    "v2 when only v3 is accepted": (
        lambda: (signed(GOOD, version="v2"), ["v3"]),
        "missing X-HubSpot-Signature-v3 header",
    ),
    "v1 when only v2 is accepted": (
        lambda: (_without(signed(GOOD), "X-HubSpot-Signature-v3"), ["v2"]),
        "signature version 'v1' is not accepted",
    ),
    "bad v2": (
        lambda: (signed(GOOD, version="v2", secret="not-the-secret"), ["v2"]),
        "invalid signature in X-HubSpot-Signature",
    ),
    "forged v3 next to a valid v2 (no fallback)": (
        lambda: (
            _with(
                signed(GOOD, version="v2"),
                X_HubSpot_Signature_v3="Zm9yZ2Vk",
                X_HubSpot_Request_Timestamp=str(millis(NOW)),
            ),
            ["v3", "v2"],
        ),
        "invalid signature in X-HubSpot-Signature-v3",
    ),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_unproven_senders_are_refused(case: str) -> None:
    build, message = REFUSALS[case]
    request, versions = build()
    connector = webhook(webhooks={"signature_versions": versions})
    with pytest.raises(AuthError) as refused:
        connector.authenticate(request, now=NOW)
    assert str(refused.value) == message
    assert CLIENT_SECRET not in str(refused.value)


# --- events -------------------------------------------------------------------------------


def test_the_documented_example_batch() -> None:
    # The example of the Webhooks API page, which names the type field eventType.
    batch = [
        {
            "objectId": 1246965,
            "propertyName": "lifecyclestage",
            "propertyValue": "subscriber",
            "changeSource": "ACADEMY",
            "eventId": 3816279340,
            "subscriptionId": 25,
            "portalId": 33,
            "appId": 1160452,
            "occurredAt": 1462216307945,
            "eventType": "contact.propertyChange",
            "attemptNumber": 0,
        },
        {
            "objectId": 1246978,
            "changeSource": "IMPORT",
            "eventId": 3816279480,
            "subscriptionId": 22,
            "portalId": 33,
            "appId": 1160452,
            "occurredAt": 1462216307945,
            "eventType": "contact.creation",
            "attemptNumber": 0,
        },
    ]
    first, second = parse(batch)
    at = datetime(2016, 5, 2, 19, 11, 47, 945000, tzinfo=UTC)
    assert (first.record_id, first.operation, first.event_id) == (
        "1246965",
        Operation.UPSERT,
        "3816279340",
    )
    assert first.fields == {"lifecyclestage": "subscriber"}
    assert first.source_modified_at == at
    assert first.received_at == NOW
    assert first.origin is Origin.WEBHOOK
    assert (second.record_id, second.fields, second.event_id) == (
        "1246978",
        {"hs_object_id": "1246978"},
        "3816279480",
    )


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            event("contact.propertyChange", propertyName="email", propertyValue="Ada@Example.com"),
            [("501", Operation.UPSERT, {"email": "Ada@Example.com"}, "3816279340")],
        ),
        (
            event("contact.propertyChange", propertyName="phone", propertyValue=""),
            [("501", Operation.UPSERT, {"phone": ""}, "3816279340")],
        ),
        (
            event("contact.creation", changeFlag="NEW"),
            [("501", Operation.UPSERT, {"hs_object_id": "501"}, "3816279340")],
        ),
        (
            event("contact.restore"),
            [("501", Operation.UPSERT, {"hs_object_id": "501"}, "3816279340")],
        ),
        (event("contact.deletion"), [("501", Operation.DELETE, {}, "3816279340")]),
        (event("contact.privacyDeletion"), [("501", Operation.DELETE, {}, "3816279340")]),
        (
            event(
                "contact.merge",
                primaryObjectId=501,
                mergedObjectIds=[502, 503],
                newObjectId=501,
                numberOfPropertiesMoved=4,
            ),
            [
                ("502", Operation.DELETE, {}, "3816279340:merged:502"),
                ("503", Operation.DELETE, {}, "3816279340:merged:503"),
                ("501", Operation.UPSERT, {"hs_object_id": "501"}, "3816279340"),
            ],
        ),
        (
            # A merge that created a new record: both originals are gone.
            event("contact.merge", primaryObjectId=501, mergedObjectIds=[502], newObjectId=777),
            [
                ("502", Operation.DELETE, {}, "3816279340:merged:502"),
                ("501", Operation.DELETE, {}, "3816279340:merged:501"),
                ("777", Operation.UPSERT, {"hs_object_id": "777"}, "3816279340"),
            ],
        ),
        (
            {
                **event("object.propertyChange", propertyName="firstname", propertyValue="Ada"),
                "objectTypeId": "0-1",
            },
            [("501", Operation.UPSERT, {"firstname": "Ada"}, "3816279340")],
        ),
        (event("contact.associationChange", associationType="CONTACT_TO_COMPANY"), []),
        (event("company.creation"), []),
        ({**event("object.creation"), "objectTypeId": "0-2"}, []),
        (event("contact.somethingNew"), []),
    ],
    ids=[
        "propertyChange",
        "cleared value",
        "creation",
        "restore",
        "deletion",
        "privacyDeletion",
        "merge",
        "merge into a new record",
        "generic object event for contacts",
        "associationChange skipped",
        "other object skipped",
        "generic event of another object skipped",
        "unknown contact event skipped",
    ],
)
def test_each_event_type(payload: dict[str, Any], expected: list[tuple[Any, ...]]) -> None:
    changes = parse([payload])
    assert [(c.record_id, c.operation, dict(c.fields), c.event_id) for c in changes] == expected
    assert all(
        c.source_modified_at == datetime(2016, 5, 2, 19, 11, 47, 945000, tzinfo=UTC)
        for c in changes
    )


def test_a_redelivered_event_keeps_its_event_ids() -> None:
    first = parse([event("contact.merge", primaryObjectId=501, mergedObjectIds=[502])])
    again = parse(
        [event("contact.merge", primaryObjectId=501, mergedObjectIds=[502], attemptNumber=3)]
    )
    assert [c.event_id for c in first] == [c.event_id for c in again]


def test_events_of_other_objects_can_be_refused() -> None:
    with pytest.raises(PayloadError) as refused:
        parse(
            [event("contact.creation"), event("deal.creation")], webhooks={"other_events": "reject"}
        )
    assert refused.value.where == "body[1].subscriptionType"
    assert "'deal.creation' is not a contact event" in refused.value.problem


def test_events_of_another_account_are_skipped_or_refused() -> None:
    batch = [event("contact.creation"), event("contact.deletion", portalId=999)]
    assert [c.operation for c in parse(batch, portal_id=PORTAL_ID)] == [Operation.UPSERT]
    with pytest.raises(PayloadError) as refused:
        parse(batch, portal_id=PORTAL_ID, webhooks={"other_events": "reject"})
    assert refused.value.where == "body[1].portalId"


@pytest.mark.parametrize(
    ("body", "where", "problem"),
    [
        (b"[{", "body", "not valid JSON"),
        (b"\xff\xfe", "body", "not UTF-8"),
        (event("contact.creation"), "body", "must be a non-empty JSON array of events"),
        ([], "body", "must be a non-empty JSON array of events"),
        ([event("contact.creation")] * 101, "body", "more than 100 events"),
        ([event("contact.creation"), "x"], "body[1]", "must be a JSON object"),
        (
            [{k: v for k, v in event("contact.creation").items() if k != "eventId"}],
            "body[0].eventId",
            "missing or not an id",
        ),
        (
            [event("contact.creation", occurredAt="2016-05-02")],
            "body[0].occurredAt",
            "expected Unix milliseconds as an integer",
        ),
        ([event("contact.creation", objectId=None)], "body[0].objectId", "missing or not an id"),
        (
            [{k: v for k, v in event("x").items() if k != "subscriptionType"}],
            "body[0].eventType",
            "missing or not a non-empty string",
        ),
        (
            [event("contact.propertyChange", propertyValue="x")],
            "body[0].propertyName",
            "missing or not a non-empty string",
        ),
        ([event("contact.propertyChange", propertyName="age")], "body[0].propertyValue", "missing"),
        (
            [event("contact.propertyChange", propertyName="age", propertyValue=42)],
            "body[0].propertyValue",
            "must be a string",
        ),
        (
            [event("contact.merge", primaryObjectId=1)],
            "body[0].mergedObjectIds",
            "must be a non-empty array of ids",
        ),
        (
            [event("contact.merge", primaryObjectId=1, mergedObjectIds=[2, {}])],
            "body[0].mergedObjectIds[1]",
            "must be a non-empty string or an integer",
        ),
        ([event("object.creation")], "body[0].objectTypeId", "missing or not a non-empty string"),
    ],
)
def test_malformed_batches_name_the_field(body: Any, where: str, problem: str) -> None:
    with pytest.raises(PayloadError) as refused:
        parse(body)
    assert refused.value.where == where
    assert problem in refused.value.problem


def test_answer_is_200_json() -> None:
    answer = webhook().answer(inbound(b"[]", {}), 3)
    assert (answer.status, json.loads(answer.body)) == (200, {"accepted": 3})


# --- settings -----------------------------------------------------------------------------

CONFIG = """\
kafka: {bootstrap_servers: 127.0.0.1:9092}
store: {kind: sqlite}
sources:
  hubspot:
    kind: hubspot
"""


def config_problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(CONFIG + text, file="crmsync.yaml")
    return str(caught.value).splitlines()


def test_a_complete_source_with_defaults() -> None:
    settings = parse_settings(
        CONFIG + "    webhooks: {client_secret: {env: HS_SECRET}, signature_versions: [v3, v2]}\n"
        "    api: {token: {env: HS_TOKEN}}\n"
        "    poll: {interval_seconds: 60, page_size: 200}\n"
        "    portal_id: 62515\n"
        "    properties: [firstname, lastname]\n"
        "    mapping: {email: email, hs_lead_status: lead_status}\n",
        file="crmsync.yaml",
    ).sources["hubspot"]
    assert isinstance(settings, HubSpotSource)
    assert settings.api is not None and settings.api.base_url == "https://api.hubapi.com"
    assert settings.email_field == "email"
    assert settings.fetched_properties() == [
        "hs_object_id",
        "lastmodifieddate",
        "email",
        "firstname",
        "lastname",
        "hs_lead_status",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "sources.hubspot (line 5): a hubspot source needs 'webhooks'"),
        (
            "    webhooks: {signature_versions: [v3]}\n",
            "sources.hubspot.webhooks.client_secret (line 6): HubSpot signs every webhook "
            "with the app's client secret",
        ),
        (
            "    webhooks: {client_secret: s3cr3t-value}\n",
            "sources.hubspot.webhooks.client_secret (line 6): must name where the secret is kept",
        ),
        (
            "    webhooks: {client_secret: {env: X}, signature_versions: [v1]}\n",
            "sources.hubspot.webhooks.signature_versions[0] (line 6): Input should be 'v3' or 'v2'",
        ),
        (
            "    webhooks: {client_secret: {env: X}, signature_versions: []}\n",
            "sources.hubspot.webhooks.signature_versions (line 6): accept at least one",
        ),
        (
            "    webhooks: {client_secret: {env: X}}\n    poll: {interval_seconds: 60}\n",
            "sources.hubspot.poll (line 7): a poll reads HubSpot's CRM API: add 'api'",
        ),
        ("    api: {}\n", "sources.hubspot.api (line 6): token: HubSpot's CRM API needs"),
        ("    api: {token: pat-na1-123}\n", "api.token (line 6): must name where the secret is"),
        (
            "    api: {token: {env: T}, base_url: 'https://api.hubapi.com/crm/v3'}\n",
            "sources.hubspot.api (line 6): base_url is the API host only",
        ),
        (
            "    api: {token: {env: T}}\n    search_requests_per_second: 10\n",
            "sources.hubspot.search_requests_per_second (line 7): Input should be less than or "
            "equal to 5",
        ),
        (
            "    api: {token: {env: T}}\n    poll: {interval_seconds: 60, page_size: 500}\n",
            "sources.hubspot.poll (line 7): page_size: HubSpot's search returns at most 200",
        ),
        (
            "    api: {token: {env: T}}\n    poll: {interval_seconds: 60, overlap_seconds: 5}\n",
            "overlap_seconds: HubSpot's search shows a change only after a few moments",
        ),
        (
            "    api: {token: {env: T}}\n    properties: [First Name]\n",
            "sources.hubspot.properties (line 7): 'First Name': use HubSpot's internal",
        ),
        (
            "    api: {token: {env: T}}\n    properties: [email, email]\n",
            "a property is listed twice",
        ),
        (
            "    api: {token: {env: T}}\n    mapping: {Email: email}\n",
            "sources.hubspot.mapping (line 7): 'Email': use HubSpot's internal property names",
        ),
        (
            "    api: {token: {env: T}}\n    properties: ["
            + ", ".join(f"custom_property_{i:03d}" for i in range(140))
            + "]\n",
            "HubSpot refuses more than 3000; read fewer properties",
        ),
        ("    api: {token: {env: T}}\n    portal_id: 0\n", "sources.hubspot.portal_id (line 7)"),
    ],
)
def test_operator_mistakes_are_named(text: str, problem: str) -> None:
    found = config_problems(text)
    assert any(problem in line for line in found), found
    assert "s3cr3t-value" not in "\n".join(found)
    assert "pat-na1-123" not in "\n".join(found)


def test_the_settings_estimate_of_the_search_body_is_never_short() -> None:
    names = source(api={"token": {"env": TOKEN_ENV}}).fetched_properties()
    largest = search_body(
        SearchPosition(after_ms=9_999_999_999_999, group=True, last_id="9" * 20),
        properties=names,
        limit=200,
    )
    assert len(json.dumps(largest)) <= SEARCH_BODY_OVERHEAD + len(json.dumps(names))


def test_connectors_offer_what_is_configured() -> None:
    push_only = connectors("hubspot", source())
    assert push_only.webhook is not None and push_only.pull is None and push_only.api is None
    both = connectors(
        "hubspot",
        source(api={"token": {"env": TOKEN_ENV}}, poll={"interval_seconds": 60}),
    )
    assert both.pull is not None and both.poll is not None and both.is_throttled is is_throttled


def test_documented_pause_and_retry_answers_are_throttling() -> None:
    assert [s for s in (400, 404, 429, 477, 500, 521, 522, 523, 524) if is_throttled(s, b"")] == [
        477,
        521,
        523,
        524,
    ]


# --- cursors and the paging plan ----------------------------------------------------------


def test_cursors_round_trip_and_unreadable_ones_start_over() -> None:
    for position in (
        SearchPosition(after_ms=5, seen=("1", "2")),
        SearchPosition(after_ms=5, group=True, last_id="9", seen=("1",)),
        ListPosition(after="MTIz", total=40, newest_ms=7),
    ):
        assert decode_cursor(encode_cursor(position)) == position
    assert decode_cursor("not json") is None
    assert decode_cursor('{"mode": "other"}') is None
    assert decode_cursor('{"mode": "search", "bogus": 1}') is None


def test_the_paging_plan_always_moves_forward() -> None:
    start = SearchPosition(after_ms=100)
    assert next_search_position(start, [("1", 100), ("2", 150)], more=False) is None
    assert next_search_position(start, [("1", 100), ("2", 150), ("3", 150)], more=True) == (
        SearchPosition(after_ms=150, seen=("2", "3"))
    )
    # A full page of one millisecond pages that millisecond by id, then goes on after it.
    group = next_search_position(
        SearchPosition(after_ms=150, seen=("2",)), [("4", 150), ("5", 150)], more=True
    )
    assert group == SearchPosition(after_ms=150, seen=("2", "4", "5"), group=True)
    assert next_search_position(group, [("6", 150), ("9", 150)], more=True) == SearchPosition(
        after_ms=150, seen=("2", "4", "5"), group=True, last_id="9"
    )
    assert next_search_position(group, [("6", 150)], more=False) == SearchPosition(
        after_ms=150, inclusive=False
    )
    with pytest.raises(ApiError):
        next_search_position(start, [("1", 99)], more=True)
    with pytest.raises(ApiError):
        next_search_position(replace_last(group, "9"), [("8", 150)], more=True)


def replace_last(position: SearchPosition, last_id: str) -> SearchPosition:
    return SearchPosition(
        after_ms=position.after_ms, seen=position.seen, group=True, last_id=last_id
    )


# --- pulls against the fake, served in-process --------------------------------------------


@dataclass
class Harness:
    crm: FakeHubSpot
    server: FakeServer
    base_url: str
    session: httpx.AsyncClient
    sleeps: list[float]

    def api(self, *, real_sleep: bool = False, **settings: Any) -> ApiClient:
        values: dict[str, Any] = {
            "base_url": self.base_url,
            "token": SecretRef(env=TOKEN_ENV),
            "max_requests_per_second": 1000,
            "backoff_initial_seconds": 0.01,
            "backoff_max_seconds": 0.05,
            "max_attempts": 8,
        }
        values.update(settings)

        async def no_sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        return ApiClient(
            source="hubspot",
            settings=ApiSettings(**values),
            session=self.session,
            credentials=StaticBearer(TOKEN),
            sleep=asyncio.sleep if real_sleep else no_sleep,
        )


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest_asyncio.fixture
async def harness() -> AsyncIterator[Harness]:
    crm = FakeHubSpot(clock=Clock(), search_requests_per_second=None)
    server = FakeServer(crm.app(), Faults(throttle_response=ten_secondly_throttle))
    test_server = TestServer(server._app)
    await test_server.start_server()
    async with httpx.AsyncClient() as session:
        yield Harness(crm, server, str(test_server.make_url("/")), session, [])
    await test_server.close()


def puller(page_size: int = 100, **overrides: Any) -> HubSpotPullConnector:
    settings = source(
        api={"token": {"env": TOKEN_ENV}},
        poll={"interval_seconds": 60, "page_size": page_size},
        **overrides,
    )
    return HubSpotPullConnector(source="hubspot", settings=settings)


async def collect(
    connector: HubSpotPullConnector,
    api: ApiClient,
    *,
    since: datetime | None = LONG_AGO,
    resume: Checkpoint | None = None,
    stamp: Stamp = POLL,
    stop_after: int | None = None,
) -> list[PullPage]:
    pages: list[PullPage] = []
    async for page in connector.pages(api, since=since, resume=resume, stamp=stamp):
        pages.append(page)
        if stop_after is not None and len(pages) == stop_after:
            break
    return pages


def delivered(pages: list[PullPage]) -> list[str]:
    return [change.record_id for page in pages for change in page.changes]


@pytest.mark.asyncio
async def test_a_poll_pages_oldest_first_with_a_fresh_query_per_page(harness: Harness) -> None:
    ids = harness.crm.seed(450)
    pages = await collect(puller(100), harness.api())
    # Each query starts at the last page's newest millisecond, so it reads that record
    # again and drops it: 99 new records per page after the first.
    assert [len(p.changes) for p in pages] == [100, 99, 99, 99, 53]
    assert delivered(pages) == ids
    times = [c.source_modified_at for p in pages for c in p.changes]
    assert times == sorted(times)
    assert [p.checkpoint.watermark for p in pages] == [
        p.changes[-1].source_modified_at for p in pages
    ]
    assert [p.total for p in pages] == [450, None, None, None, None]
    assert pages[-1].checkpoint.cursor is None
    assert all("after" not in body for body in harness.crm.search_bodies)
    first = harness.crm.search_bodies[0]
    assert first["filterGroups"] == [
        {
            "filters": [
                {
                    "propertyName": "lastmodifieddate",
                    "operator": "GTE",
                    "value": str(millis(LONG_AGO)),
                }
            ]
        }
    ]
    assert first["sorts"] == [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}]
    assert first["limit"] == 100
    change = pages[0].changes[0]
    assert change.fields["email"] == harness.crm.contacts[ids[0]]["properties"]["email"]
    assert change.fields["hs_object_id"] == ids[0]
    assert change.origin is Origin.POLL and change.operation is Operation.UPSERT


@pytest.mark.asyncio
async def test_a_poll_reads_past_the_ten_thousand_result_window(harness: Harness) -> None:
    ids = harness.crm.seed(10_250)
    pages = await collect(puller(200), harness.api())
    assert delivered(pages) == ids
    assert harness.server.statuses[400] == 0


@pytest.mark.asyncio
async def test_the_fake_refuses_paging_past_ten_thousand_like_hubspot(harness: Harness) -> None:
    harness.crm.seed(10_050)
    api = harness.api()
    body = {"limit": 200, "after": "9800"}
    last = await api.post_json("/crm/v3/objects/contacts/search", body=body)
    assert len(last["results"]) == 200
    assert last["paging"]["next"]["after"] == "10000"
    with pytest.raises(ApiError) as refused:
        await api.post_json("/crm/v3/objects/contacts/search", body={"limit": 10, "after": "10000"})
    assert refused.value.status == 400
    assert "10000 total results" in refused.value.detail


@pytest.mark.asyncio
async def test_records_sharing_the_boundary_millisecond_are_all_delivered_once(
    harness: Harness,
) -> None:
    crm = harness.crm
    before = crm.seed(30)
    tied = crm.seed(250, modified_at=datetime(2026, 11, 23, 8, 30, tzinfo=UTC))
    crm._last_ms = millis(datetime(2026, 11, 23, 8, 30, tzinfo=UTC))
    after = crm.seed(30)
    pages = await collect(puller(100), harness.api())
    got = delivered(pages)
    assert sorted(got, key=int) == before + tied + after
    assert len(got) == len(set(got)), "a record was delivered twice"
    group_bodies = [b for b in crm.search_bodies if b["sorts"][0]["propertyName"] == "hs_object_id"]
    assert len(group_bodies) >= 2


@pytest.mark.asyncio
async def test_changes_during_a_poll_do_not_make_it_skip_records(harness: Harness) -> None:
    crm = harness.crm
    ids = crm.seed(300)

    def edit_early_records(request_number: int) -> None:
        # After the first page: records of the first page change (they move to the
        # end of the result) and one is deleted, as users do while a poll runs.
        if request_number == 2:
            for record_id in ids[:10]:
                crm.upsert(record_id, lastname="Edited")
            crm.delete(ids[10])

    crm.on_search = edit_early_records
    pages = await collect(puller(100), harness.api())
    assert set(delivered(pages)) == set(ids)
    edited = [c for p in pages for c in p.changes if c.fields.get("lastname") == "Edited"]
    assert sorted(c.record_id for c in edited) == sorted(ids[:10])


@pytest.mark.asyncio
async def test_offset_paging_would_have_skipped_a_record(harness: Harness) -> None:
    # Why the connector never pages with ``after``: the fake drifts like HubSpot.
    crm = harness.crm
    ids = crm.seed(200)
    api = harness.api()
    body: dict[str, Any] = {
        "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
        "limit": 100,
    }
    first = await api.post_json("/crm/v3/objects/contacts/search", body=body)
    crm.upsert(ids[0], lastname="Edited")
    second = await api.post_json("/crm/v3/objects/contacts/search", body={**body, "after": "100"})
    seen = {r["id"] for r in first["results"] + second["results"]}
    assert ids[100] not in seen


@pytest.mark.asyncio
async def test_a_poll_resumes_from_its_cursor_with_no_gap_and_no_repeat(harness: Harness) -> None:
    ids = harness.crm.seed(350)
    connector = puller(100)
    head = await collect(connector, harness.api(), stop_after=2)
    tail = await collect(
        connector,
        harness.api(),
        since=datetime(2026, 11, 23, 7, tzinfo=UTC),  # the poller's moved 'since' is ignored
        resume=head[-1].checkpoint,
    )
    assert delivered(head) + delivered(tail) == ids
    assert tail[-1].checkpoint.watermark == tail[-1].changes[-1].source_modified_at


@pytest.mark.asyncio
async def test_a_full_sync_lists_every_live_contact_with_the_total(harness: Harness) -> None:
    crm = harness.crm
    ids = crm.seed(250)
    for record_id in ids[:5]:
        crm.delete(record_id)
    crm.upsert(ids[5], firstname="Changed")
    stamp = Stamp(Origin.FULL_SYNC, "hubspot-sync-1")
    pages = await collect(puller(), harness.api(), since=None, stamp=stamp)
    assert delivered(pages) == ids[5:]
    assert [p.total for p in pages] == [245, 245, 245]
    assert [p.checkpoint.watermark is None for p in pages] == [True, True, False]
    assert pages[-1].checkpoint.watermark == max(
        c.source_modified_at for p in pages for c in p.changes
    )
    assert crm.list_requests == 3
    assert crm.search_bodies == [{"limit": 1, "properties": ["hs_object_id"]}]
    change = pages[0].changes[0]
    assert (change.origin, change.sync_id) == (Origin.FULL_SYNC, "hubspot-sync-1")
    assert change.fields["firstname"] == "Changed"
    assert set(change.fields) == {
        "hs_object_id",
        "lastmodifieddate",
        "email",
        "firstname",
        "lastname",
        "phone",
        "company",
        "createdate",
    }


@pytest.mark.asyncio
async def test_a_full_sync_resumes_from_its_cursor(harness: Harness) -> None:
    ids = harness.crm.seed(260)
    connector = puller()
    head = await collect(connector, harness.api(), since=None, stop_after=1)
    tail = await collect(
        connector, harness.api(), since=None, resume=Checkpoint(cursor=head[-1].checkpoint.cursor)
    )
    assert delivered(head) + delivered(tail) == ids
    assert [p.total for p in tail] == [260, 260]
    assert len(harness.crm.search_bodies) == 1  # the count is not asked again


@pytest.mark.asyncio
async def test_hubspot_429_answers_are_waited_out(harness: Harness) -> None:
    harness.crm.seed(150)
    harness.server.faults.script(429, 429)
    pages = await collect(puller(100), harness.api())
    assert len(delivered(pages)) == 150
    assert harness.server.statuses[429] == 2
    assert len(harness.sleeps) == 2


@pytest.mark.asyncio
async def test_the_search_limit_of_five_per_second_is_hubspots_429(harness: Harness) -> None:
    crm = harness.crm
    crm.search_limiter.per_second = 5
    answers = []
    for _ in range(7):
        response = await harness.session.post(
            harness.base_url + "crm/v3/objects/contacts/search",
            json={"limit": 1},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        answers.append((response.status_code, response.json()))
    assert answers[0][0] == 200
    status, body = answers[-1]
    assert status == 429
    assert body["errorType"] == "RATE_LIMIT"
    assert body["policyName"] == "SECONDLY"
    assert set(body) >= {"status", "message", "correlationId"}


@pytest.mark.asyncio
async def test_a_poll_rides_out_the_search_limit_in_real_time(harness: Harness) -> None:
    harness.crm.seed(700)
    harness.crm.search_limiter.per_second = 3
    api = harness.api(
        real_sleep=True, backoff_initial_seconds=0.1, backoff_max_seconds=0.5, max_attempts=30
    )
    pages = await collect(puller(100), api)
    assert len(delivered(pages)) == 700
    assert harness.server.statuses[429] > 0


@pytest.mark.asyncio
async def test_a_bad_token_is_hubspots_401(harness: Harness) -> None:
    api = ApiClient(
        source="hubspot",
        settings=ApiSettings(base_url=harness.base_url, max_attempts=1),
        session=harness.session,
        credentials=StaticBearer("pat-na1-wrong"),
    )
    with pytest.raises(ApiError) as refused:
        await collect(puller(), api)
    assert refused.value.status == 401
    assert "Authentication credentials not found" in refused.value.detail


@pytest.mark.asyncio
async def test_a_server_that_keeps_failing_makes_the_pull_unavailable(harness: Harness) -> None:
    harness.crm.seed(5)
    harness.server.faults.error_rate = 1.0
    with pytest.raises(ApiUnavailable):
        await collect(puller(), harness.api(max_attempts=3))


@pytest.mark.asyncio
async def test_an_invalid_record_is_rejected_and_the_pull_goes_on() -> None:
    page = {
        "total": 3,
        "results": [
            {"id": "1", "properties": {"lastmodifieddate": "2026-11-23T08:00:00.001Z"}},
            {"properties": {"lastmodifieddate": "2026-11-23T08:00:00.002Z"}},
            {"id": "3", "properties": {"lastmodifieddate": "last tuesday"}},
        ],
    }

    async def handler(_request: web.Request) -> web.Response:
        return web.json_response(page)

    app = web.Application()
    app.router.add_post("/crm/v3/objects/contacts/search", handler)
    server = TestServer(app)
    await server.start_server()
    try:
        async with httpx.AsyncClient() as session:
            api = ApiClient(
                source="hubspot",
                settings=ApiSettings(base_url=str(server.make_url("/"))),
                session=session,
                credentials=StaticBearer(TOKEN),
            )
            [result] = await collect(puller(), api)
    finally:
        await server.close()
    assert [c.record_id for c in result.changes] == ["1"]
    assert [r.reason for r in result.rejected] == [
        "results[1].id: missing or not an id",
        "results[2].properties.lastmodifieddate: not an ISO 8601 timestamp: 'last tuesday'",
    ]
    assert result.checkpoint.cursor is None


# --- echoes of crmsync's own writes -------------------------------------------------------


def echoes_dropped(source: str) -> float:
    return REGISTRY.get_sample_value("crmsync_echoes_dropped_total", {"source": source}) or 0.0


def firstname_change(object_id: int, change_source: str, source_id: str) -> dict[str, Any]:
    return event(
        "contact.propertyChange",
        object_id=object_id,
        propertyName="firstname",
        propertyValue="Ada",
        changeSource=change_source,
        sourceId=source_id,
    )


def test_the_echo_of_crmsyncs_own_write_is_dropped_and_counted() -> None:
    own = firstname_change(501, "INTEGRATION", "54321")
    someone = firstname_change(502, "CRM_UI", "userId:4242")
    before = echoes_dropped("hubspot")
    changes = parse([own, someone], webhooks={"own_source_ids": ["54321"]})
    assert [c.record_id for c in changes] == ["502"]
    assert echoes_dropped("hubspot") == before + 1


def test_without_own_source_ids_every_change_is_taken() -> None:
    own = firstname_change(501, "INTEGRATION", "54321")
    assert [c.record_id for c in parse([own])] == ["501"]
