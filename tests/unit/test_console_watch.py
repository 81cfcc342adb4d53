"""The console's watcher: what it sees becomes incidents for the notifier, told once
per incident to a Slack incoming webhook on loopback, resolved when healthy again,
and history from before it started is not told."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from services.console.index import ConsoleIndex, ControlRow, RejectionRow, Where
from services.console.watch import Watcher
from services.notify import NotificationSettings
from services.notify.notifier import Notifier
from tests.fakes.slack import SlackWebhook
from tests.support.notify_receivers import until

pytestmark = [pytest.mark.unit, pytest.mark.asyncio]

START = datetime(2026, 12, 3, 12, tzinfo=UTC)


@pytest_asyncio.fixture
async def slack() -> AsyncIterator[tuple[SlackWebhook, str]]:
    hook = SlackWebhook()
    server = TestServer(hook.app())
    await server.start_server()
    yield hook, str(server.make_url(hook.path))
    await server.close()


def notifier(url: str, monkeypatch: pytest.MonkeyPatch) -> Notifier:
    monkeypatch.setenv("WATCH_TEST_SLACK_URL", url)
    return Notifier(
        NotificationSettings.model_validate(
            {
                "channels": {"ops": {"kind": "slack", "url": {"env": "WATCH_TEST_SLACK_URL"}}},
                "group_seconds": 0,
                "send_resolved": False,
                "backoff_initial_seconds": 0.01,
                "max_attempts": 2,
            }
        )
    )


class Scene:
    """What the overview shows this round, and the clock."""

    def __init__(self) -> None:
        self.now = START
        self.sources: list[dict[str, Any]] = []
        self.destinations: list[dict[str, Any]] = []

    async def overview(self) -> dict[str, Any]:
        return {"sources": self.sources, "destinations": self.destinations}

    def source(self, light: str, rule: str, failures: int = 0, error: str = "") -> None:
        poll = {"consecutive_failures": failures, "last_error": error}
        self.sources = [{"name": "crm", "health": {"light": light, "rule": rule}, "poll": poll}]


def texts(hook: SlackWebhook) -> list[str]:
    return [str(m["text"]) for m in hook.messages]


async def test_a_failing_source_is_told_once_and_again_after_it_recovered(
    slack: tuple[SlackWebhook, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hook, url = slack
    scene = Scene()
    index = ConsoleIndex(tmp_path / "console.db")
    async with notifier(url, monkeypatch) as told:
        watcher = Watcher(
            overview=scene.overview, index=index, notifier=told, clock=lambda: scene.now
        )
        scene.source("error", "3 polls in a row failed: 503 from /v1", failures=3, error="503 x")
        await watcher.round()
        await until(lambda: len(hook.messages) == 1)
        assert "sync failing: source crm (reason http_503, failures 3)" in texts(hook)[0]
        scene.source("error", "4 polls in a row failed: 503 from /v1", failures=4, error="503 x")
        await watcher.round()
        scene.source("healthy", "last poll succeeded")
        await watcher.round()
        scene.source("error", "3 polls in a row failed: 401", failures=3, error="HTTP 401")
        scene.sources[0]["health"]["rule"] = "authentication failing: HTTP 401"
        await watcher.round()
        await until(lambda: len(hook.messages) == 2)
    assert "authentication failing: source crm (reason http_401" in texts(hook)[1]
    assert len(hook.messages) == 2


async def test_full_syncs_and_dead_letters_after_the_start_are_told_and_history_is_not(
    slack: tuple[SlackWebhook, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hook, url = slack
    scene = Scene()
    index = ConsoleIndex(tmp_path / "console.db")
    before, after = START - timedelta(hours=1), START + timedelta(seconds=5)
    index.write(
        [
            ControlRow(Where("barrier", 0, 0), "crm", "old", "COMPLETED", before, 10),
            ControlRow(Where("barrier", 0, 1), "crm", "s2", "COMPLETED", after, 1000),
            RejectionRow(
                Where("rejected", 0, 0),
                after,
                "outbound",
                "400 invalid email",
                source="crm",
                destination="mailchimp",
            ),
            RejectionRow(
                Where("rejected", 0, 1),
                before,
                "outbound",
                "old",
                source="crm",
                destination="klaviyo",
            ),
        ],
        {},
    )
    async with notifier(url, monkeypatch) as told:
        watcher = Watcher(
            overview=scene.overview, index=index, notifier=told, clock=lambda: scene.now
        )
        scene.now = START + timedelta(seconds=15)
        await watcher.round()
        await until(lambda: len(hook.messages) >= 2)
    text = "\n".join(texts(hook))
    assert "1000" in text
    assert "mailchimp" in text
    assert "klaviyo" not in text
    assert "@" not in text
