"""The HubSpot connector for real: a real ingest process, the real broker, the fake HubSpot.

Webhook batches are built and signed by the fake exactly as HubSpot sends them, for the
public URL ingest is configured with (as behind a proxy); polls and full syncs page
through the fake's search and list endpoints with HubSpot's rate limits switched on.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.core.codecs import load_contracts
from services.core.contracts import ContactChange, ControlKind, Operation, Origin
from tests.fakes.hubspot import (
    CLIENT_SECRET,
    TOKEN,
    FakeHubSpot,
    millis,
    ten_secondly_throttle,
    webhook_request,
)
from tests.fakes.server import FakeServer, Faults, ServerThread
from tests.support.broker_fixtures import ReadAll
from tests.support.polling import wait_for
from tests.support.services import Stack
from tests.support.webhooks import post_webhook

pytestmark = pytest.mark.integration

CONTRACTS = load_contracts()
PUBLIC_BASE_URL = "https://crmsync.example.com"
WEBHOOK_URL = f"{PUBLIC_BASE_URL}/webhooks/hubspot"
SECRET_ENV = "CRMSYNC_TEST_HUBSPOT_CLIENT_SECRET"
TOKEN_ENV = "CRMSYNC_TEST_HUBSPOT_TOKEN"


@pytest.fixture
def crm() -> FakeHubSpot:
    return FakeHubSpot()


@pytest.fixture
def crm_server(crm: FakeHubSpot) -> Iterator[FakeServer]:
    faults = Faults(seed=5, throttle_response=ten_secondly_throttle)
    with ServerThread(FakeServer(crm.app(), faults)) as server:
        yield server


def hubspot_stack(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    api_url: str | None = None,
    poll: dict[str, Any] | None = None,
) -> Stack:
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    source: dict[str, Any] = {
        "kind": "hubspot",
        "webhooks": {"client_secret": {"env": SECRET_ENV}},
        "mapping": {"email": "email", "firstname": "first_name"},
    }
    if api_url is not None:
        source["api"] = {
            "base_url": api_url,
            "token": {"env": TOKEN_ENV},
            "backoff_initial_seconds": 0.05,
            "backoff_max_seconds": 0.5,
            "max_attempts": 30,
        }
    if poll is not None:
        source["poll"] = poll
    stack = Stack(
        bootstrap=kafka_bootstrap, workdir=tmp_path / "stack", sources={"hubspot": source}
    )
    stack.config["services"]["ingest"]["public_base_url"] = PUBLIC_BASE_URL
    stack.write_config()
    return stack


def decoded(messages: list[Any]) -> list[ContactChange]:
    return [CONTRACTS.contact_change.decode(m.value() or b"") for m in messages]


def post(stack: Stack, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    status, _, answer = post_webhook(
        stack["ingest"].url, body, source="hubspot", token=None, headers=headers
    )
    return status, answer


def test_signed_batches_are_accepted_and_bad_ones_refused(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_topic: ReadAll
) -> None:
    crm = FakeHubSpot()
    ada = crm.upsert(email="ada@example.com", firstname="Ada")["id"]
    bob = crm.upsert(email="bob@example.com", firstname="Bob")["id"]
    gone = crm.upsert(email="gone@example.com")["id"]
    crm.upsert(ada, firstname="Ada L.")
    crm.delete(gone)
    crm.merge(ada, bob)
    events = crm.take_events()
    stack = hubspot_stack(kafka_bootstrap, tmp_path, monkeypatch)
    try:
        stack.start("ingest")
        # Step 1: a v3-signed delivery is taken whole.
        body, headers = webhook_request(events, url=WEBHOOK_URL)
        assert post(stack, body, headers) == (200, {"accepted": len(events) + 1})
        # Step 2: refusals, none of which reaches the changes topic.
        forged = webhook_request(events, url=WEBHOOK_URL, secret="someone-else")
        expired = webhook_request(
            events, url=WEBHOOK_URL, timestamp_ms=millis(datetime.now(UTC)) - 10 * 60_000
        )
        unsigned_v2 = webhook_request(events, url=WEBHOOK_URL, version="v2")
        assert [post(stack, *request)[0] for request in (forged, expired, unsigned_v2)] == [401] * 3
        assert post(stack, *forged)[1] == {"error": "invalid signature in X-HubSpot-Signature-v3"}
        assert post(stack, *expired)[1]["error"].startswith("timestamp outside the allowed window")
        broken = [{k: v for k, v in events[0].items() if k != "objectId"}]
        raw, signed_headers = webhook_request(broken, url=WEBHOOK_URL)
        assert post(stack, raw, signed_headers) == (
            400,
            {"error": "body[0].objectId: missing or not an id", "field": "body[0].objectId"},
        )
        expected = len(events) + 1
        changes = decoded(read_topic(stack.topic("changes"), count=expected, timeout_s=20))
        # Nothing of the refused requests follows them.
        assert len(read_topic(stack.topic("changes"), count=expected + 1, timeout_s=3)) == expected
        [rejected] = read_topic(stack.topic("rejected"), count=1)
    finally:
        stack.stop()
    assert len(changes) == len(events) + 1
    kept = CONTRACTS.rejected_event.decode(rejected.value() or b"")
    assert kept.value == raw
    assert kept.reason == "body[0].objectId: missing or not an id"
    assert {c.event_id for c in changes} >= {str(e["eventId"]) for e in events}
    assert all(c.origin is Origin.WEBHOOK for c in changes)
    firstnames = [
        c.fields["firstname"] for c in changes if c.record_id == ada and "firstname" in c.fields
    ]
    assert firstnames == ["Ada", "Ada L."]
    deletes = {c.record_id for c in changes if c.operation is Operation.DELETE}
    assert deletes == {gone, bob}


def test_a_poll_pages_through_hubspot_under_its_rate_limits(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    crm: FakeHubSpot,
    crm_server: FakeServer,
    read_topic: ReadAll,
) -> None:
    ids = crm.seed(300)
    # More records in one millisecond than a page holds: paged by id, none lost.
    ids += crm.seed(150, modified_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    crm_server.faults.max_requests_per_second = 2
    stack = hubspot_stack(
        kafka_bootstrap,
        tmp_path,
        monkeypatch,
        api_url=crm_server.url,
        poll={"interval_seconds": 30, "start_from": "2000-01-01T00:00:00Z", "page_size": 100},
    )
    try:
        stack.start("ingest")
        changes = decoded(read_topic(stack.topic("changes"), count=len(ids), timeout_s=60))
        poll = wait_for(
            lambda: stack["ingest"].admin("GET", "/status")[1]["sources"]["hubspot"]["poll"][
                "last_success_at"
            ],
            timeout_s=30,
        )
        assert poll
    finally:
        stack.stop()
    assert sorted((c.record_id for c in changes), key=int) == sorted(ids, key=int)
    assert {c.origin for c in changes} == {Origin.POLL}
    assert crm_server.statuses[429] > 0, "the fake never throttled the poll"
    assert all("after" not in body for body in crm.search_bodies)


def test_a_full_sync_through_the_admin_api_copies_every_contact(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    crm: FakeHubSpot,
    crm_server: FakeServer,
    read_topic: ReadAll,
) -> None:
    ids = crm.seed(330)
    for record_id in ids[:3]:
        crm.delete(record_id)
    live = ids[3:]
    stack = hubspot_stack(kafka_bootstrap, tmp_path, monkeypatch, api_url=crm_server.url)
    try:
        stack.start("ingest")
        code, started = stack["ingest"].admin("POST", "/fullsync/hubspot")
        assert code == 202

        def ended() -> dict[str, Any] | None:
            code, body = stack["ingest"].admin("GET", "/fullsync/hubspot")
            return body if code == 200 and body["status"] != "RUNNING" else None

        status = wait_for(ended, timeout_s=60, interval_s=0.3)
        records = decoded(read_topic(stack.topic("fullsync"), count=len(live), timeout_s=30))
        barrier = [
            CONTRACTS.sync_control.decode(m.value() or b"")
            for m in read_topic(stack.topic("barrier"), count=2, timeout_s=30)
        ]
    finally:
        stack.stop()
    assert status is not None, "the full sync did not end"
    assert (status["status"], status["records_done"], status["records_total"]) == (
        "COMPLETED",
        len(live),
        len(live),
    )
    assert [c.kind for c in barrier] == [ControlKind.STARTED, ControlKind.COMPLETED]
    assert sorted((c.record_id for c in records), key=int) == live
    assert {(c.origin, c.sync_id) for c in records} == {(Origin.FULL_SYNC, started["sync_id"])}
    assert all(
        c.fields["email"] == crm.contacts[c.record_id]["properties"]["email"] for c in records
    )
