"""The notifier's own promises, against a webhook receiver on loopback: a full queue
drops the oldest and counts it, other threads may notify, closing sends what waits,
severities filter, and a channel's bug stays that channel's."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from services.notify import NotificationSettings
from services.notify.channels import Channel, build_channel
from services.notify.incidents import Incident, IncidentKind, Notice
from services.notify.notifier import Notifier
from tests.support.notify_receivers import SignedReceiver, until

pytestmark = [pytest.mark.unit, pytest.mark.asyncio]


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[SignedReceiver, str]]:
    endpoint = SignedReceiver()
    server = TestServer(endpoint.app())
    await server.start_server()
    yield endpoint, str(server.make_url("/hook"))
    await server.close()


def settings(url: str, **values: Any) -> NotificationSettings:
    return NotificationSettings.model_validate(
        {
            "channels": {"hook": {"kind": "webhook", "url": url}},
            "group_seconds": 0.1,
            "backoff_initial_seconds": 0.01,
            "backoff_max_seconds": 0.02,
            "max_attempts": 2,
            **values,
        }
    )


def dropped() -> float:
    return REGISTRY.get_sample_value("crmsync_notifications_dropped_total") or 0.0


def subjects(message: dict[str, Any]) -> list[str]:
    return [incident["subject"] for incident in message["incidents"]]


async def test_a_full_queue_drops_the_oldest_and_counts_it(
    receiver: tuple[SignedReceiver, str],
) -> None:
    endpoint, url = receiver
    notifier = Notifier(settings(url, queue_size=3))
    before = dropped()
    # Not started yet: nothing takes from the queue.
    for n in range(5):
        notifier.notify(Incident(IncidentKind.SYNC_FAILING, f"source-{n}"))
    assert dropped() == before + 2
    await notifier.start()
    await until(lambda: len(endpoint.messages) == 1)
    await notifier.close()
    assert subjects(endpoint.messages[0]) == ["source-2", "source-3", "source-4"]


async def test_another_thread_may_notify_and_resolve(
    receiver: tuple[SignedReceiver, str],
) -> None:
    endpoint, url = receiver
    async with Notifier(settings(url, group_seconds=0)) as notifier:

        def from_a_thread() -> None:
            notifier.notify_threadsafe(Incident(IncidentKind.AUTH_FAILING, "webcrm"))

        worker = threading.Thread(target=from_a_thread)
        worker.start()
        worker.join()
        await until(lambda: len(endpoint.messages) == 1)
        resolver = threading.Thread(
            target=notifier.resolve_threadsafe, args=(IncidentKind.AUTH_FAILING, "webcrm")
        )
        resolver.start()
        resolver.join()
        await until(lambda: len(endpoint.messages) == 2)
    assert [m["incidents"][0]["status"] for m in endpoint.messages] == ["firing", "resolved"]


async def test_closing_sends_the_group_still_being_gathered(
    receiver: tuple[SignedReceiver, str],
) -> None:
    endpoint, url = receiver
    notifier = Notifier(settings(url, group_seconds=3600))
    await notifier.start()
    notifier.notify(Incident(IncidentKind.FULLSYNC_FINISHED, "hubspot"))
    notifier.notify(Incident(IncidentKind.FULLSYNC_FINISHED, "webcrm"))
    await notifier.close()
    assert [subjects(m) for m in endpoint.messages] == [["hubspot", "webcrm"]]
    notifier.notify(Incident(IncidentKind.FULLSYNC_FINISHED, "pipedrive"))  # closed: ignored


async def test_incidents_below_the_minimum_severity_are_not_sent(
    receiver: tuple[SignedReceiver, str],
) -> None:
    endpoint, url = receiver
    async with Notifier(settings(url, min_severity="warning")) as notifier:
        notifier.notify(Incident(IncidentKind.FULLSYNC_FINISHED, "hubspot"))
        notifier.notify(Incident(IncidentKind.REJECTION_SPIKE, "hubspot"))
        await until(lambda: len(endpoint.messages) == 1)
    assert [i["kind"] for i in endpoint.messages[0]["incidents"]] == ["rejection_spike"]


class Broken:
    """A channel with a bug: it fails in a way no channel may."""

    name = "broken"

    async def send(self, notice: Notice) -> None:
        raise KeyError(notice.id)

    async def close(self) -> None:
        return None


async def test_a_channels_bug_is_counted_and_spares_the_others_and_later_messages(
    receiver: tuple[SignedReceiver, str],
) -> None:
    endpoint, url = receiver
    config = settings(url, group_seconds=0).model_copy(
        update={
            "channels": {
                **settings(url).channels,
                "broken": settings(url).channels["hook"],
            }
        }
    )
    hook: Channel = build_channel("hook", config.channels["hook"])
    failed_before = (
        REGISTRY.get_sample_value(
            "crmsync_notifications_sent_total", {"channel": "broken", "outcome": "failed"}
        )
        or 0.0
    )
    async with Notifier(config, channels={"hook": hook, "broken": Broken()}) as notifier:
        notifier.notify(Incident(IncidentKind.SYNC_FAILING, "hubspot"))
        notifier.notify(Incident(IncidentKind.SYNC_FAILING, "webcrm"))
        await until(lambda: len(endpoint.messages) == 2)
    failed = REGISTRY.get_sample_value(
        "crmsync_notifications_sent_total", {"channel": "broken", "outcome": "failed"}
    )
    assert failed == failed_before + 2


async def test_a_notifier_closed_without_starting_sends_nothing_and_does_not_fail(
    receiver: tuple[SignedReceiver, str],
) -> None:
    endpoint, url = receiver
    notifier = Notifier(settings(url))
    notifier.notify(Incident(IncidentKind.SYNC_FAILING, "hubspot"))
    await notifier.close()
    assert endpoint.messages == []
