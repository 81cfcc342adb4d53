"""webCRM for real: a running ingest, the real broker, the fake webCRM REST API.

webCRM is pull-only (it documents no webhook request), so this covers its pull: polls
and a full sync paging through /Queries while the fake throttles with webCRM's 429 and
the access token expires in between; no webhook endpoint exists for the source.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.core.codecs import load_contracts
from services.core.contracts import ControlKind, Origin
from tests.fakes.server import FakeServer, Faults, ServerThread
from tests.fakes.webcrm import APP_TOKEN, FakeWebCrm
from tests.support.broker_fixtures import ReadAll
from tests.support.polling import wait_for
from tests.support.services import Stack
from tests.support.webhooks import post_webhook

pytestmark = pytest.mark.integration

CONTRACTS = load_contracts()
TOKEN_ENV = "CRMSYNC_WEBCRM_APP_TOKEN"


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    # ServiceProcess copies os.environ into the services it starts.
    monkeypatch.setenv(TOKEN_ENV, APP_TOKEN)


@pytest.fixture
def crm() -> FakeWebCrm:
    return FakeWebCrm()


@pytest.fixture
def crm_server(crm: FakeWebCrm) -> Iterator[FakeServer]:
    faults = Faults(seed=5, throttle_response=crm.throttle_response)
    with ServerThread(FakeServer(crm.app(), faults)) as server:
        yield server


def wait_sync_end(stack: Stack, timeout_s: float = 60) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        code, body = stack["ingest"].admin("GET", "/fullsync/wc")
        return body if code == 200 and body["status"] != "RUNNING" else None

    result = wait_for(ended, timeout_s=timeout_s, interval_s=0.3)
    assert result, "the full sync did not end"
    return result


def test_polls_and_a_full_sync_through_queries_with_throttling_and_token_expiry(
    kafka_bootstrap: str,
    tmp_path: Path,
    crm: FakeWebCrm,
    crm_server: FakeServer,
    read_topic: ReadAll,
) -> None:
    crm.seed(200)
    crm_server.faults.max_requests_per_second = 2
    source = {
        "kind": "webcrm",
        "api": {
            "base_url": crm_server.url,
            "token": {"env": TOKEN_ENV},
            "backoff_initial_seconds": 0.05,
            "backoff_max_seconds": 0.5,
            "max_attempts": 30,
        },
        "poll": {"interval_seconds": 5, "start_from": "2000-01-01T00:00:00Z", "page_size": 40},
        "mapping": {"PersonEmail": "email", "PersonFirstName": "first_name"},
    }
    stack = Stack(bootstrap=kafka_bootstrap, workdir=tmp_path / "stack", sources={"wc": source})
    try:
        stack.start("ingest")
        first = read_topic(stack.topic("changes"), count=200, timeout_s=60)
        # The access token dies; the next poll gets a 401, a new token, and the changes.
        crm.expire_tokens()
        for person_id in range(1, 11):
            crm.upsert(person_id, PersonFirstName="Changed")
        every = read_topic(stack.topic("changes"), count=210, timeout_s=60)
        code, started = stack["ingest"].admin("POST", "/fullsync/wc")
        assert code == 202
        status = wait_sync_end(stack)
        synced = read_topic(stack.topic("fullsync"), count=200, timeout_s=30)
        barrier = read_topic(stack.topic("barrier"), count=2, timeout_s=30)
        no_webhooks = post_webhook(stack["ingest"].url, {}, source="wc", token=None)
    finally:
        stack.stop()
    assert len(first) == 200
    changes = [CONTRACTS.contact_change.decode(m.value() or b"") for m in every]
    assert len(changes) == 210
    assert {c.origin for c in changes} == {Origin.POLL}
    later = changes[200:]
    assert {c.record_id for c in later} == {str(i) for i in range(1, 11)}
    assert {c.fields["PersonFirstName"] for c in later} == {"Changed"}
    assert all("PersonPassword" not in c.fields for c in changes)
    assert crm.logins >= 2, "the expired token was not replaced"
    assert crm_server.statuses[401] >= 1
    assert crm_server.statuses[429] > 0, "the fake never throttled"
    assert status["status"] == "COMPLETED"
    assert status["records_done"] == 200
    synced_changes = [CONTRACTS.contact_change.decode(m.value() or b"") for m in synced]
    assert {c.record_id for c in synced_changes} == {str(i) for i in crm.persons}
    assert {c.sync_id for c in synced_changes} == {started["sync_id"]}
    kinds = [CONTRACTS.sync_control.decode(m.value() or b"").kind for m in barrier]
    assert kinds == [ControlKind.STARTED, ControlKind.COMPLETED]
    assert no_webhooks[0] == 404
