"""The generic webhook channel against a receiver on loopback that checks Standard
Webhooks signatures, and channels that do not wait for one another."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from services.core.logs import EMAIL_PATTERN
from services.notify import NotificationSettings
from services.notify.incidents import Incident, IncidentKind
from services.notify.notifier import Notifier
from tests.fakes.slack import SlackWebhook
from tests.support.notify_receivers import SignedReceiver, until

pytestmark = [pytest.mark.unit, pytest.mark.asyncio]

SECRET = "whsec_" + base64.b64encode(b"notification-test-signing-key").decode()


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[SignedReceiver, str]]:
    endpoint = SignedReceiver(secret=SECRET)
    server = TestServer(endpoint.app())
    await server.start_server()
    yield endpoint, str(server.make_url("/hook"))
    if endpoint.held is not None:
        endpoint.held.set()
    await server.close()


def settings(channels: dict[str, Any], **values: Any) -> NotificationSettings:
    return NotificationSettings.model_validate(
        {
            "channels": channels,
            "group_seconds": 0,
            "backoff_initial_seconds": 0.01,
            "backoff_max_seconds": 0.02,
            "max_attempts": 3,
            **values,
        }
    )


def webhook(url: str, **values: Any) -> dict[str, Any]:
    return {"kind": "webhook", "url": url, "secret": {"env": "NOTIFY_TEST_WHSEC"}, **values}


async def test_a_signed_message_lists_its_incidents_in_the_stable_shape(
    receiver: tuple[SignedReceiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, url = receiver
    monkeypatch.setenv("NOTIFY_TEST_WHSEC", SECRET)
    config = settings({"siem": webhook(url)}, instance="crmsync-eu", group_seconds=0.2)
    async with Notifier(config) as notifier:
        notifier.notify(Incident(IncidentKind.FULLSYNC_FINISHED, "hubspot", counts={"records": 9}))
        notifier.notify(
            Incident(IncidentKind.DESTINATION_DEAD_LETTER, "klaviyo", reason="http_422")
        )
        await until(lambda: len(endpoint.messages) == 1)
    (message,) = endpoint.messages
    assert endpoint.bad_signatures == 0
    assert endpoint.headers[0]["webhook-id"] == message["id"]
    assert message["type"] == "crmsync.notification"
    assert message["instance"] == "crmsync-eu"
    assert [
        (i["kind"], i["subject"], i["status"], i["severity"]) for i in message["incidents"]
    ] == [
        ("fullsync_finished", "hubspot", "firing", "info"),
        ("destination_dead_letter", "klaviyo", "firing", "warning"),
    ]
    assert message["incidents"][0]["counts"] == {"records": 9}
    assert message["incidents"][1]["reason"] == "http_422"
    assert not EMAIL_PATTERN.search(str(message))


async def test_a_wrong_secret_is_refused_by_the_receiver_and_not_retried(
    receiver: tuple[SignedReceiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, url = receiver
    monkeypatch.setenv("NOTIFY_TEST_WHSEC", "whsec_" + base64.b64encode(b"another key").decode())
    async with Notifier(settings({"siem": webhook(url)})) as notifier:
        notifier.notify(Incident(IncidentKind.SYNC_FAILING, "hubspot"))
        await until(lambda: endpoint.bad_signatures == 1)
    await asyncio.sleep(0.05)
    assert endpoint.bad_signatures == 1
    assert endpoint.messages == []


async def test_without_a_secret_the_message_goes_unsigned(
    receiver: tuple[SignedReceiver, str],
) -> None:
    endpoint, url = receiver
    endpoint.secret = None
    config = settings({"plain": {"kind": "webhook", "url": url}})
    async with Notifier(config) as notifier:
        notifier.notify(Incident(IncidentKind.SYNC_FAILING, "hubspot"))
        await until(lambda: len(endpoint.messages) == 1)
    assert "webhook-signature" not in endpoint.headers[0]


async def test_a_hung_channel_does_not_delay_another(
    receiver: tuple[SignedReceiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, url = receiver
    hung = SlackWebhook(held=asyncio.Event())
    slack_server = TestServer(hung.app())
    await slack_server.start_server()
    monkeypatch.setenv("NOTIFY_TEST_WHSEC", SECRET)
    monkeypatch.setenv("NOTIFY_TEST_SLACK_URL", str(slack_server.make_url(hung.path)))
    config = settings(
        {
            "slack": {"kind": "slack", "url": {"env": "NOTIFY_TEST_SLACK_URL"}},
            "siem": webhook(url),
        }
    )
    notifier = Notifier(config)
    await notifier.start()
    try:
        for subject in ("hubspot", "webcrm", "pipedrive"):
            notifier.notify(Incident(IncidentKind.SYNC_FAILING, subject))
        await until(lambda: len(endpoint.messages) == 3, timeout_s=2)
        assert hung.requests == 1
        assert hung.messages == []
    finally:
        await notifier.close(timeout_s=0.1)
        hung.held.set()  # type: ignore[union-attr]
        await slack_server.close()


async def test_a_channel_that_refuses_connections_does_not_delay_another(
    receiver: tuple[SignedReceiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, url = receiver
    monkeypatch.setenv("NOTIFY_TEST_WHSEC", SECRET)
    down = TestServer(SlackWebhook().app())
    await down.start_server()
    down_url = str(down.make_url("/hook"))
    await down.close()
    config = settings(
        {"down": {"kind": "webhook", "url": down_url}, "siem": webhook(url)},
        max_attempts=50,
        backoff_initial_seconds=0.2,
        backoff_max_seconds=0.2,
    )
    notifier = Notifier(config)
    await notifier.start()
    try:
        notifier.notify(Incident(IncidentKind.SYNC_FAILING, "hubspot"))
        notifier.notify(Incident(IncidentKind.SYNC_FAILING, "webcrm"))
        await until(lambda: len(endpoint.messages) == 2, timeout_s=1)
    finally:
        await notifier.close(timeout_s=0.1)
