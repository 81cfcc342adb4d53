"""The console on the real broker and store, through its JSON API (the pages show the
same data; tests/browser drives them in Chromium): a contact the mapper rejected is
found by its email, replayed after a config fix and then stored; its timeline shows
what was received, decided, written and sent; the CLI reads the same."""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.integration.test_outbound_webhook import Destinations
from tests.support.polling import wait_for
from tests.support.services import ADMIN_TOKEN, READ_TOKEN, Stack
from tests.support.store import attribute, query
from tests.support.webhooks import contact, post_webhook

pytestmark = pytest.mark.integration


def console(stack: Stack, method: str, path: str, token: str = READ_TOKEN) -> tuple[int, Any]:
    response = httpx.request(
        method,
        f"{stack['console'].url}/api{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    return response.status_code, response.json()


def with_phone_rule(stack: Stack, rule: dict[str, Any]) -> None:
    stack.config["sources"]["demo"]["mapping"]["phone"] = rule
    stack.config["sources"]["demo"]["default_region"] = "DK"
    stack.write_config()


def test_a_rejected_contact_is_found_by_email_replayed_after_a_fix_and_stored(
    stack: Stack,
) -> None:
    with_phone_rule(stack, {"attribute": "phone", "type": "phone"})
    stack.start("ingest", "mapper", "writer", "console")
    url = stack["ingest"].url
    # The CRM is answered 200; the mapper rejects the contact for its phone.
    bad = contact("r1", email="Rita@Example.com", first_name="Rita", phone="call me maybe")
    assert post_webhook(url, bad)[0] == 200
    assert post_webhook(url, contact("ok1", first_name="Olga"))[0] == 200
    assert wait_for(lambda: attribute(stack.db_path, record_id="ok1", name="first_name"))

    def rejected_rita() -> list[dict[str, Any]]:
        code, body = console(stack, "GET", "/rejected?email=rita@example.com")
        assert code == 200, body
        return list(body["rejections"])

    assert wait_for(lambda: len(rejected_rita()) == 1)
    [rejection] = rejected_rita()
    assert rejection["stage"] == "mapper"
    assert rejection["source"] == "demo"
    assert rejection["record_id"] == "r1"
    assert "phone" in rejection["reason"]
    assert attribute(stack.db_path, record_id="r1", name="first_name") is None

    # The read token sees, but cannot act.
    code, body = console(stack, "POST", f"/rejected/{rejection['id']}/replay")
    assert code == 403, body

    # Replaying before the fix rejects it again; after the fix (and a mapper restart
    # on the fixed config) the contact is stored.
    stack["mapper"].stop()
    with_phone_rule(stack, {"attribute": "phone", "type": "phone", "on_invalid": "drop_field"})
    stack.start("mapper")
    code, body = console(stack, "POST", f"/rejected/{rejection['id']}/replay", token=ADMIN_TOKEN)
    assert code == 202, body
    assert body["replayed"] == [rejection["id"]]
    assert wait_for(lambda: attribute(stack.db_path, record_id="r1", name="first_name") == '"Rita"')
    assert attribute(stack.db_path, record_id="r1", name="phone") is None
    code, shown = console(stack, "GET", f"/rejected/{rejection['id']}")
    assert code == 200
    assert shown["replayed_at"]

    # The timeline: received (webhook), rejected, received again (replay), decided
    # (phone dropped as invalid), written.
    def kinds() -> list[str]:
        code, body = console(stack, "GET", "/records?q=rita@example.com")
        assert code == 200, body
        return [e["kind"] for e in body["events"]]

    assert wait_for(lambda: "written" in kinds())
    code, record = console(stack, "GET", "/records?q=demo:r1")
    events = record["events"]
    assert [e["kind"] for e in events][:2] == ["received", "rejected"]
    replayed = [e for e in events if e["kind"] == "received"][-1]
    assert replayed["detail"]["origin"] == "REPLAY"
    decided = next(e for e in events if e["kind"] == "decided")
    assert [d["code"] for d in decided["detail"]["dropped"]] == ["invalid"]
    written = next(e for e in events if e["kind"] == "written")
    assert {"name": "first_name", "old": None, "new": "Rita"} in written["detail"]["attributes"]
    assert record["emails"] == ["rita@example.com"]
    # The dropped phone is counted on the source's page as an invalid value.
    code, page = console(stack, "GET", "/sources/demo")
    assert code == 200
    assert page["today"]["invalid"] == 1

    # The CLI reads the same through the console.
    listed = stack.cli("rejected", "list", "--source", "demo", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)["rejections"]] == [rejection["id"]]
    logs = stack.cli("logs", "rita@example.com", "--json")
    assert logs.returncode == 0, logs.stderr
    assert "written" in [e["kind"] for e in json.loads(logs.stdout)["events"]]
    missing = stack.cli("rejected", "show", "999999")
    assert missing.returncode == 1


def test_the_overview_shows_each_source_with_its_light_and_counts(stack: Stack) -> None:
    stack.start("ingest", "mapper", "writer", "console")
    assert post_webhook(stack["ingest"].url, contact("c1", first_name="Cy"))[0] == 200

    def demo() -> dict[str, Any]:
        code, body = console(stack, "GET", "/")
        assert code == 200, body
        return dict(next(s for s in body["sources"] if s["name"] == "demo"))

    assert wait_for(lambda: demo()["today"]["applied"] == 1)
    assert demo()["health"]["light"] == "healthy"
    assert demo()["lag"]["last_s"] >= 0
    assert demo()["today"]["received"] == 1

    assert stack["ingest"].admin("POST", "/sources/demo/pause")[0] == 202
    paused = demo()
    assert paused["health"]["light"] == "inactive"
    assert paused["health"]["rule"].startswith("paused since")

    code, _ = console(stack, "GET", "/", token="wrong")
    assert code == 401


def test_a_backfill_started_from_the_console_reaches_the_destination_and_shows_done(
    stack: Stack,
) -> None:
    with ExitStack() as exits:
        hooks = Destinations(stack, exits)
        receiver = hooks.add("hook")
        stack.start("ingest", "mapper", "writer", "console")
        for n in range(3):
            assert post_webhook(stack["ingest"].url, contact(f"b{n}"))[0] == 200
        assert wait_for(lambda: len(query(stack.db_path, "SELECT 1 FROM profiles")) == 3)
        # The outbound service starts later, so the live changes and the snapshots
        # both wait for it; the snapshots are what a backfill adds.
        code, body = console(stack, "POST", "/destinations/hook/push", token=ADMIN_TOKEN)
        assert code == 202, body

        def backfill() -> dict[str, Any]:
            code, page = console(stack, "GET", "/destinations/hook")
            assert code == 200, page
            return dict(page["backfill"])

        assert wait_for(lambda: backfill()["state"] == "done", timeout_s=60)
        assert backfill()["pushed"] == 3
        stack.start("outbound")
        assert wait_for(
            lambda: len([c for c in receiver.changes() if c["kind"] == "snapshot"]) == 3,
            timeout_s=60,
        ), stack["outbound"].log_tail()
