"""Pipedrive for real: a running ingest, the real broker, the fake Pipedrive.

Webhooks v2 requests built by the fake (HTTP Basic credentials, meta / data / previous)
are posted to ingest; polls and a full sync page through the fake persons API while it
throttles.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.core.codecs import load_contracts
from services.core.contracts import ControlKind, Operation, Origin
from tests.fakes.pipedrive import API_TOKEN, WEBHOOK_PASSWORD, WEBHOOK_USER, FakePipedrive
from tests.fakes.server import FakeServer, Faults, ServerThread
from tests.support.broker_fixtures import ReadAll
from tests.support.polling import wait_for
from tests.support.services import Stack
from tests.support.webhooks import post_webhook

pytestmark = pytest.mark.integration

CONTRACTS = load_contracts()
PASSWORD_ENV = "CRMSYNC_PIPEDRIVE_HOOK_PASSWORD"
TOKEN_ENV = "CRMSYNC_PIPEDRIVE_TOKEN"


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    # ServiceProcess copies os.environ into the services it starts.
    monkeypatch.setenv(PASSWORD_ENV, WEBHOOK_PASSWORD)
    monkeypatch.setenv(TOKEN_ENV, API_TOKEN)


@pytest.fixture
def crm() -> FakePipedrive:
    return FakePipedrive()


@pytest.fixture
def crm_server(crm: FakePipedrive) -> Iterator[FakeServer]:
    faults = Faults(seed=11, throttle_response=crm.throttle_response)
    with ServerThread(FakeServer(crm.app(), faults)) as server:
        yield server


def pipedrive_stack(kafka_bootstrap: str, tmp_path: Path, **source: Any) -> Stack:
    settings: dict[str, Any] = {
        "kind": "pipedrive",
        "mapping": {"primary_email": "email", "first_name": "first_name"},
        **source,
    }
    return Stack(bootstrap=kafka_bootstrap, workdir=tmp_path / "stack", sources={"pd": settings})


def post(stack: Stack, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    status, _headers, answer = post_webhook(
        stack["ingest"].url, body, source="pd", token=None, headers=headers
    )
    return status, answer


def test_webhooks_are_accepted_refused_and_kept_when_malformed(
    kafka_bootstrap: str, tmp_path: Path, crm: FakePipedrive, read_topic: ReadAll
) -> None:
    stack = pipedrive_stack(
        kafka_bootstrap,
        tmp_path,
        webhooks={"username": WEBHOOK_USER, "password": {"env": PASSWORD_ENV}},
    )
    crm.upsert(1, first_name="Ada", email="ada@example.com")
    crm.upsert(2, first_name="Grace", email="grace@example.com")
    crm.upsert(1, last_name="Lovelace")
    crm.delete(2)
    deal = {**crm.events[0], "meta": {**crm.events[0]["meta"], "entity": "deal"}}
    try:
        stack.start("ingest")
        for event in crm.events:
            assert post(stack, *crm.webhook(event)) == (200, {"accepted": 1})
        # Pipedrive retries a delivery it thinks failed: same event, next attempt.
        assert post(stack, *crm.webhook(crm.events[0], attempt=2)) == (200, {"accepted": 1})
        assert post(stack, *crm.webhook(deal)) == (200, {"accepted": 0})

        body, headers = crm.webhook(crm.events[0], password="guess")
        assert post(stack, body, headers) == (401, {"error": "invalid Basic credentials"})
        unsigned = {k: v for k, v in headers.items() if k != "Authorization"}
        assert post(stack, body, unsigned) == (401, {"error": "missing Authorization header"})

        v1 = json.dumps({"v": 1, "meta": {"v": 1, "action": "added"}, "current": {}}).encode()
        _body, good_headers = crm.webhook(crm.events[0])
        status, answer = post(stack, v1, good_headers)
        assert status == 400
        assert answer["field"] == "body.meta.version"

        messages = read_topic(stack.topic("changes"), count=5, timeout_s=30)
        [kept] = read_topic(stack.topic("rejected"), count=1, timeout_s=30)
    finally:
        stack.stop()
    changes = [CONTRACTS.contact_change.decode(m.value() or b"") for m in messages]
    assert [c.operation for c in changes].count(Operation.DELETE) == 1
    by_event: dict[str, list[Any]] = {}
    for change in changes:
        by_event.setdefault(change.event_id, []).append(change)
    assert set(by_event) == {e["meta"]["id"] for e in crm.events}
    assert len(by_event[crm.events[0]["meta"]["id"]]) == 2  # the retry, same event id
    first = by_event[crm.events[0]["meta"]["id"]][0]
    assert (first.record_id, first.fields["primary_email"]) == ("1", "ada@example.com")
    assert {c.origin for c in changes} == {Origin.WEBHOOK}
    rejected = CONTRACTS.rejected_event.decode(kept.value() or b"")
    assert rejected.value == v1
    assert rejected.reason.startswith("body.meta.version")


def wait_sync_end(stack: Stack, timeout_s: float = 60) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        code, body = stack["ingest"].admin("GET", "/fullsync/pd")
        return body if code == 200 and body["status"] != "RUNNING" else None

    result = wait_for(ended, timeout_s=timeout_s, interval_s=0.3)
    assert result, "the full sync did not end"
    return result


def test_polls_and_a_full_sync_page_through_the_throttling_persons_api(
    kafka_bootstrap: str,
    tmp_path: Path,
    crm: FakePipedrive,
    crm_server: FakeServer,
    read_topic: ReadAll,
) -> None:
    crm.seed(240)
    crm_server.faults.max_requests_per_second = 4
    stack = pipedrive_stack(
        kafka_bootstrap,
        tmp_path,
        api={
            "base_url": crm_server.url,
            "token": {"env": TOKEN_ENV},
            "max_requests_per_second": 40,
            "backoff_initial_seconds": 0.05,
            "backoff_max_seconds": 0.5,
            "max_attempts": 30,
        },
        poll={"interval_seconds": 5, "start_from": "2000-01-01T00:00:00Z", "page_size": 20},
    )
    try:
        stack.start("ingest")
        polled = read_topic(stack.topic("changes"), count=240, timeout_s=60)
        code, started = stack["ingest"].admin("POST", "/fullsync/pd")
        assert code == 202
        status = wait_sync_end(stack)
        synced = read_topic(stack.topic("fullsync"), count=240, timeout_s=30)
        barrier = read_topic(stack.topic("barrier"), count=2, timeout_s=30)
    finally:
        stack.stop()
    polled_changes = [CONTRACTS.contact_change.decode(m.value() or b"") for m in polled]
    assert {c.record_id for c in polled_changes} == {str(i) for i in crm.persons}
    assert {c.origin for c in polled_changes} == {Origin.POLL}
    assert crm_server.statuses[429] > 0, "the fake never throttled"
    assert status["status"] == "COMPLETED"
    assert status["records_done"] == 240
    synced_changes = [CONTRACTS.contact_change.decode(m.value() or b"") for m in synced]
    assert {c.record_id for c in synced_changes} == {str(i) for i in crm.persons}
    assert {c.sync_id for c in synced_changes} == {started["sync_id"]}
    kinds = [CONTRACTS.sync_control.decode(m.value() or b"").kind for m in barrier]
    assert kinds == [ControlKind.STARTED, ControlKind.COMPLETED]
