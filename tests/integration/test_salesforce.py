"""Salesforce for real: a running ingest, the real broker, the fake Salesforce org.

Outbound messages and a relay's change events built by the fake are posted to ingest
the way Salesforce and the relay would; a poll and a full sync page through the fake
query API while it answers REQUEST_LIMIT_EXCEEDED and its sessions expire.
"""

from __future__ import annotations

import collections
import json
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.core.codecs import load_contracts
from services.core.contracts import ControlKind, Operation, Origin
from tests.fakes.salesforce import (
    CLIENT_ID,
    CLIENT_SECRET,
    HOOK_TOKEN,
    RELAY_SECRET,
    FakeSalesforce,
    salesforce_id,
)
from tests.fakes.server import FakeServer, Faults, ServerThread
from tests.support.broker_fixtures import ReadAll
from tests.support.polling import wait_for
from tests.support.services import Stack

pytestmark = pytest.mark.integration

CONTRACTS = load_contracts()
HOOK_TOKEN_ENV = "CRMSYNC_SALESFORCE_HOOK_TOKEN"
RELAY_ENV = "CRMSYNC_SALESFORCE_RELAY_SECRET"
SECRET_ENV = "CRMSYNC_SALESFORCE_CLIENT_SECRET"
ACK_PATH = (
    "{http://schemas.xmlsoap.org/soap/envelope/}Body/"
    "{http://soap.sforce.com/2005/09/outbound}notificationsResponse/"
    "{http://soap.sforce.com/2005/09/outbound}Ack"
)


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    # ServiceProcess copies os.environ into the services it starts.
    monkeypatch.setenv(HOOK_TOKEN_ENV, HOOK_TOKEN)
    monkeypatch.setenv(RELAY_ENV, RELAY_SECRET)
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)


def salesforce_stack(kafka_bootstrap: str, tmp_path: Path, **source: Any) -> Stack:
    settings: dict[str, Any] = {
        "kind": "salesforce",
        "mapping": {"Email": "email", "FirstName": "first_name"},
        **source,
    }
    return Stack(bootstrap=kafka_bootstrap, workdir=tmp_path / "stack", sources={"sf": settings})


def post(
    stack: Stack, body: bytes, headers: dict[str, str], query: str = ""
) -> tuple[int, str, bytes]:
    request = urllib.request.Request(
        f"{stack['ingest'].url}/webhooks/sf{query}", data=body, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def acknowledged(answer: tuple[int, str, bytes]) -> bool:
    status, content_type, body = answer
    ack = ET.fromstring(body).find(ACK_PATH) if status == 200 else None  # noqa: S314
    return content_type.startswith("text/xml") and ack is not None and ack.text == "true"


def test_outbound_messages_and_change_events_are_taken_refused_and_kept(
    kafka_bootstrap: str, tmp_path: Path, read_topic: ReadAll
) -> None:
    org = FakeSalesforce()
    stack = salesforce_stack(
        kafka_bootstrap,
        tmp_path,
        outbound_messages={
            "organization_id": org.organization_id,
            "token": {"env": HOOK_TOKEN_ENV},
        },
        change_events={"auth": {"kind": "standard_webhooks", "secret": {"env": RELAY_ENV}}},
    )
    ada = org.upsert(FirstName="Ada", LastName="Lovelace", Email="ada@example.com")["Id"]
    grace = org.upsert(FirstName="Grace", LastName="Hopper", Email="grace@example.com")["Id"]
    org.upsert(ada, FirstName="Augusta")
    token = f"?token={HOOK_TOKEN}"
    try:
        stack.start("ingest")
        message, soap = org.outbound_message()
        assert acknowledged(post(stack, message, soap, token))
        # Salesforce redelivers a message it saw no acknowledgement for: same ids.
        assert acknowledged(post(stack, message, soap, token))

        other = org.outbound_message(organization_id=salesforce_id("00D", 9999))[0]
        assert post(stack, other, soap, token)[0] == 401
        assert post(stack, message, soap)[0] == 401
        assert post(stack, message, soap, "?token=guess")[0] == 401

        broken = message.replace(b"<sf:LastModifiedDate>2", b"<sf:LastModifiedDate>X", 1)
        status, _type, answer = post(stack, broken, soap, token)
        assert status == 400
        assert (
            json.loads(answer)["field"] == "notifications.Notification[0].sObject.LastModifiedDate"
        )

        events, relay = org.relay_request(org.change_events)
        assert post(stack, events, relay)[:3:2] == (200, b'{"accepted": 3}')
        forged = {**relay, "webhook-signature": relay["webhook-signature"][:-4] + "AAA="}
        assert post(stack, events, forged)[0] == 401
        stale, stale_headers = org.relay_request(org.change_events, timestamp=1_000_000_000)
        assert post(stack, stale, stale_headers)[0] == 401
        gap, gap_headers = org.relay_request([org.gap_event([grace])])
        status, _type, answer = post(stack, gap, gap_headers)
        assert status == 400 and "full sync" in json.loads(answer)["error"]

        messages = read_topic(stack.topic("changes"), count=9, timeout_s=30)
        kept = read_topic(stack.topic("rejected"), count=2, timeout_s=30)
    finally:
        stack.stop()
    changes = [CONTRACTS.contact_change.decode(m.value() or b"") for m in messages]
    assert {c.origin for c in changes} == {Origin.WEBHOOK}
    assert all(c.operation is Operation.UPSERT for c in changes)
    # Partitions keep each record's order, not the order across records.
    pushed = [c for c in changes if c.event_id.startswith("04l")]
    assert collections.Counter(c.event_id for c in pushed) == {
        n.id: 2 for n in org.notifications
    }, "a redelivered notification keeps its id"
    assert {c.fields["FirstName"] for c in pushed if c.record_id == ada} == {"Augusta"}
    captured = [c for c in changes if not c.event_id.startswith("04l")]
    assert sorted(c.record_id for c in captured) == sorted([ada, ada, grace])
    first, second = [c for c in captured if c.record_id == ada]
    assert second.fields["FirstName"] == "Augusta"
    assert (first.source_modified_at, first.sequence) < (second.source_modified_at, second.sequence)
    rejected = [CONTRACTS.rejected_event.decode(m.value() or b"") for m in kept]
    assert [r.value for r in rejected] == [broken, gap]
    assert rejected[0].reason.startswith("notifications.Notification[0].sObject.LastModifiedDate")


@pytest.fixture
def org() -> FakeSalesforce:
    # Salesforce may return smaller batches than asked for: 100 records each here.
    return FakeSalesforce(batch_size=100)


@pytest.fixture
def api_server(org: FakeSalesforce) -> Iterator[FakeServer]:
    faults = Faults(seed=7, throttle_response=org.throttle_response)
    with ServerThread(FakeServer(org.app(), faults)) as server:
        yield server


@pytest.fixture
def login_server(org: FakeSalesforce) -> Iterator[FakeServer]:
    with ServerThread(FakeServer(org.login_app())) as server:
        yield server


def wait_sync_end(stack: Stack, timeout_s: float = 60) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        code, body = stack["ingest"].admin("GET", "/fullsync/sf")
        return body if code == 200 and body["status"] != "RUNNING" else None

    result = wait_for(ended, timeout_s=timeout_s, interval_s=0.3)
    assert result, "the full sync did not end"
    return result


def test_a_poll_and_a_full_sync_page_through_limits_and_expired_sessions(
    kafka_bootstrap: str,
    tmp_path: Path,
    org: FakeSalesforce,
    api_server: FakeServer,
    login_server: FakeServer,
    read_topic: ReadAll,
) -> None:
    ids = org.seed(450)
    org.delete(ids[0])
    api_server.faults.max_requests_per_second = 4
    stack = salesforce_stack(
        kafka_bootstrap,
        tmp_path,
        api={
            "base_url": api_server.url,
            "max_requests_per_second": 40,
            "backoff_initial_seconds": 0.05,
            "backoff_max_seconds": 0.5,
            "max_attempts": 30,
        },
        oauth={
            "client_id": CLIENT_ID,
            "client_secret": {"env": SECRET_ENV},
            "token_url": f"{login_server.url}/services/oauth2/token",
        },
        poll={"interval_seconds": 5, "start_from": "2000-01-01T00:00:00Z"},
        batch_size=200,
    )
    try:
        stack.start("ingest")
        polled = read_topic(stack.topic("changes"), count=450, timeout_s=60)
        org.expire_sessions()
        code, started = stack["ingest"].admin("POST", "/fullsync/sf")
        assert code == 202
        status = wait_sync_end(stack)
        synced = read_topic(stack.topic("fullsync"), count=450, timeout_s=30)
        barrier = read_topic(stack.topic("barrier"), count=2, timeout_s=30)
    finally:
        stack.stop()
    polled_changes = [CONTRACTS.contact_change.decode(m.value() or b"") for m in polled]
    assert {c.record_id for c in polled_changes} == set(ids)
    assert {c.origin for c in polled_changes} == {Origin.POLL}
    deletions = [c.record_id for c in polled_changes if c.operation is Operation.DELETE]
    assert deletions == [ids[0]]
    assert api_server.statuses[403] > 0, "the fake never answered REQUEST_LIMIT_EXCEEDED"
    assert org.token_requests >= 2, "the expired session was not renewed"
    assert status["status"] == "COMPLETED"
    assert status["records_done"] == status["records_total"] == 450
    synced_changes = [CONTRACTS.contact_change.decode(m.value() or b"") for m in synced]
    assert {c.record_id for c in synced_changes} == set(ids)
    assert {c.sync_id for c in synced_changes} == {started["sync_id"]}
    kinds = [CONTRACTS.sync_control.decode(m.value() or b"").kind for m in barrier]
    assert kinds == [ControlKind.STARTED, ControlKind.COMPLETED]
