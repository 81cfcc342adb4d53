"""Logs carry no email addresses and no secrets."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from services.core.logs import (
    JsonFormatter,
    configure_logging,
    email_tag,
    remember_secret,
    scrub,
)

pytestmark = pytest.mark.unit


def test_emails_become_stable_tags() -> None:
    text = scrub("matched Ada@Example.com and bob@corp.example.org")
    assert "@" not in text
    assert email_tag("ada@example.com") in text
    assert email_tag("ada@example.com") == email_tag(" ADA@example.com ")


def test_salt_changes_the_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    unsalted = email_tag("ada@example.com")
    monkeypatch.setenv("CRMSYNC_PII_SALT", "pepper")
    assert email_tag("ada@example.com") != unsalted


def test_remembered_secrets_are_masked() -> None:
    remember_secret("tok-7f3a9c")
    assert scrub("Authorization: Bearer tok-7f3a9c") == "Authorization: Bearer ***"


def test_json_formatter_scrubs_message_and_traceback() -> None:
    formatter = JsonFormatter(service="ingest")
    try:
        raise ValueError("bad email ada@example.com")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed for %s", ("ada@example.com",), None
        )
        import sys

        record.exc_info = sys.exc_info()
    entry = json.loads(formatter.format(record))
    assert entry["service"] == "ingest"
    assert "@" not in entry["msg"]
    assert "@" not in entry["exc"]


def test_a_worker_of_several_names_itself_in_every_line() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "assigned", (), None)
    assert json.loads(JsonFormatter(service="mapper", worker=1).format(record))["worker"] == 1
    assert "worker" not in json.loads(JsonFormatter(service="mapper").format(record))


def test_outbound_calls_leave_their_urls_out_of_the_logs() -> None:
    """httpx would log every request's URL, query string (and key) included."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    try:
        configure_logging(service="ingest", level="DEBUG")
        root.addHandler(Keep())
        transport = httpx.MockTransport(lambda request: httpx.Response(200, json={}))
        with httpx.Client(transport=transport) as http:
            assert http.get("https://crm.example/v1/contacts?api_key=s3cret").status_code == 200
        logging.getLogger("crmsync.check").info("still logging")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert seen == ["still logging"]
