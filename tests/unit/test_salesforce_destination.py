"""The Salesforce destination against the fake org's sObject Collections, served on
loopback: what a chunk of changes becomes, and what each answer does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Unpack

import pydantic
import pytest

from services.core.api_client import ApiUnavailable
from services.core.destinations.salesforce import SalesforceDestination
from services.core.profile_changed import (
    ProfileChanged,
    ProfileChangeKind,
)
from services.ingest.connectors.salesforce.events import made_by
from services.outbound.destinations.salesforce import SalesforceRecords
from tests.fakes.salesforce import CLIENT_ID, CLIENT_SECRET, FakeSalesforce
from tests.fakes.server import FakeServer, ServerThread
from tests.support.destinations import (
    Changed,
    deliver,
    linked,
    profile_changed,
    send_each,
    shaped,
)

pytestmark = pytest.mark.unit

SECRET_ENV = "SALESFORCE_DESTINATION_TEST_SECRET"
COLLECTIONS = "/services/data/v62.0/composite/sobjects"
BY_EMAIL = f"{COLLECTIONS}/Contact/Email"
ERASED = ProfileChangeKind.ERASED


@pytest.fixture
def org() -> Iterator[tuple[FakeSalesforce, FakeServer]]:
    fake = FakeSalesforce(extra_fields=("Newsletter__c", "Crmsync_Id__c"))
    server = FakeServer(fake.app())
    server.faults.throttle_response = fake.throttle_response
    with ServerThread(server) as served:
        yield fake, served


def settings(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, **values: Any
) -> SalesforceDestination:
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)
    api = {
        "base_url": server.url,
        "max_attempts": 3,
        "backoff_initial_seconds": 0.05,
        **values.pop("api", {}),
    }
    document: dict[str, Any] = {
        "kind": "salesforce",
        "source": "salesforce",
        "api": api,
        "oauth": {"client_id": CLIENT_ID, "client_secret": {"env": SECRET_ENV}},
        "api_version": "62.0",
        **values,
    }
    return SalesforceDestination.model_validate(document)


def change(profile: int, *, record: str | None = None, **given: Unpack[Changed]) -> ProfileChanged:
    """A change made in the shop; ``record``: the Salesforce record id the profile carries."""
    return profile_changed(profile, crm=linked("salesforce", record), source="shop", **given)


def named(profile: int, email: str, *, event: str = "e1", **extra: Any) -> ProfileChanged:
    attributes = {"LastName": (None, f"Last{profile}"), **extra.pop("attributes", {})}
    return change(profile, event=event, email=email, attributes=attributes, **extra)


def live(fake: FakeSalesforce) -> dict[str, dict[str, Any]]:
    return {i: r for i, r in fake.records.items() if not r["IsDeleted"]}


def test_a_profile_is_upserted_by_email_then_updated_by_its_record_id(
    org: tuple[FakeSalesforce, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = org
    destination = settings(server, monkeypatch)
    first = deliver(
        destination,
        [
            named(1, "ada@x.io", attributes={"FirstName": (None, "Ada")}),
            change(1, event="e2", email="ada@x.io", attributes={"FirstName": ("Ada", "Ada L.")}),
        ],
    )
    assert first.refused == []
    [record_id] = live(fake)
    assert first.assigned == {1: record_id}
    assert fake.records[record_id]["FirstName"] == "Ada L."
    method, path, body = fake.collection_requests[0]
    assert (method, path) == ("PATCH", BY_EMAIL)
    assert body == {
        "allOrNone": False,
        "records": [
            {
                "attributes": {"type": "Contact"},
                "LastName": "Last1",
                "FirstName": "Ada L.",
                "Email": "ada@x.io",
            }
        ],
    }

    second = deliver(
        destination,
        [change(1, event="e3", record=record_id, attributes={"MailingCity": (None, "Oslo")})],
    )
    assert second.refused == [] and second.assigned == {1: record_id}
    method, path, body = fake.collection_requests[-1]
    assert (method, path) == ("PATCH", COLLECTIONS)
    assert body["records"] == [
        {"attributes": {"type": "Contact"}, "id": record_id, "MailingCity": "Oslo"}
    ]
    assert fake.records[record_id]["MailingCity"] == "Oslo" and len(live(fake)) == 1


def test_an_existing_contact_is_matched_by_email_and_only_changes_are_sent(
    org: tuple[FakeSalesforce, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = org
    existing = fake.upsert(LastName="Rossi", Email="Bob@X.io", MailingCity="Rome")["Id"]
    delivered = deliver(
        settings(server, monkeypatch),
        [
            change(
                2,
                event="e1",
                email="bob@x.io",
                attributes={"MailingCity": ("Rome", None), "Phone": (None, "+39 1")},
            )
        ],
    )
    assert delivered.refused == [] and delivered.assigned == {2: existing}
    [(_, _, body)] = fake.collection_requests
    assert body["records"][0] == {
        "attributes": {"type": "Contact"},
        "Phone": "+39 1",
        "Email": "bob@x.io",
    }
    assert fake.records[existing]["MailingCity"] == "Rome"
    deliver(
        settings(server, monkeypatch, send_clears=True),
        [change(2, event="e2", record=existing, attributes={"MailingCity": ("Rome", None)})],
    )
    assert fake.records[existing]["MailingCity"] is None


def test_consents_are_checkbox_fields(
    org: tuple[FakeSalesforce, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = org
    destination = settings(server, monkeypatch, consents={"newsletter": "Newsletter__c"})
    deliver(destination, [named(1, "ada@x.io", consents={"newsletter": "OPT_IN"})])
    [record] = live(fake).values()
    assert record["Newsletter__c"] is True
    deliver(
        destination, [change(1, event="e2", email="ada@x.io", consents={"newsletter": "OPT_OUT"})]
    )
    assert record["Id"] in fake.records and fake.records[record["Id"]]["Newsletter__c"] is False


def test_a_chunk_over_200_is_split(
    org: tuple[FakeSalesforce, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = org
    delivered = deliver(settings(server, monkeypatch), [named(n, f"p{n}@x.io") for n in range(201)])
    assert delivered.refused == [] and len(delivered.assigned) == 201
    assert [len(body["records"]) for _, _, body in fake.collection_requests] == [200, 1]
    by_email = {r["Email"]: r["Id"] for r in live(fake).values()}
    assert all(delivered.assigned[n] == by_email[f"p{n}@x.io"] for n in range(201))


def test_only_the_records_salesforce_fails_are_refused(
    org: tuple[FakeSalesforce, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = org
    gone = fake.upsert(LastName="Gone", Email="gone@x.io")["Id"]
    fake.delete(gone)
    events = [
        named(1, "ada@x.io"),
        change(2, event="e1", email="nolastname@x.io", attributes={"FirstName": (None, "B")}),
        named(3, "not-an-email"),
        change(4, event="e1", record=gone, attributes={"FirstName": (None, "G")}),
        named(5, "eve@x.io"),
    ]
    delivered = deliver(settings(server, monkeypatch), events)
    refused = {r.change.event.profile_id: r for r in delivered.refused}
    assert sorted(refused) == [2, 3, 4]
    assert "REQUIRED_FIELD_MISSING" in refused[2].answer
    assert "INVALID_EMAIL_ADDRESS" in refused[3].answer
    assert "ENTITY_IS_DELETED" in refused[4].answer
    assert {r.status for r in refused.values()} == {400}
    assert sorted(delivered.assigned) == [1, 5]
    assert sorted(r["Email"] for r in live(fake).values()) == ["ada@x.io", "eve@x.io"]


def test_a_malformed_request_refuses_its_changes(
    org: tuple[FakeSalesforce, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = org
    events = [named(1, "ada@x.io", attributes={"Shoe_Size__c": (None, 44)}), named(2, "b@x.io")]
    delivered = deliver(settings(server, monkeypatch), events)
    assert [(r.change.event.profile_id, r.status) for r in delivered.refused] == [
        (1, 400),
        (2, 400),
    ]
    assert "INVALID_FIELD" in delivered.refused[0].answer and fake.records == {}


def test_sending_the_same_chunk_twice_leaves_the_same_records(
    org: tuple[FakeSalesforce, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = org
    events = [named(1, "ada@x.io"), named(2, "bob@x.io", attributes={"Phone": (None, "1")})]
    destination = settings(server, monkeypatch)
    first = deliver(destination, events)
    state = {i: {k: v for k, v in r.items() if "Mod" not in k} for i, r in fake.records.items()}
    again = deliver(destination, events)
    assert again.assigned == first.assigned
    after = {i: {k: v for k, v in r.items() if "Mod" not in k} for i, r in fake.records.items()}
    assert after == state


def test_change_events_of_these_writes_name_the_client(
    org: tuple[FakeSalesforce, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = org
    fake.upsert(LastName="Ui", Email="ui@x.io")  # someone else's write
    record = deliver(
        settings(server, monkeypatch, client_name="crmsync-prod"), [named(1, "a@x.io")]
    )
    origins = [e["ChangeEventHeader"]["changeOrigin"] for e in fake.change_events]
    assert origins == [
        "com/salesforce/api/rest/62.0",
        "com/salesforce/api/rest/62.0;client=crmsync-prod",
    ]
    assert [made_by(o, "crmsync-prod") for o in origins] == [False, True]
    assert fake.change_events[-1]["ChangeEventHeader"]["recordIds"] == [record.assigned[1]]


def test_throttling_is_waited_out(
    org: tuple[FakeSalesforce, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = org
    server.faults.retry_after_seconds = 1
    # 429 with Retry-After from the fault injector, then the org's API limit (403).
    server.faults.throttle_response = None
    server.faults.script(429)
    # A session id as the token: the faults below are the API's, not the token endpoint's.
    monkeypatch.setenv("SALESFORCE_SESSION", fake.issue_token())
    destination = settings(
        server,
        monkeypatch,
        oauth=None,
        api={"max_attempts": 4, "token": {"env": "SALESFORCE_SESSION"}},
    )
    started = time.monotonic()
    assert deliver(destination, [named(1, "ada@x.io")]).refused == []
    assert time.monotonic() - started >= 1.0
    server.faults.throttle_response = fake.throttle_response
    server.faults.script(429)  # answered as 403 REQUEST_LIMIT_EXCEEDED
    assert deliver(destination, [named(2, "bob@x.io")]).refused == []
    assert server.statuses[403] == 1 and len(live(fake)) == 2


def test_an_expired_session_is_renewed_and_refused_credentials_are_an_outage(
    org: tuple[FakeSalesforce, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = org

    destination = settings(server, monkeypatch)
    chunk = shaped([named(1, "ada@x.io")], destination)
    records = SalesforceRecords("salesforce-out", destination)
    [_, again] = send_each(records, [chunk, chunk], between=fake.expire_sessions)
    assert again.refused == []
    assert fake.token_requests == 2

    monkeypatch.setenv("SALESFORCE_WRONG_SECRET", "nope")
    wrong = settings(
        server,
        monkeypatch,
        oauth={"client_id": CLIENT_ID, "client_secret": {"env": "SALESFORCE_WRONG_SECRET"}},
    )
    with pytest.raises(ApiUnavailable, match="credentials refused"):
        deliver(wrong, [named(2, "bob@x.io")])
    monkeypatch.setenv("SALESFORCE_STALE_TOKEN", "00D!stale")
    static = settings(
        server, monkeypatch, oauth=None, api={"token": {"env": "SALESFORCE_STALE_TOKEN"}}
    )
    with pytest.raises(ApiUnavailable, match="credentials refused"):
        deliver(static, [named(3, "cy@x.io")])
    assert len(live(fake)) == 1


def test_an_erased_profile_is_deleted_by_id_or_refused_without_one(
    org: tuple[FakeSalesforce, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = org
    ada = fake.upsert(LastName="Ada", Email="ada@x.io")["Id"]
    events = [
        change(1, event="e1", record=ada, attributes={"FirstName": (None, "Ada")}),
        change(1, event="e2", record=ada, kind=ERASED),
        change(2, event="e2", email="bob@x.io", kind=ERASED),
    ]
    delivered = deliver(settings(server, monkeypatch), events, times=2)  # again: already deleted
    assert [(r.change.event.profile_id, r.status) for r in delivered.refused] == [(2, None)]
    assert fake.records[ada]["IsDeleted"] is True
    assert [(m, body) for m, _, body in fake.collection_requests] == [
        ("DELETE", [ada]),
        ("DELETE", [ada]),
    ]
    assert fake.change_events[-1]["ChangeEventHeader"]["changeType"] == "DELETE"


def test_a_custom_external_id_holds_the_profile_id(
    org: tuple[FakeSalesforce, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = org
    destination = settings(
        server, monkeypatch, external_id_field="Crmsync_Id__c", external_id_value="profile_id"
    )
    delivered = deliver(
        destination,
        [named(7, "ada@x.io"), change(8, event="e1", attributes={"LastName": (None, "X")})],
    )
    assert delivered.refused == []
    assert fake.collection_requests[0][1] == f"{COLLECTIONS}/Contact/Crmsync_Id__c"
    assert sorted(r["Crmsync_Id__c"] for r in live(fake).values()) == ["7", "8"]


def test_settings_catch_what_salesforce_would_refuse(
    org: tuple[FakeSalesforce, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake, server = org
    cases = [
        ({"batch_size": 201}, "less than or equal to 200"),
        ({"api_version": "45.0"}, "46.0 or later"),
        ({"client_name": "crm sync"}, "pattern"),
        ({"sobject": "Contact__c.X"}, "sObject API name"),
        ({"oauth": None}, "needs 'oauth'"),
        ({"api": {"base_url": f"{server.url}/services/data"}}, "host only"),
    ]
    for values, problem in cases:
        with pytest.raises(pydantic.ValidationError, match=problem):
            settings(server, monkeypatch, **values)
