"""Pausing a source on the real broker: its changes are answered and queue durably,
survive kill -9 of the mapper and a restart of ingest, and are applied in the order
they arrived once it is resumed."""

from __future__ import annotations

import pytest

from services.core.codecs import load_contracts
from tests.support.broker_fixtures import ReadAll
from tests.support.polling import wait_for
from tests.support.services import Stack, held_changes
from tests.support.store import attribute
from tests.support.webhooks import contact, post_webhook

pytestmark = pytest.mark.integration

CONTRACTS = load_contracts()


def test_a_paused_source_queues_its_changes_and_applies_them_in_order_on_resume(
    stack: Stack, read_topic: ReadAll
) -> None:
    stack.start()
    url = stack["ingest"].url
    assert post_webhook(url, contact("p1", first_name="v0", updated_at="2026-12-01T09:00:00Z"))[0]
    assert wait_for(lambda: attribute(stack.db_path, record_id="p1", name="first_name") == '"v0"')

    paused = stack.cli("source", "pause", "demo")
    assert paused.returncode == 0, paused.stderr
    assert "demo paused" in paused.stdout
    assert stack["ingest"].admin("POST", "/sources/demo/pause")[0] == 409

    # Answered as usual while paused, and held by the mapper.
    for minute, name in ((1, "v1"), (2, "v2"), (3, "v3")):
        updated = f"2026-12-01T09:0{minute}:00Z"
        status, _, body = post_webhook(url, contact("p1", first_name=name, updated_at=updated))
        assert (status, body) == (200, {"accepted": 1})
    assert post_webhook(url, contact("p2", first_name="new"))[0] == 200
    assert wait_for(lambda: held_changes(stack) == 4)
    assert attribute(stack.db_path, record_id="p1", name="first_name") == '"v0"'
    assert attribute(stack.db_path, record_id="p2", name="email") is None

    # Durable: the mapper killed, ingest restarted; both come back still paused.
    stack["mapper"].kill()
    stack["ingest"].stop()
    stack.start("mapper", "ingest")
    assert wait_for(lambda: held_changes(stack) == 4)
    code, status_body = stack["ingest"].admin("GET", "/status")
    assert code == 200
    assert status_body["sources"]["demo"]["paused"]["pause_id"].startswith("pause-demo-")
    shown = stack.cli("status")
    assert "paused since" in shown.stdout, shown.stderr

    resumed = stack.cli("source", "resume", "demo")
    assert resumed.returncode == 0, resumed.stderr
    assert wait_for(lambda: attribute(stack.db_path, record_id="p1", name="first_name") == '"v3"')
    assert wait_for(lambda: attribute(stack.db_path, record_id="p2", name="first_name") == '"new"')
    assert wait_for(lambda: held_changes(stack) == 0)
    assert stack["ingest"].admin("POST", "/sources/demo/resume")[0] == 409

    # In the order they arrived: each audited change moved first_name one step on.
    audits = [
        CONTRACTS.audit_event.decode(m.value() or b"")
        for m in read_topic(stack.topic("audit"), count=6, timeout_s=15)
    ]
    steps = [
        (c.old_value, c.new_value)
        for a in audits
        if a.record_id == "p1"
        for c in a.changes
        if c.field == "first_name"
    ]
    assert steps == [(None, "v0"), ("v0", "v1"), ("v1", "v2"), ("v2", "v3")]
