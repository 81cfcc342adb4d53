"""The S-360 contact webhook: Basic credentials, buckets of getContactData contacts, the fake.

Payload examples follow the material the connector cites (ContactDataResult field
names: contactNumber, contactId, creationDate, role, individualContact, addresses with
isMain/zipCode, authorizations, contactCriteria, indicators); S-360 publishes no full
sample, so the examples are built from those names.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from services.core.contracts import ContactChange, Operation, Origin
from services.core.settings_base import MissingSecretError
from services.core.sources.s360 import S360Source
from services.ingest.connectors import s360
from services.ingest.connectors.base import AuthError, InboundRequest, PayloadError
from services.ingest.connectors.s360 import (
    S360WebhookConnector,
    basic_authorization,
    basic_credentials,
    connectors,
)
from services.ingest.fields import version_event_id
from tests.fakes.s360 import LOGIN, MAX_SENDS, PASSWORD, FakeS360

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
PASSWORD_ENV = "CRMSYNC_TEST_S360_PASSWORD"
URL = "https://crmsync.example.com/webhooks/s360"


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


def settings(**values: Any) -> S360Source:
    config: dict[str, Any] = {
        "kind": "s360",
        "auth": {"login": LOGIN, "password": {"env": PASSWORD_ENV}},
    }
    config.update(values)
    return S360Source(**config)


def connector(**values: Any) -> S360WebhookConnector:
    return S360WebhookConnector(source="s360", settings=settings(**values))


def request(body: Any, headers: dict[str, str] | None = None) -> InboundRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return InboundRequest(method="POST", url=URL, headers=headers or {}, body=raw)


def parse(body: Any, **values: Any) -> list[ContactChange]:
    return list(connector(**values).parse(request(body), received_at=NOW))


def contact(number: str = "00001001", **parts: Any) -> dict[str, Any]:
    return {
        "contactNumber": number,
        "contactId": 10228000001001,
        "creationDate": "2026-01-05T10:09:27.503+00:00",
        "role": "PUBLIC",
        "individualContact": {
            "firstName": "Ada",
            "lastName": "Lovelace",
            "birthDate": "1815-12-10",
            "email": "ada@example.com",
        },
        **parts,
    }


# --- settings ------------------------------------------------------------------------


def test_settings_defaults_and_secret_reference() -> None:
    source = settings()
    assert source.email_field == "email"
    assert source.auth.kind == "basic"
    assert source.modified_at_field is None
    assert source.deletion is None


@pytest.mark.parametrize(
    ("auth", "problem"),
    [
        ({"login": LOGIN, "password": "plain"}, "must name where the secret is kept"),
        ({"login": "a:b", "password": {"env": PASSWORD_ENV}}, "String should match pattern"),
        ({"login": "", "password": {"env": PASSWORD_ENV}}, "at least 1 character"),
        ({"login": LOGIN}, "Field required"),
    ],
)
def test_settings_refuse_bad_credentials(auth: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        S360Source(kind="s360", auth=auth)


def test_settings_refuse_unknown_keys_and_keyed_addresses() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        settings(webhook_secret="x")
    with pytest.raises(ValidationError, match=r"addresses\(isMain\)"):
        settings(list_keys={"addresses": "type"})


def test_missing_password_secret_stops_the_connector_at_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(MissingSecretError, match=PASSWORD_ENV):
        connectors("s360", settings())


def test_connectors_are_push_only() -> None:
    built = connectors("s360", settings())
    assert isinstance(built.webhook, S360WebhookConnector)
    assert built.pull is None
    assert built.api is None


# --- authentication ------------------------------------------------------------------


def test_rfc_7617_reference_vector() -> None:
    # RFC 7617 section 2: user "Aladdin", password "open sesame".
    assert basic_authorization("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    assert basic_credentials({"Authorization": "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="}) == (
        "Aladdin",
        "open sesame",
    )


def basic(login: str, secret: str) -> dict[str, str]:
    # Built independently of the connector's helper.
    return {"Authorization": "Basic " + base64.b64encode(f"{login}:{secret}".encode()).decode()}


def test_right_credentials_are_accepted() -> None:
    connector().authenticate(request(contact(), basic(LOGIN, PASSWORD)), now=NOW)
    # The scheme is case-insensitive; a colon in the password belongs to the password.
    headers = {"Authorization": basic(LOGIN, PASSWORD)["Authorization"].replace("Basic", "basic")}
    connector().authenticate(request(contact(), headers), now=NOW)


def test_password_with_colon_and_non_ascii(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "pä:ss")
    connector().authenticate(request(contact(), basic(LOGIN, "pä:ss")), now=NOW)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing Authorization header"),
        (basic(LOGIN, "wrong"), "invalid login or password"),
        (basic("someone", PASSWORD), "invalid login or password"),
        (basic(LOGIN, ""), "invalid login or password"),
        ({"Authorization": f"Bearer {PASSWORD}"}, "not HTTP Basic credentials"),
        ({"Authorization": "Basic not base64!"}, "malformed Basic credentials"),
        ({"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()}, "malformed"),
        ({"Authorization": "Basic " + base64.b64encode(b"\xff:\xfe").decode()}, "malformed"),
    ],
)
def test_unproven_senders_are_refused(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(AuthError, match=reason) as refused:
        connector().authenticate(request(contact(), headers), now=NOW)
    assert PASSWORD not in str(refused.value)


def test_login_and_password_are_both_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[str | bytes, str | bytes]] = []

    def recording_same(presented: str | bytes, expected: str | bytes) -> bool:
        compared.append((presented, expected))
        return presented == expected

    monkeypatch.setattr(s360, "same", recording_same)
    with pytest.raises(AuthError):
        connector().authenticate(request(contact(), basic("someone", PASSWORD)), now=NOW)
    # The wrong login did not spare the password comparison.
    assert compared == [("someone", LOGIN), (PASSWORD, PASSWORD)]


# --- parsing -------------------------------------------------------------------------


def test_a_bucket_of_one_as_a_bare_contact() -> None:
    [change] = parse(contact())
    assert change.record_id == "00001001"
    assert change.operation is Operation.UPSERT
    assert change.origin is Origin.WEBHOOK
    assert change.received_at == NOW
    assert change.source_modified_at == NOW
    assert change.fields["individualContact.firstName"] == "Ada"
    assert change.fields["contactId"] == 10228000001001
    assert change.fields["role"] == "PUBLIC"
    assert change.fields["email"] == "ada@example.com"


def test_a_bucket_keeps_order_and_sequence() -> None:
    changes = parse([contact("1"), contact("2"), contact("1")])
    assert [(c.record_id, c.sequence) for c in changes] == [("1", 0), ("2", 1), ("1", 2)]


def test_only_the_main_address_is_kept_under_the_filter_notation() -> None:
    addresses = [
        {"isMain": False, "zipCode": "1000", "town": "Lausanne"},
        {"isMain": True, "zipCode": "1201", "town": "Geneva", "lines": ["Rue 1", "Bat. B"]},
    ]
    [change] = parse(contact(addresses=addresses))
    assert change.fields["addresses(isMain).zipCode"] == "1201"
    assert change.fields["addresses(isMain).town"] == "Geneva"
    assert change.fields["addresses(isMain).lines"] == ["Rue 1", "Bat. B"]
    assert not any(name.startswith("addresses[") for name in change.fields)


@pytest.mark.parametrize(
    "addresses",
    [None, [], [{"isMain": False, "zipCode": "1"}], [{"isMain": "true", "zipCode": "1"}]],
)
def test_no_main_address_gives_no_address_fields(addresses: Any) -> None:
    [change] = parse(contact(addresses=addresses))
    assert not any(name.startswith("addresses") for name in change.fields)


def test_lists_of_objects_are_indexed_or_keyed() -> None:
    parts: dict[str, Any] = {
        "authorizations": [{"code": "NEWSLETTER", "value": True}, {"code": "SMS", "value": False}],
        "contactCriteria": [{"code": "FAN", "value": "true"}],
        "indicators": [{"code": "SENIORITY", "value": 3}, {"code": "SENIORITY", "value": 4}],
        "tags": ["a", 1, True, None],
    }
    [indexed] = parse(contact(**parts))
    assert indexed.fields["authorizations[1].code"] == "SMS"
    assert indexed.fields["contactCriteria[0].value"] == "true"
    assert indexed.fields["tags"] == ["a", "1", "true", ""]
    keys = {"authorizations": "code", "contactCriteria": "code", "indicators": "code"}
    [keyed] = parse(contact(**parts), list_keys=keys)
    assert keyed.fields["authorizations(code=NEWSLETTER).value"] is True
    assert keyed.fields["authorizations(code=SMS).value"] is False
    assert keyed.fields["contactCriteria(code=FAN).value"] == "true"
    # Keys that are not distinct fall back to positions, so nothing is overwritten.
    assert keyed.fields["indicators[0].value"] == 3
    assert keyed.fields["indicators[1].value"] == 4


def test_nested_lists_and_mixed_lists_lose_nothing() -> None:
    [change] = parse(contact(matrix=[[1, 2], {"a": 1}, "x"]))
    assert change.fields["matrix[0]"] == ["1", "2"]
    assert change.fields["matrix[1].a"] == 1
    assert change.fields["matrix[2]"] == "x"


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ({"email": "top@example.com"}, "top@example.com"),
        ({}, "ada@example.com"),
        (
            {
                "individualContact": {"email": "  "},
                "addresses": [{"isMain": True, "email": "main@example.com"}],
            },
            "main@example.com",
        ),
        ({"individualContact": {"email": " padded@example.com "}}, "padded@example.com"),
    ],
)
def test_primary_email_is_a_plain_string_field(parts: dict[str, Any], expected: str) -> None:
    [change] = parse(contact(**parts))
    assert change.fields["email"] == expected


def test_no_email_anywhere_sets_no_email_field() -> None:
    [change] = parse(contact(individualContact={"firstName": "Ada"}))
    assert "email" not in change.fields


def test_configured_email_paths() -> None:
    body = contact(login={"username": "login@example.com"})
    [change] = parse(body, email_paths=["login.username"])
    assert change.fields["email"] == "login@example.com"


def test_event_ids_are_stable_for_a_resend_and_change_with_the_content() -> None:
    first = parse([contact("1"), contact("2")])
    again = parse([contact("1"), contact("2")])
    assert [c.event_id for c in first] == [c.event_id for c in again]
    assert first[0].event_id != first[1].event_id
    changed = contact("1", role="MEMBER")
    assert parse(changed)[0].event_id != first[0].event_id
    # Key order is no part of a contact's state.
    reordered = dict(reversed(list(contact("1").items())))
    assert parse(reordered)[0].event_id == first[0].event_id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-20T10:09:27.503+00:00", datetime(2026, 11, 20, 10, 9, 27, 503000, UTC)),
        ("2026-11-20T11:09:27+01:00", datetime(2026, 11, 20, 10, 9, 27, tzinfo=UTC)),
        (1_763_633_367_000, datetime(2025, 11, 20, 10, 9, 27, tzinfo=UTC)),
    ],
)
def test_configured_modification_time(value: Any, expected: datetime) -> None:
    [change] = parse(contact(lastModificationDate=value), modified_at_field="lastModificationDate")
    assert change.source_modified_at == expected
    assert change.event_id == version_event_id("s360", "00001001", expected)


def test_deletion_marker_makes_a_delete_without_fields() -> None:
    deletion = {"field": "state", "values": ["ANONYMIZED", "DELETED"]}
    [gone, kept] = parse([contact("1", state="ANONYMIZED"), contact("2")], deletion=deletion)
    assert (gone.operation, gone.fields) == (Operation.DELETE, {})
    assert kept.operation is Operation.UPSERT
    [flagged] = parse(contact(gone=True), deletion={"field": "gone", "values": ["true"]})
    assert flagged.operation is Operation.DELETE


@pytest.mark.parametrize(
    ("body", "where", "problem"),
    [
        (b"{", "body", "not valid JSON"),
        (b"\xff", "body", "not UTF-8"),
        ([], "body", "non-empty array"),
        ("text", "body", "non-empty array"),
        ([contact(), 7], "body[1]", "must be a JSON object"),
        ([{"contactId": 1}], "body[0].contactNumber", "missing or not a non-empty string"),
        ({"contactNumber": 1001}, "body[0].contactNumber", "missing or not a non-empty"),
        ({"contactNumber": "  "}, "body[0].contactNumber", "missing or not a non-empty"),
        ({"contactNumber": "1" * 21}, "body[0].contactNumber", "longer than 20 characters"),
        (contact(addresses={"isMain": True}), "body[0].addresses", "must be a list"),
        (contact(contactId=1 << 64), "body[0].contactId", "64-bit range"),
        (
            contact(addresses=[{"isMain": True, "id": 1 << 64}]),
            "body[0].addresses(isMain).id",
            "64-bit range",
        ),
    ],
)
def test_malformed_bodies_name_the_field(body: Any, where: str, problem: str) -> None:
    with pytest.raises(PayloadError, match=problem) as refused:
        parse(body)
    assert refused.value.where == where


def test_missing_configured_modification_time_names_the_field() -> None:
    with pytest.raises(PayloadError) as refused:
        parse([contact("1")], modified_at_field="lastModificationDate")
    assert refused.value.where == "body[0].lastModificationDate"


def test_more_contacts_than_the_cap_are_refused() -> None:
    with pytest.raises(PayloadError, match="more than 2 contacts"):
        parse([contact("1"), contact("2"), contact("3")], max_contacts_per_request=2)


def test_answer_is_200() -> None:
    answer = connector().answer(request([]), 3)
    assert (answer.status, json.loads(answer.body)) == (200, {"accepted": 3})


# --- the fake, as S-360 sends --------------------------------------------------------


class Receiver:
    """The connector in place of ingest: 200, 401 or 400 as the webhook handler answers."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.connector = connector()
        self.changes: list[ContactChange] = []
        self.bodies: list[Any] = []
        self.scripted = list(statuses or [])

    def __call__(self, body: bytes, headers: dict[str, str]) -> int:
        if self.scripted:
            return self.scripted.pop(0)
        inbound = request(body, headers)
        try:
            self.connector.authenticate(inbound, now=NOW)
        except AuthError:
            return 401
        try:
            self.changes.extend(self.connector.parse(inbound, received_at=NOW))
        except PayloadError:
            return 400
        self.bodies.append(json.loads(body))
        return 200


def test_fake_sends_runs_of_batch_size_in_buckets() -> None:
    crm = FakeS360(batch_size=5, bucket_size=2)
    numbers = crm.seed(7)
    receiver = Receiver()
    assert crm.run(receiver) == 5
    assert [len(b) if isinstance(b, list) else 1 for b in receiver.bodies] == [2, 2, 1]
    assert crm.queue == numbers[5:]
    assert crm.run(receiver) == 2
    assert [c.record_id for c in receiver.changes] == numbers
    first = receiver.changes[0]
    assert first.fields["email"] == "contact0@example.com"
    assert first.fields["addresses(isMain).zipCode"] == "1200"
    assert first.fields["authorizations[0].value"] is True


def test_fake_sends_only_the_chosen_details() -> None:
    crm = FakeS360(details=["GENERAL"])
    number = crm.seed(1)[0]
    data = crm.contact_data(number)
    assert set(data) == {"contactNumber", "contactId", "creationDate", "role", "individualContact"}


def test_fake_queues_a_contact_once_and_sends_its_latest_state() -> None:
    crm = FakeS360()
    number = crm.upsert(individualContact={"firstName": "Ada", "email": "ada@example.com"})
    crm.upsert(number, individualContact={"firstName": "Ada L."})
    receiver = Receiver()
    assert crm.drain(receiver) == 1
    [change] = receiver.changes
    assert change.fields["individualContact.firstName"] == "Ada L."
    assert change.fields["email"] == "ada@example.com"


def test_fake_resends_failed_buckets_then_abandons_after_12_sends() -> None:
    crm = FakeS360(bucket_size=2)
    numbers = crm.seed(2)
    receiver = Receiver(statuses=[503, 500])
    assert crm.drain(receiver) == 2
    assert crm.failures == {numbers[0]: 2, numbers[1]: 2}
    # Wrong credentials: every send is refused, and S-360 gives up after 12.
    crm = FakeS360(password="not-the-password")
    lost = crm.seed(1)
    assert crm.drain(Receiver()) == 0
    assert crm.abandoned == lost
    assert len(crm.sent) == MAX_SENDS


def test_fake_modification_field_feeds_the_configured_version() -> None:
    crm = FakeS360(modified_field="lastModificationDate")
    number = crm.seed(1)[0]
    body, headers = crm.webhook_request([number])
    [change] = connector(modified_at_field="lastModificationDate").parse(
        request(body, headers), received_at=NOW
    )
    # S-360 writes milliseconds: the version is the stamp the fake wrote.
    written = crm.contact_data(number)["lastModificationDate"]
    assert change.source_modified_at == datetime.fromisoformat(written)
    assert abs(change.source_modified_at - crm.contacts[number]["_modified"]).total_seconds() < 1e-3
