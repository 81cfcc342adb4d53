"""The skeleton path for real: webhook -> Kafka -> mapper -> Kafka -> writer -> SQLite."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys

import pytest

from services.core.codecs import load_contracts
from tests.support.broker_fixtures import ReadAll
from tests.support.polling import wait_for
from tests.support.services import REPO_ROOT, Stack, http_get
from tests.support.store import attribute, query
from tests.support.webhooks import contact, post_webhook

pytestmark = pytest.mark.integration


def test_webhook_reaches_the_store_and_the_cli_shows_it(stack: Stack) -> None:
    stack.start()
    status, _, body = post_webhook(
        stack["ingest"].url,
        contact("1001", email="Ada@Example.com", first_name="Ada", ignored="x"),
    )
    assert (status, body) == (200, {"accepted": 1})

    assert wait_for(lambda: attribute(stack.db_path, record_id="1001", name="first_name"))
    result = subprocess.run(
        [
            *(sys.executable, "-m", "services.cli", "--config", str(stack.config_path)),
            *("profile", "get", "--email", "ada@example.com"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    profile = json.loads(result.stdout)
    assert profile["attributes"]["first_name"]["value"] == "Ada"
    assert profile["attributes"]["first_name"]["source"] == "demo"
    assert profile["attributes"]["email"]["value"] == "Ada@Example.com"
    assert "ignored" not in profile["attributes"]
    assert {"kind": "crm", "value": "demo:1001"} in profile["identities"]
    assert {"kind": "email", "value": "ada@example.com"} in profile["identities"]


def test_newer_version_wins_whatever_the_arrival_order(stack: Stack) -> None:
    stack.start()
    url = stack["ingest"].url
    newer = contact("7", first_name="New", updated_at="2026-11-23T10:00:00Z")
    older = contact("7", first_name="Old", updated_at="2026-11-23T09:00:00Z")
    assert post_webhook(url, newer)[0] == 200
    assert post_webhook(url, older)[0] == 200
    assert post_webhook(url, contact("marker"))[0] == 200
    assert wait_for(lambda: attribute(stack.db_path, record_id="marker", name="email"))
    assert attribute(stack.db_path, record_id="7", name="first_name") == '"New"'


def test_same_webhook_delivered_twice_changes_nothing(stack: Stack) -> None:
    stack.start()
    body = [contact(f"d{i}", first_name=f"F{i}") for i in range(20)]
    assert post_webhook(stack["ingest"].url, body)[0] == 200
    assert wait_for(lambda: len(query(stack.db_path, "SELECT 1 FROM profiles")) == 20)
    before = query(stack.db_path, "SELECT * FROM attributes ORDER BY profile_id, name")
    assert post_webhook(stack["ingest"].url, body)[0] == 200
    assert post_webhook(stack["ingest"].url, contact("marker"))[0] == 200
    assert wait_for(lambda: attribute(stack.db_path, record_id="marker", name="email"))
    after = query(
        stack.db_path,
        "SELECT a.* FROM attributes a JOIN identities i ON i.profile_id = a.profile_id "
        "WHERE i.kind = 'crm' AND i.value != 'demo:marker' ORDER BY a.profile_id, a.name",
    )
    assert after == before
    assert len(query(stack.db_path, "SELECT 1 FROM profiles")) == 21


def test_bad_payload_is_400_naming_the_field_and_kept_raw_in_rejected(
    stack: Stack, read_topic: ReadAll
) -> None:
    stack.start("ingest")
    raw = json.dumps([{"id": "ok", "updated_at": 1}, {"updated_at": 2}]).encode()
    status, _, body = post_webhook(stack["ingest"].url, raw)
    assert status == 400
    assert body == {"error": "body[1].id: missing or not an id", "field": "body[1].id"}
    [message] = read_topic(stack.topic("rejected"), count=1)
    rejected = load_contracts().rejected_event.decode(message.value() or b"")
    assert rejected.stage == "ingest"
    assert rejected.value == raw
    assert rejected.reason == "body[1].id: missing or not an id"
    assert rejected.attributes["path"] == "/webhooks/demo"
    # Nothing of the refused request reached the changes topic.
    assert read_topic(stack.topic("changes"), count=1, timeout_s=3) == []


@pytest.mark.parametrize(
    ("source", "token", "body", "status", "error"),
    [
        ("nope", "x", b"{}", 404, "unknown source 'nope'"),
        ("demo", None, b"{}", 401, "missing Authorization header"),
        ("demo", "wrong", b"{}", 401, "invalid bearer token"),
        ("demo", "test-token-5f2c", b"x" * (2 << 20), 413, "body larger than 1048576 bytes"),
    ],
)
def test_refusals_are_4xx_with_a_clear_error(
    stack: Stack, source: str, token: str | None, body: bytes, status: int, error: str
) -> None:
    stack.start("ingest")
    got_status, _, got = post_webhook(stack["ingest"].url, body, source=source, token=token)
    assert (got_status, got["error"]) == (status, error)


def test_every_service_serves_health_readiness_and_metrics(stack: Stack) -> None:
    stack.start()
    assert post_webhook(stack["ingest"].url, contact("m1"))[0] == 200
    assert wait_for(lambda: attribute(stack.db_path, record_id="m1", name="email"))
    for name in ("ingest", "mapper", "writer"):
        service = stack[name]
        assert http_get(f"{service.url}/healthz")[0] == 200
        assert http_get(f"{service.url}/readyz")[0] == 200
        status, metrics = http_get(f"{service.url}/metrics")
        assert status == 200
        assert b"crmsync_" in metrics
    assert (
        b'crmsync_events_received_total{origin="WEBHOOK",source="demo"} 1.0'
        in (http_get(f"{stack['ingest'].url}/metrics")[1])
    )
    assert (
        b'crmsync_records_written_total{source="demo"} 1.0'
        in (http_get(f"{stack['writer'].url}/metrics")[1])
    )


def lag_lines(service_url: str, group: str) -> dict[str, float]:
    """The consumer lag a service reports for ``group``, by "topic/partition"."""
    text = http_get(f"{service_url}/metrics")[1].decode()
    found: dict[str, float] = {}
    for labels, value in re.findall(r"crmsync_consumer_lag_messages\{([^}]*)\} (\S+)", text):
        named = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if named.get("group") == group:
            found[f"{named['topic']}/{named['partition']}"] = float(value)
    return found


def drained(service_url: str, group: str, wanted: set[str]) -> bool:
    lags = lag_lines(service_url, group)
    return wanted <= set(lags) and all(lags[k] == 0 for k in wanted)


def test_the_mapper_and_the_writer_report_their_lag_and_it_drains(stack: Stack) -> None:
    stack.start()
    body = [contact(f"lag{i}") for i in range(30)]
    assert post_webhook(stack["ingest"].url, body)[0] == 200
    assert wait_for(lambda: attribute(stack.db_path, record_id="lag29", name="email"))
    for service, group, topics in (
        ("mapper", "mapper", ("changes",)),
        ("writer", "writer", ("profile-updates",)),
    ):
        url, group_id = stack[service].url, f"{stack.prefix}{group}"
        wanted = {f"{stack.topic(t)}/{p}" for t in topics for p in range(3)}
        assert wait_for(functools.partial(drained, url, group_id, wanted), timeout_s=30), lag_lines(
            url, group_id
        )


def test_logs_carry_no_email_addresses_or_tokens(stack: Stack) -> None:
    stack.start()
    assert post_webhook(stack["ingest"].url, contact("p1", email="private.person@example.com"))[0]
    post_webhook(stack["ingest"].url, contact("p2"), token="wrong-token-value")
    assert wait_for(lambda: attribute(stack.db_path, record_id="p1", name="email"))
    stack.stop()
    for name in ("ingest", "mapper", "writer"):
        log = stack[name].log_path.read_text()
        assert "private.person@example.com" not in log
        assert "test-token-5f2c" not in log
