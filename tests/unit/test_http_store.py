"""The HTTP store's delivery rules against the fake CDP: retries, Retry-After, 4xx."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from services.core.config import HttpStoreSettings
from services.core.contracts import Identity
from services.core.mapping_settings import ProfileSettings
from services.writer.stores.base import TransientStoreError
from services.writer.stores.http import HttpProfileStore
from tests.fakes import cdp
from tests.fakes.server import FakeServer, ServerThread
from tests.stores.changes import apply, update

pytestmark = pytest.mark.unit


@pytest.fixture
def fake() -> Iterator[tuple[cdp.FakeCdp, FakeServer]]:
    state = cdp.FakeCdp()
    with ServerThread(cdp.server(state)) as server:
        yield state, server


def store(server: FakeServer, waits: list[float], *, attempts: int = 5) -> HttpProfileStore:
    os.environ["CRMSYNC_TEST_CDP_TOKEN"] = cdp.TOKEN
    settings = HttpStoreSettings.model_validate(
        {
            "kind": "http",
            "url": server.url,
            "token": {"env": "CRMSYNC_TEST_CDP_TOKEN"},
            "max_attempts": attempts,
        }
    )
    return HttpProfileStore(settings, sleep=waits.append)


def test_429_and_5xx_are_retried_honouring_retry_after(
    fake: tuple[cdp.FakeCdp, FakeServer],
) -> None:
    state, server = fake
    server.faults.retry_after_seconds = 7
    server.faults.script(429, 503)
    waits: list[float] = []
    report = apply(store(server, waits), [update("hubspot", "1", t=1, attributes={"a": 1})])
    assert report.rejections == []
    assert waits[0] == 7.0, "Retry-After was not honoured"
    assert len(waits) == 2
    assert state.applied == 1


def test_a_cdp_that_stays_down_fails_the_batch_as_transient(
    fake: tuple[cdp.FakeCdp, FakeServer],
) -> None:
    state, server = fake
    server.faults.script(500, 502, 503)
    with pytest.raises(TransientStoreError, match="after 3 tries"):
        apply(store(server, [], attempts=3), [update("hubspot", "1", t=1)])
    assert state.applied == 0


def test_a_4xx_answer_is_a_rejection_with_the_cdp_body_as_reason() -> None:
    state = cdp.FakeCdp(ProfileSettings(on_identity_conflict="reject"))
    with ServerThread(cdp.server(state)) as server:
        http = store(server, [])
        apply(
            http,
            [
                update("hubspot", "1", t=1, email="ada@example.com"),
                update("sfdc", "A1", t=2),
            ],
        )
        joining = update("sfdc", "A1", t=3, email="ada@example.com")
        report = apply(http, [joining, update("hubspot", "9", t=3)])
    assert [r.index for r in report.rejections] == [0]
    reason = report.rejections[0].reason
    assert reason.startswith("CDP answered 409: ")
    assert '"profile_ids": [1, 2]' in reason
    assert state.find(Identity("crm", "hubspot:9")) is not None


def test_a_repeated_change_is_answered_from_the_ledger(
    fake: tuple[cdp.FakeCdp, FakeServer],
) -> None:
    state, server = fake
    change = update("hubspot", "1", t=1, attributes={"a": 1})
    apply(store(server, []), [change, change])
    apply(store(server, []), [change])
    assert state.applied == 1
    assert len(state.ledger) == 1


@pytest.mark.parametrize("endpoint", ["single", "batch"])
def test_a_replayed_batch_reports_its_merges_and_drops_again(endpoint: str) -> None:
    """A writer that crashed after the CDP applied a batch, before its audit events
    were durable, gets the batch again: answered from the ledger, it must report the
    same merges and drops, or their audit events are lost."""
    subscriptions = {"newsletter": {"channel": "email", "source": "demo"}}
    state = cdp.FakeCdp(ProfileSettings.model_validate({"subscriptions": subscriptions}))
    joining = update(
        "sfdc",
        "A1",
        t=3,
        email="ada@example.com",
        consents=[("newsletter", "email", "opt_in", 3)],
    )
    batch = [joining] if endpoint == "single" else [update("hubspot", "9", t=3), joining]
    with ServerThread(cdp.server(state)) as server:
        apply(
            store(server, []),
            [update("hubspot", "1", t=1, email="ada@example.com"), update("sfdc", "A1", t=2)],
        )
        first = apply(store(server, []), batch)
        replayed = apply(store(server, []), batch)
    assert first.merges and first.drops, "the batch neither merged nor dropped"
    assert replayed.merges == first.merges
    assert replayed.drops == first.drops
    assert state.applied == 2 + len(batch), "the replay was applied again"
