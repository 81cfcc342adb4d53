"""The CDP destination against the fake of its records API, served on loopback: what a
chunk of changes becomes, and what each answer does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import pytest

from services.core.api_client import ApiUnavailable
from services.core.contracts import FieldValue, Identity
from services.core.destinations import CdpDestination
from services.core.profile_changed import AttributeChange, ProfileChanged, ProfileChangeKind
from services.outbound.destinations.base import Refusal
from services.outbound.destinations.cdp import CdpRecords, idempotency_key
from services.outbound.outgoing import OutgoingChange, outgoing
from tests.fakes import experiture
from tests.fakes.experiture import Workspace
from tests.fakes.server import FakeServer, ServerThread

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)


@pytest.fixture
def workspace() -> Iterator[tuple[Workspace, FakeServer]]:
    space = Workspace(
        fields={"email", "hubspot_contact_id", "first_name", "city", "newsletter"},
        identity_keys={"email", "hubspot_contact_id"},
    )
    with ServerThread(experiture.server(space)) as server:
        yield space, server


def settings(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, **values: object
) -> CdpDestination:
    monkeypatch.setenv("CDP_TEST_TOKEN", experiture.TOKEN)
    return CdpDestination.model_validate(
        {
            "kind": "cdp",
            "api": {
                "base_url": f"{server.url}/public/v1",
                "token": {"env": "CDP_TEST_TOKEN"},
                "max_attempts": 2,
                "backoff_initial_seconds": 0.05,
            },
            "match_key": "email",
            "identities": {"email": "email", "crm:hubspot": "hubspot_contact_id"},
            **values,
        }
    )


def change(
    profile: int,
    email: str | None,
    attributes: dict[str, tuple[FieldValue, FieldValue]],
    *,
    event: str,
    kind: ProfileChangeKind = ProfileChangeKind.UPDATED,
) -> ProfileChanged:
    identities = [Identity("crm", f"hubspot:{profile}")]
    if email is not None:
        identities.append(Identity("email", email))
    return ProfileChanged(
        event_id=f"{event}:{profile}",
        profile_id=profile,
        kind=kind,
        committed_at=NOW,
        source="hubspot",
        record_id=str(profile),
        source_event_id=event,
        source_modified_at=NOW,
        mapping_version=1,
        identities=tuple(identities),
        attributes=tuple(AttributeChange(n, old, new) for n, (old, new) in attributes.items()),
    )


def send(
    destination: CdpDestination, events: Sequence[ProfileChanged], times: int = 1
) -> list[Refusal]:
    chunk = []
    for event in events:
        shaped = outgoing(event, destination)
        assert isinstance(shaped, OutgoingChange)
        chunk.append(shaped)

    async def run() -> list[Refusal]:
        cdp = CdpRecords("cdp", destination)
        await cdp.open()
        try:
            found: list[Refusal] = []
            for _ in range(times):
                found = (await cdp.send(chunk)).refused
            return found
        finally:
            await cdp.close()

    return asyncio.run(run())


def test_a_profile_is_one_record_with_its_identities_and_what_changed(
    workspace: tuple[Workspace, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = workspace
    destination = settings(server, monkeypatch)
    events = [
        change(1, "ada@x.io", {"first_name": (None, "Ada"), "city": (None, "Oslo")}, event="e1"),
        change(1, "ada@x.io", {"first_name": ("Ada", "Ada L.")}, event="e2"),
        change(2, "bob@x.io", {"city": ("Rome", None)}, event="e3"),
    ]
    assert send(destination, events) == []
    assert space.rows == [
        {"hubspot_contact_id": "1", "email": "ada@x.io", "first_name": "Ada L.", "city": "Oslo"},
        {"hubspot_contact_id": "2", "email": "bob@x.io"},
    ]


def test_a_clear_is_sent_as_null_only_when_asked(
    workspace: tuple[Workspace, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = workspace
    space.seed({"email": "bob@x.io", "city": "Rome"})
    send(
        settings(server, monkeypatch), [change(2, "bob@x.io", {"city": ("Rome", None)}, event="e1")]
    )
    assert space.rows[0]["city"] == "Rome"
    send(
        settings(server, monkeypatch, send_clears=True),
        [change(2, "bob@x.io", {"city": ("Rome", None)}, event="e2")],
    )
    assert "city" not in space.rows[0]


def test_a_chunk_sent_again_is_answered_from_the_idempotency_ledger(
    workspace: tuple[Workspace, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = workspace
    events = [change(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1")]
    assert send(settings(server, monkeypatch), events, times=2) == []
    assert (space.upserts, space.replayed) == (1, 1)


def test_only_the_record_the_cdp_names_is_refused(
    workspace: tuple[Workspace, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = workspace
    events = [
        change(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1"),
        change(2, "not-an-email", {"first_name": (None, "Bob")}, event="e2"),
        change(3, "cy@x.io", {"first_name": (None, "Cy")}, event="e3"),
    ]
    [refused] = send(settings(server, monkeypatch), events)
    assert refused.change.event.profile_id == 2 and refused.status == 400
    assert "records[1].email: invalid email format" in refused.answer
    assert [row["email"] for row in space.rows] == ["ada@x.io", "cy@x.io"]


def test_what_the_cdp_cannot_take_is_refused_before_sending(
    workspace: tuple[Workspace, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = workspace
    events = [
        change(1, None, {"first_name": (None, "Ada")}, event="e1"),
        change(2, "bob@x.io", {}, event="e2", kind=ProfileChangeKind.ERASED),
        change(3, "cy@x.io", {"first_name": (None, "Cy")}, event="e3"),
    ]
    refused = send(settings(server, monkeypatch), events)
    assert sorted((r.change.event.profile_id, r.status) for r in refused) == [(1, None), (2, None)]
    assert [row["email"] for row in space.rows] == ["cy@x.io"]


def test_a_field_the_schema_lacks_refuses_its_record_and_a_wrong_token_is_an_outage(
    workspace: tuple[Workspace, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    _space, server = workspace
    destination = settings(server, monkeypatch)
    [refused] = send(destination, [change(1, "ada@x.io", {"shoe_size": (None, 44)}, event="e1")])
    assert refused.status == 422 and "CDP_ETL.VALIDATION.REQUEST_SCHEMA" in refused.answer
    monkeypatch.setenv("CDP_OTHER_TOKEN", "wrong")
    with pytest.raises(ApiUnavailable, match="credentials refused"):
        send(
            settings(
                server,
                monkeypatch,
                api={
                    "base_url": f"{server.url}/public/v1",
                    "token": {"env": "CDP_OTHER_TOKEN"},
                    "max_attempts": 1,
                },
            ),
            [change(2, "b@x.io", {"first_name": (None, "B")}, event="e2")],
        )


def test_throttling_is_waited_out(
    workspace: tuple[Workspace, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = workspace
    server.faults.script(429, 409, 503)
    destination = settings(server, monkeypatch).model_copy(
        update={"api": settings(server, monkeypatch).api.model_copy(update={"max_attempts": 5})}
    )
    assert (
        send(destination, [change(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1")]) == []
    )
    assert len(space.rows) == 1
    assert server.statuses[429] == 1 and server.statuses[200] == 1


def test_the_idempotency_key_is_a_uuid_of_the_changes() -> None:
    import uuid

    first = [OutgoingChange(change(1, "a@x.io", {}, event="e1"))]
    again = [OutgoingChange(change(1, "a@x.io", {}, event="e1"))]
    other = [OutgoingChange(change(1, "a@x.io", {}, event="e2"))]
    assert idempotency_key(first) == idempotency_key(again) != idempotency_key(other)
    assert uuid.UUID(idempotency_key(first)).version == 4
