"""Polls and full syncs for real: ingest process, real broker, a fake REST CRM.

The generic REST connector drives the shared pull machinery here (poller, connector
state, full-sync barrier protocol, admin API); the vendor connectors' own tests
cover their API shapes.
"""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.core.codecs import load_contracts
from services.core.contracts import ControlKind, Origin
from tests.fakes.generic_rest import FakeRestCrm
from tests.fakes.server import FakeServer, Faults, ServerThread
from tests.support.broker_fixtures import ReadAll, end_offsets
from tests.support.polling import wait_for
from tests.support.services import Stack

pytestmark = pytest.mark.integration

CONTRACTS = load_contracts()


def rest_source(url: str, **overrides: Any) -> dict[str, Any]:
    source: dict[str, Any] = {
        "kind": "generic_rest",
        "api": {
            "base_url": url,
            "token": {"env": "CRMSYNC_REST_TOKEN"},
            "max_requests_per_second": 200,
            "backoff_initial_seconds": 0.05,
            "backoff_max_seconds": 0.5,
            "max_attempts": 20,
        },
        "poll": {"interval_seconds": 5, "start_from": "2000-01-01T00:00:00Z", "page_size": 50},
        "path": "/v1/contacts",
        "since_param": "updated_since",
        "paging": {"kind": "cursor"},
        "total_path": "total",
        "mapping": {"email": "email", "first_name": "first_name"},
    }
    source.update(overrides)
    return source


@pytest.fixture
def crm() -> FakeRestCrm:
    return FakeRestCrm()


@pytest.fixture
def crm_server(crm: FakeRestCrm) -> Iterator[FakeServer]:
    with ServerThread(FakeServer(crm.app(), Faults(seed=3))) as server:
        yield server


def rest_stack(kafka_bootstrap: str, tmp_path: Path, url: str, **overrides: Any) -> Stack:
    return Stack(
        bootstrap=kafka_bootstrap,
        workdir=tmp_path / "stack",
        sources={"rest": rest_source(url, **overrides)},
    )


def versions(messages: list[Any]) -> list[tuple[str, int]]:
    decoded = [CONTRACTS.contact_change.decode(m.value()) for m in messages]
    return [(c.record_id, int(c.source_modified_at.timestamp() * 1e6)) for c in decoded]


def test_poll_resumes_after_restart_with_no_gap_and_no_duplicate(
    kafka_bootstrap: str,
    tmp_path: Path,
    crm: FakeRestCrm,
    crm_server: FakeServer,
    read_topic: ReadAll,
) -> None:
    crm.seed(230)
    stack = rest_stack(kafka_bootstrap, tmp_path, crm_server.url)
    try:
        stack.start("ingest")
        first = read_topic(stack.topic("changes"), count=230, timeout_s=60)
        assert len(first) == 230
        assert stack["ingest"].stop() == 0

        for index in range(20):
            crm.upsert(f"new{index}", email=f"new{index}@example.com")
        for index in range(10):
            crm.upsert(f"c{index}", first_name="Changed")
        stack["ingest"].start()
        stack["ingest"].wait_ready()
        every = read_topic(stack.topic("changes"), count=261, timeout_s=60)
    finally:
        stack.stop()
    seen = versions(every)
    assert len(seen) == 260, "a change was published twice or is missing"
    assert len(set(seen)) == 260
    assert {record_id for record_id, _ in seen} == set(crm.records)
    assert all(CONTRACTS.contact_change.decode(m.value()).origin is Origin.POLL for m in every)


def test_poll_rides_out_rate_limits_and_server_errors(
    kafka_bootstrap: str,
    tmp_path: Path,
    crm: FakeRestCrm,
    crm_server: FakeServer,
    read_topic: ReadAll,
) -> None:
    crm.seed(300)
    crm_server.faults.max_requests_per_second = 5
    crm_server.faults.error_rate = 0.3
    stack = rest_stack(kafka_bootstrap, tmp_path, crm_server.url)
    try:
        stack.start("ingest")
        every = read_topic(stack.topic("changes"), count=300, timeout_s=120)
        assert len(set(versions(every))) == 300
        status = wait_for(
            lambda: stack["ingest"].admin("GET", "/status")[1]["sources"]["rest"]["poll"][
                "last_success_at"
            ],
            timeout_s=30,
        )
        assert status
    finally:
        stack.stop()
    assert crm_server.statuses[429] > 0
    assert sum(crm_server.statuses[s] for s in (500, 502, 503)) > 0


def test_poll_failures_are_counted_and_shown_without_crashing(
    kafka_bootstrap: str, tmp_path: Path, crm: FakeRestCrm, crm_server: FakeServer
) -> None:
    crm.seed(5)
    stack = rest_stack(
        kafka_bootstrap,
        tmp_path,
        crm_server.url,
        api={"base_url": crm_server.url, "token": {"env": "CRMSYNC_DEMO_TOKEN"}},
    )
    try:
        stack.start("ingest")
        poll = wait_for(
            lambda: (
                (p := stack["ingest"].admin("GET", "/status")[1]["sources"]["rest"]["poll"])[
                    "consecutive_failures"
                ]
                and p
            ),
            timeout_s=30,
        )
        assert poll["consecutive_failures"] >= 1
        assert "401" in poll["last_error"]
        assert stack["ingest"].process is not None and stack["ingest"].process.poll() is None
    finally:
        stack.stop()


def controls(read_topic: ReadAll, stack: Stack, count: int) -> list[Any]:
    return [
        CONTRACTS.sync_control.decode(m.value())
        for m in read_topic(stack.topic("barrier"), count=count, timeout_s=60)
    ]


def wait_sync_end(stack: Stack, timeout_s: float = 120) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        code, body = stack["ingest"].admin("GET", "/fullsync/rest")
        return body if code == 200 and body["status"] != "RUNNING" else None

    result = wait_for(ended, timeout_s=timeout_s, interval_s=0.3)
    assert result, "the full sync did not end"
    return result


def test_full_sync_copies_every_record_inside_the_barrier(
    kafka_bootstrap: str,
    tmp_path: Path,
    crm: FakeRestCrm,
    crm_server: FakeServer,
    read_topic: ReadAll,
) -> None:
    crm.seed(420)
    stack = rest_stack(kafka_bootstrap, tmp_path, crm_server.url, poll=None)
    try:
        stack.start("ingest")
        code, started = stack["ingest"].admin("POST", "/fullsync/rest")
        assert code == 202
        assert stack["ingest"].admin("POST", "/fullsync/rest")[0] in (202, 409)
        status = wait_sync_end(stack)
        records = read_topic(stack.topic("fullsync"), count=420, timeout_s=60)
        barrier = controls(read_topic, stack, 2)
    finally:
        stack.stop()
    assert status["status"] == "COMPLETED"
    assert status["records_done"] == 420
    assert status["records_total"] == 420
    assert [c.kind for c in barrier] == [ControlKind.STARTED, ControlKind.COMPLETED]
    assert {c.sync_id for c in barrier} == {started["sync_id"]}
    completed = barrier[1]
    assert completed.records_total == 420
    per_partition = collections.Counter(m.partition() for m in records)
    assert {p.partition: p.offset for p in completed.fullsync_end_offsets} == {
        p: max(m.offset() for m in records if m.partition() == p) + 1 for p in per_partition
    }
    changes = [CONTRACTS.contact_change.decode(m.value()) for m in records]
    assert {c.sync_id for c in changes} == {started["sync_id"]}
    assert {c.origin for c in changes} == {Origin.FULL_SYNC}
    assert len({c.record_id for c in changes}) == 420


def test_full_sync_cancel_writes_cancelled(
    kafka_bootstrap: str,
    tmp_path: Path,
    crm: FakeRestCrm,
    crm_server: FakeServer,
    read_topic: ReadAll,
) -> None:
    crm.seed(2000)
    crm_server.faults.delay_seconds = 0.2
    stack = rest_stack(kafka_bootstrap, tmp_path, crm_server.url, poll=None)
    try:
        stack.start("ingest")
        assert stack["ingest"].admin("POST", "/fullsync/rest")[0] == 202
        time.sleep(1.5)
        code, cancelled = stack["ingest"].admin("DELETE", "/fullsync/rest")
        assert code == 202
        barrier = controls(read_topic, stack, 2)
    finally:
        stack.stop()
    assert cancelled["status"] == "CANCELLED"
    assert 0 < cancelled["records_done"] < 2000
    assert [c.kind for c in barrier] == [ControlKind.STARTED, ControlKind.CANCELLED]


@pytest.mark.faults
def test_full_sync_resumes_after_ingest_is_killed(
    kafka_bootstrap: str,
    tmp_path: Path,
    crm: FakeRestCrm,
    crm_server: FakeServer,
    read_topic: ReadAll,
) -> None:
    crm.seed(1500)
    crm_server.faults.delay_seconds = 0.05
    stack = rest_stack(kafka_bootstrap, tmp_path, crm_server.url, poll=None)
    try:
        stack.start("ingest")
        assert stack["ingest"].admin("POST", "/fullsync/rest")[0] == 202
        assert wait_for(
            lambda: stack["ingest"].admin("GET", "/fullsync/rest")[1]["records_done"] >= 300,
            timeout_s=60,
        )
        stack["ingest"].signal(signal.SIGKILL)
        assert stack["ingest"].process is not None
        stack["ingest"].process.wait()
        stack["ingest"].start()
        stack["ingest"].wait_ready()
        status = wait_sync_end(stack)
        barrier = controls(read_topic, stack, 2)
        written = sum(end_offsets(kafka_bootstrap, stack.topic("fullsync")).values())
        records = read_topic(stack.topic("fullsync"), count=written, timeout_s=20)
    finally:
        stack.stop()
    assert status["status"] == "COMPLETED"
    assert [c.kind for c in barrier] == [ControlKind.STARTED, ControlKind.COMPLETED]
    assert len(records) == written >= 1500
    ids = {CONTRACTS.contact_change.decode(m.value()).record_id for m in records}
    assert len(ids) == 1500, "records missing after the resume"
