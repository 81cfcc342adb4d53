"""The notifier against a Slack incoming webhook served on loopback: sent once per
incident, grouped, retried after a 500, waiting as a 429 asks, never retrying a
final answer, and never making its callers wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from services.notify import NotificationSettings
from services.notify.incidents import Incident, IncidentKind
from services.notify.notifier import Notifier
from tests.fakes.slack import SlackWebhook
from tests.support.notify_receivers import FakeClock, until

pytestmark = [pytest.mark.unit, pytest.mark.asyncio]

SYNC = IncidentKind.SYNC_FAILING


@pytest_asyncio.fixture
async def slack() -> AsyncIterator[tuple[SlackWebhook, str]]:
    hook = SlackWebhook()
    server = TestServer(hook.app())
    await server.start_server()
    yield hook, str(server.make_url(hook.path))
    if hook.held is not None:
        hook.held.set()
    await server.close()


def settings(url: str, monkeypatch: pytest.MonkeyPatch, **values: Any) -> NotificationSettings:
    monkeypatch.setenv("NOTIFY_TEST_SLACK_URL", url)
    return NotificationSettings.model_validate(
        {
            "channels": {"ops-slack": {"kind": "slack", "url": {"env": "NOTIFY_TEST_SLACK_URL"}}},
            "group_seconds": 0,
            "backoff_initial_seconds": 0.01,
            "backoff_max_seconds": 0.02,
            "max_attempts": 3,
            **values,
        }
    )


def sent(outcome: str, channel: str = "ops-slack") -> float:
    labels = {"channel": channel, "outcome": outcome}
    return REGISTRY.get_sample_value("crmsync_notifications_sent_total", labels) or 0.0


async def test_an_incident_is_sent_once_within_its_cooldown_and_again_after(
    slack: tuple[SlackWebhook, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, url = slack
    clock = FakeClock()
    async with Notifier(settings(url, monkeypatch), clock=clock) as notifier:
        notifier.notify(Incident(SYNC, "hubspot", reason="http_503"))
        await until(lambda: len(hook.messages) == 1)
        clock.advance(899)
        notifier.notify(Incident(SYNC, "hubspot", reason="http_503"))
        # Items are taken in order: once webcrm's arrives, hubspot's repeat was weighed.
        notifier.notify(Incident(SYNC, "webcrm"))
        await until(lambda: len(hook.messages) == 2)
        clock.advance(1)
        notifier.notify(Incident(SYNC, "hubspot", reason="http_503"))
        await until(lambda: len(hook.messages) == 3)
    texts = [m["text"] for m in hook.messages]
    assert ["hubspot" in t for t in texts] == [True, False, True]
    assert "sync failing: source webcrm" in texts[1]
    assert texts[0].startswith("crmsync: ERROR sync failing: source hubspot (reason http_503)")


async def test_after_resolve_the_same_incident_is_sent_again_at_once(
    slack: tuple[SlackWebhook, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, url = slack
    async with Notifier(settings(url, monkeypatch), clock=FakeClock()) as notifier:
        notifier.notify(Incident(IncidentKind.AUTH_FAILING, "salesforce"))
        await until(lambda: len(hook.messages) == 1)
        notifier.resolve(IncidentKind.AUTH_FAILING, "salesforce")
        await until(lambda: len(hook.messages) == 2)
        notifier.notify(Incident(IncidentKind.AUTH_FAILING, "salesforce"))
        await until(lambda: len(hook.messages) == 3)
    assert [m["text"].split(": ", 1)[1].split(" ", 1)[0] for m in hook.messages] == [
        "ERROR",
        "RESOLVED",
        "ERROR",
    ]


async def test_incidents_within_the_group_window_are_one_message(
    slack: tuple[SlackWebhook, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, url = slack
    notifier = Notifier(settings(url, monkeypatch, group_seconds=0.3))
    await notifier.start()
    notifier.notify(Incident(SYNC, "hubspot", counts={"failures": 6}))
    notifier.notify(Incident(IncidentKind.REJECTION_SPIKE, "webcrm", counts={"rejected": 120}))
    notifier.notify(Incident(IncidentKind.DESTINATION_DEAD_LETTER, "cdp"))
    await until(lambda: len(hook.messages) == 1)
    await notifier.close()
    assert hook.requests == 1
    lines = hook.messages[0]["text"].splitlines()
    assert lines[0] == "crmsync: 3 incidents"
    assert [line.split(" at ")[0] for line in lines[1:]] == [
        "- ERROR sync failing: source hubspot (failures 6)",
        "- WARNING rejection spike: source webcrm (rejected 120)",
        "- WARNING destination dead-lettering: destination cdp",
    ]


async def test_a_500_is_retried_and_the_message_then_delivered(
    slack: tuple[SlackWebhook, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, url = slack
    hook.script(500, "internal_error")
    before = sent("sent")
    async with Notifier(settings(url, monkeypatch)) as notifier:
        notifier.notify(Incident(IncidentKind.FULLSYNC_FAILED, "hubspot"))
        await until(lambda: len(hook.messages) == 1)
    assert hook.requests == 2
    assert sent("sent") == before + 1


async def test_a_429_waits_as_long_as_retry_after_asks(
    slack: tuple[SlackWebhook, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, url = slack
    hook.script(429, "rate_limited", **{"Retry-After": "7"})
    waits: list[float] = []

    async def recorded(seconds: float) -> None:
        waits.append(seconds)

    async with Notifier(settings(url, monkeypatch), retry_sleep=recorded) as notifier:
        notifier.notify(Incident(SYNC, "hubspot"))
        await until(lambda: len(hook.messages) == 1)
    assert waits == [7.0]
    assert hook.requests == 2


@pytest.mark.parametrize(
    ("status", "body"),
    [(400, "invalid_payload"), (403, "action_prohibited"), (410, "channel_is_archived")],
)
async def test_a_final_answer_is_not_retried(
    slack: tuple[SlackWebhook, str], monkeypatch: pytest.MonkeyPatch, status: int, body: str
) -> None:
    hook, url = slack
    hook.script(status, body)
    before = sent("refused")
    async with Notifier(settings(url, monkeypatch)) as notifier:
        notifier.notify(Incident(SYNC, "hubspot"))
        await until(lambda: sent("refused") == before + 1)
        notifier.notify(Incident(SYNC, "webcrm"))
        await until(lambda: len(hook.messages) == 1)
    assert hook.requests == 2


async def test_a_removed_webhook_is_refused_by_slack_and_not_retried(
    slack: tuple[SlackWebhook, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, url = slack
    before = sent("refused")
    gone = url.replace(hook.token, "revoked")
    async with Notifier(settings(gone, monkeypatch)) as notifier:
        notifier.notify(Incident(SYNC, "hubspot"))
        await until(lambda: sent("refused") == before + 1)
    assert hook.requests == 1


async def test_a_slack_that_stays_down_is_given_up_after_the_attempts(
    slack: tuple[SlackWebhook, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, url = slack
    for _ in range(3):
        hook.script(503, "service_unavailable")
    before = sent("gave_up")
    async with Notifier(settings(url, monkeypatch)) as notifier:
        notifier.notify(Incident(SYNC, "hubspot"))
        await until(lambda: sent("gave_up") == before + 1)
        # The next message is not held back by the one given up.
        notifier.notify(Incident(SYNC, "webcrm"))
        await until(lambda: len(hook.messages) == 1)
    assert hook.requests == 4


async def test_notify_returns_at_once_while_slack_hangs(
    slack: tuple[SlackWebhook, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, url = slack
    hook.held = asyncio.Event()
    notifier = Notifier(settings(url, monkeypatch, group_seconds=0.05))
    await notifier.start()
    notifier.notify(Incident(SYNC, "first"))
    await until(lambda: hook.requests == 1)
    started = time.perf_counter()
    for n in range(200):
        notifier.notify(Incident(SYNC, f"source-{n}"))
        notifier.resolve(SYNC, f"other-{n}")
    assert time.perf_counter() - started < 0.1
    assert not hook.messages
    hook.held.set()
    await until(lambda: len(hook.messages) == 2)
    await notifier.close()
    assert "200 incidents" in hook.messages[1]["text"]
