"""The console in a real browser (Debian's Chromium, driven by Playwright) against
the real broker and store: signing in, the overview and health lights following a
CRM that fails and recovers, a rejected contact found by its email and replayed
after a config fix, a source paused and resumed from its page, a test sync; the
failing CRM is told once to a Slack incoming webhook, and its recovery too.

With CRMSYNC_SCREENSHOTS=DIR the main pages are saved there as PNGs (how the
screenshots in docs/console/ are made).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.fakes.generic_rest import FakeRestCrm
from tests.fakes.server import FakeServer, Faults, ServerThread
from tests.fakes.slack import SlackWebhook
from tests.support.polling import wait_for
from tests.support.services import ADMIN_TOKEN, READ_TOKEN, Stack
from tests.support.store import attribute, query
from tests.support.webhooks import contact, post_webhook

pytestmark = pytest.mark.integration

SCREENSHOTS = os.environ.get("CRMSYNC_SCREENSHOTS")


def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def sign_in(page: Page, stack: Stack, token: str = ADMIN_TOKEN, path: str = "/") -> None:
    page.goto(f"{stack['console'].url}{path}")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{stack['console'].url}{path}")


def shown(page: Page, url: str, selector: str) -> str:
    """The text at ``selector`` on a fresh load of ``url``."""
    page.goto(url)
    return page.locator(selector).inner_text()


def count_shown(page: Page, url: str, selector: str) -> int:
    page.goto(url)
    return page.locator(selector).count()


def light_of(page: Page, stack: Stack, source: str) -> str:
    page.goto(f"{stack['console'].url}/")
    return str(page.locator(f'tr[data-source="{source}"] .light').get_attribute("data-light"))


@pytest.fixture
def crm() -> FakeRestCrm:
    return FakeRestCrm()


@pytest.fixture
def crm_server(crm: FakeRestCrm) -> Iterator[FakeServer]:
    with ServerThread(FakeServer(crm.app(), Faults(seed=5))) as server:
        yield server


def rest_source(url: str) -> dict[str, Any]:
    return {
        "kind": "generic_rest",
        "api": {
            "base_url": url,
            "token": {"env": "CRMSYNC_REST_TOKEN"},
            "max_attempts": 1,
            "backoff_initial_seconds": 0.05,
            "backoff_max_seconds": 0.1,
        },
        "poll": {"interval_seconds": 5, "start_from": "2000-01-01T00:00:00Z", "page_size": 50},
        "path": "/v1/contacts",
        "since_param": "updated_since",
        "paging": {"kind": "cursor"},
        "mapping": {"email": "email", "first_name": "first_name"},
    }


@pytest.fixture
def slack() -> Iterator[tuple[SlackWebhook, str]]:
    hook = SlackWebhook()
    with ServerThread(FakeServer(hook.app())) as server:
        yield hook, f"{server.url}{hook.path}"


def test_the_overview_follows_a_crm_that_fails_and_recovers_and_slack_is_told_once(
    kafka_bootstrap: str,
    tmp_path: Path,
    crm: FakeRestCrm,
    crm_server: FakeServer,
    page: Page,
    slack: tuple[SlackWebhook, str],
) -> None:
    crm.seed(3)
    stack = Stack(
        bootstrap=kafka_bootstrap,
        workdir=tmp_path / "stack",
        sources={"rest": rest_source(crm_server.url)},
    )
    hook, hook_url = slack
    stack.config["services"]["console"]["watch_seconds"] = 1
    stack.config["notifications"] = {
        "channels": {"ops": {"kind": "slack", "url": {"env": "CRMSYNC_TEST_SLACK_URL"}}},
        "group_seconds": 0,
        "send_resolved": True,
    }
    stack.write_config()
    stack["console"].env["CRMSYNC_TEST_SLACK_URL"] = hook_url
    try:
        stack.start("ingest", "mapper", "writer", "console")
        assert post_webhook(stack["ingest"].url, contact("w1", first_name="Wes"))[0] == 200
        sign_in(page, stack, token=READ_TOKEN)
        expect(page.locator("h1")).to_have_text("Sync overview")
        expect(page.locator('tr[data-source="demo"]')).to_be_visible()
        assert wait_for(lambda: light_of(page, stack, "rest") == "healthy", timeout_s=60)
        assert wait_for(lambda: light_of(page, stack, "demo") == "healthy", timeout_s=30)
        screenshot(page, "overview")

        crm_server.faults.error_rate = 1.0  # every call answered 5xx from now on
        assert wait_for(lambda: light_of(page, stack, "rest") == "error", timeout_s=90)
        rule = page.locator('tr[data-source="rest"] .rule').inner_text()
        assert "polls in a row failed" in rule
        page.get_by_role("link", name="rest", exact=True).click()
        expect(page.locator("#rule")).to_contain_text("polls in a row failed")
        # A read-only caller sees no action buttons.
        expect(page.get_by_role("button", name="Pause")).to_have_count(0)
        screenshot(page, "source-error")
        # Told to Slack once, however many failing polls and watcher rounds follow.
        assert wait_for(lambda: len(hook.messages) >= 1, timeout_s=30)
        time.sleep(3)
        assert len(hook.messages) == 1
        assert "sync failing: source rest (reason http_5" in hook.messages[0]["text"]

        crm_server.faults.error_rate = 0.0
        assert wait_for(lambda: light_of(page, stack, "rest") == "healthy", timeout_s=60)
        assert wait_for(lambda: len(hook.messages) == 2, timeout_s=30)
        assert "resolved" in hook.messages[1]["text"].lower()
    finally:
        stack.stop()


def test_a_rejected_contact_is_found_replayed_after_a_fix_and_stored(
    stack: Stack, page: Page
) -> None:
    stack.config["sources"]["demo"]["mapping"]["phone"] = {"attribute": "phone", "type": "phone"}
    stack.write_config()
    stack.start("ingest", "mapper", "writer", "console")
    bad = contact("r7", email="Rosa@Example.com", first_name="Rosa", phone="not a number")
    assert post_webhook(stack["ingest"].url, bad)[0] == 200

    sign_in(page, stack, path="/rejected")
    page.get_by_label("Email").fill("rosa@example.com")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"email=rosa%40example\.com"))
    filtered = page.url
    assert wait_for(lambda: shown(page, filtered, "#count") == "1")
    row = page.locator("#rejections tbody tr")
    expect(row).to_contain_text("mapper")
    expect(row).to_contain_text("phone")
    screenshot(page, "rejected")
    row.get_by_role("link").click()
    expect(page.locator("#reason")).to_contain_text("phone")
    screenshot(page, "rejection")

    # The fix: drop an invalid phone and keep the rest; the mapper restarts on it.
    stack["mapper"].stop()
    stack.config["sources"]["demo"]["mapping"]["phone"]["on_invalid"] = "drop_field"
    stack.write_config()
    stack.start("mapper")
    page.get_by_role("button", name="Replay").click()
    expect(page.locator(".done")).to_have_text("replayed 1")
    assert wait_for(lambda: attribute(stack.db_path, record_id="r7", name="first_name") == '"Rosa"')
    expect(page.locator("#replayed")).not_to_have_text("no")

    page.goto(f"{stack['console'].url}/records?q=rosa@example.com")

    def shown_kinds() -> list[str]:
        page.goto(f"{stack['console'].url}/records?q=rosa@example.com")
        return page.locator("#timeline .event").evaluate_all(
            "events => events.map(e => e.dataset.kind)"
        )

    assert wait_for(lambda: "written" in shown_kinds())
    kinds = shown_kinds()
    assert kinds[:2] == ["received", "rejected"]
    assert kinds.index("decided") < kinds.index("written")
    expect(page.locator('.event[data-kind="decided"]')).to_contain_text("invalid")
    screenshot(page, "record-timeline")


def test_pause_queues_and_resume_applies_in_order(stack: Stack, page: Page) -> None:
    stack.start("ingest", "mapper", "writer", "console")
    url = stack["ingest"].url
    assert post_webhook(url, contact("q1", first_name="v0", updated_at="2026-12-01T09:00:00Z"))[0]
    assert wait_for(lambda: attribute(stack.db_path, record_id="q1", name="first_name") == '"v0"')

    sign_in(page, stack, path="/sources/demo")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator(".done")).to_contain_text("paused demo")
    expect(page.locator(".light")).to_have_text("inactive")
    for minute, name in ((1, "v1"), (2, "v2"), (3, "v3")):
        updated = f"2026-12-01T09:0{minute}:00Z"
        assert post_webhook(url, contact("q1", first_name=name, updated_at=updated))[0] == 200
    screenshot(page, "source-paused")
    # Queued, not applied.
    history = f"{stack['console'].url}/records?q=demo:q1"
    assert wait_for(lambda: count_shown(page, history, '.event[data-kind="received"]') == 4)
    assert attribute(stack.db_path, record_id="q1", name="first_name") == '"v0"'

    page.goto(f"{stack['console'].url}/sources/demo")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator(".done")).to_contain_text("resumed demo")
    assert wait_for(lambda: attribute(stack.db_path, record_id="q1", name="first_name") == '"v3"')

    assert wait_for(lambda: count_shown(page, history, '.event[data-kind="written"]') == 4)
    written = page.locator('.event[data-kind="written"] table').all_inner_texts()
    assert [text.split()[-1] for text in written] == ["v0", "v1", "v2", "v3"]


def test_a_test_sync_shows_what_would_change_and_writes_nothing(
    kafka_bootstrap: str, tmp_path: Path, crm: FakeRestCrm, crm_server: FakeServer, page: Page
) -> None:
    crm.seed(3)
    source = rest_source(crm_server.url)
    source["poll"]["enabled"] = False  # not active yet: tried first
    stack = Stack(bootstrap=kafka_bootstrap, workdir=tmp_path / "stack", sources={"rest": source})
    try:
        stack.start("ingest", "mapper", "writer", "console")
        known = contact("k1", email="c0@example.com", first_name="Old")
        assert post_webhook(stack["ingest"].url, known)[0] == 200
        assert wait_for(lambda: attribute(stack.db_path, record_id="k1", name="first_name"))
        before = query(stack.db_path, "SELECT * FROM attributes ORDER BY profile_id, name")

        sign_in(page, stack, token=READ_TOKEN, path="/sources/rest")
        page.get_by_role("button", name="Run test sync").click()
        expect(page.locator("#summary")).to_contain_text("Nothing was written")
        records = page.locator(".event[data-record]")
        expect(records).to_have_count(3)
        known_row = page.locator('.event[data-record="c0"] tr[data-attribute="first_name"]')
        expect(known_row).to_contain_text("Old")
        expect(known_row).to_contain_text("First0")
        expect(page.locator('.event[data-record="c1"] .verdict')).to_have_text("a new profile")
        screenshot(page, "test-sync")

        assert query(stack.db_path, "SELECT * FROM attributes ORDER BY profile_id, name") == before
        assert len(query(stack.db_path, "SELECT 1 FROM profiles")) == 1
    finally:
        stack.stop()


def test_a_merge_is_split_from_the_profile_page(stack: Stack, page: Page) -> None:
    stack.start("ingest", "mapper", "writer", "console")
    url = stack["ingest"].url
    assert post_webhook(url, contact("mo", email="mo@x.io", first_name="Mo"))[0] == 200
    assert post_webhook(url, contact("sam", email="sam@x.io", first_name="Sam"))[0] == 200
    assert wait_for(lambda: attribute(stack.db_path, record_id="sam", name="first_name"))
    # Sam's record takes up Mo's email: the two profiles merge.
    later = "2026-12-01T09:00:00Z"
    joined = contact("sam", email="mo@x.io", first_name="Samuel", updated_at=later)
    assert post_webhook(url, joined)[0] == 200
    merged_into = "SELECT profile_id FROM identities WHERE kind = 'crm' AND value = ?"
    assert wait_for(
        lambda: (
            query(stack.db_path, merged_into, "demo:sam")
            == query(stack.db_path, merged_into, "demo:mo")
        )
    )
    (mo_id,) = query(stack.db_path, merged_into, "demo:mo")[0]
    sign_in(page, stack, path=f"/profiles/{mo_id}")
    row = page.locator("#merges tr[data-merged]")
    assert wait_for(
        lambda: (
            count_shown(page, f"{stack['console'].url}/profiles/{mo_id}", "#merges tr[data-merged]")
            == 1
        )
    )
    merged_id = row.get_attribute("data-merged")
    expect(page.locator("#history")).to_contain_text("Samuel")
    screenshot(page, "profile-history")
    page.get_by_role("button", name="Split off").click()
    expect(page.locator(".done")).to_contain_text(f"split of profile {merged_id} sent")
    assert wait_for(
        lambda: query(stack.db_path, merged_into, "demo:sam") == [(int(str(merged_id)),)]
    )
    assert attribute(stack.db_path, record_id="mo", name="first_name") == '"Mo"'
    assert attribute(stack.db_path, record_id="sam", name="first_name") == '"Samuel"'
    assert wait_for(
        lambda: (
            "split off again" in shown(page, f"{stack['console'].url}/profiles/{mo_id}", "#merges")
        )
    )
