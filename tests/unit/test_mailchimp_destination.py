"""The Mailchimp destination against the fake of its Marketing API, served on loopback:
what a chunk of changes becomes in the audience, and what each answer does."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from services.core.api_client import ApiUnavailable
from services.core.destinations.mailchimp import MailchimpDestination
from services.core.profile_changed import (
    ProfileChangeKind,
)
from services.outbound.destinations.mailchimp import MailchimpAudience, subscriber_hash
from services.outbound.outgoing import OutgoingChange
from tests.fakes import mailchimp
from tests.fakes.mailchimp import Audience
from tests.fakes.server import FakeServer, ServerThread
from tests.support.destinations import deliver, from_hubspot, send, shaped

pytestmark = pytest.mark.unit

LIST_ID = "a1b2c3d4e5"


@pytest.fixture
def audience() -> Iterator[tuple[Audience, FakeServer]]:
    space = Audience(list_id=LIST_ID)
    with ServerThread(mailchimp.server(space)) as server:
        yield space, server


def settings(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, **values: object
) -> MailchimpDestination:
    monkeypatch.setenv("MAILCHIMP_TEST_KEY", mailchimp.API_KEY)
    api = {
        "base_url": f"{server.url}/3.0",
        "token": {"env": "MAILCHIMP_TEST_KEY"},
        "max_attempts": 3,
        "backoff_initial_seconds": 0.05,
        "backoff_max_seconds": 0.2,
    }
    return MailchimpDestination.model_validate(
        {
            "kind": "mailchimp",
            "api": api,
            "list_id": LIST_ID,
            "attributes": {"first_name": "FNAME", "city": "CITY"},
            "consents": {"newsletter": "status"},
            **values,
        }
    )


def test_a_profile_is_added_then_updated_as_one_member(
    audience: tuple[Audience, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = audience
    destination = settings(server, monkeypatch)
    first = deliver(
        destination,
        [
            from_hubspot(1, "Ada@X.io", {"first_name": (None, "Ada")}, event="e1"),
            from_hubspot(1, "Ada@X.io", {"city": (None, "Oslo")}, event="e2"),
        ],
    )
    assert first.refused == [] and first.assigned == {}
    member = space.member("ada@x.io")
    assert member is not None
    assert member["id"] == subscriber_hash("ada@x.io")
    assert member["status"] == "transactional"
    assert member["merge_fields"] == {"FNAME": "Ada", "CITY": "Oslo"}
    deliver(
        destination, [from_hubspot(1, "Ada@X.io", {"first_name": ("Ada", "Ada L.")}, event="e3")]
    )
    assert len(space.members) == 1
    assert space.member("ada@x.io")["merge_fields"] == {"FNAME": "Ada L.", "CITY": "Oslo"}  # type: ignore[index]
    assert space.batches == [1, 1]


def test_only_what_changed_is_sent_and_a_clear_only_when_asked(
    audience: tuple[Audience, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = audience
    space.seed("bob@x.io", "subscribed", FNAME="Bob", CITY="Rome")
    deliver(
        settings(server, monkeypatch),
        [from_hubspot(2, "bob@x.io", {"city": ("Rome", None)}, event="e1")],
    )
    assert space.member("bob@x.io")["merge_fields"] == {"FNAME": "Bob", "CITY": "Rome"}  # type: ignore[index]
    deliver(
        settings(server, monkeypatch, send_clears=True),
        [from_hubspot(2, "bob@x.io", {"city": ("Rome", None)}, event="e2")],
    )
    member = space.member("bob@x.io")
    assert member is not None
    assert member["merge_fields"] == {"FNAME": "Bob", "CITY": ""}
    assert member["status"] == "subscribed"  # no consent change: left as it was


def test_an_unmapped_change_sends_nothing(
    audience: tuple[Audience, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = audience
    destination = settings(server, monkeypatch)
    event = from_hubspot(3, "cy@x.io", {"first_name": (None, "Cy")}, event="e1")
    [mapped] = shaped([event], destination)
    detached = OutgoingChange(
        from_hubspot(4, "dee@x.io", event="e2", kind=ProfileChangeKind.DETACHED)
    )
    target = MailchimpAudience("mailchimp", destination)
    assert send(target, [OutgoingChange(mapped.event), detached]).refused == []
    assert space.batches == [] and space.members == {}


def test_consent_sets_the_status(
    audience: tuple[Audience, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = audience
    space.seed("bob@x.io", "subscribed")
    destination = settings(server, monkeypatch)
    deliver(
        destination,
        [
            from_hubspot(1, "ada@x.io", event="e1", newsletter="OPT_IN"),
            from_hubspot(2, "bob@x.io", event="e2", newsletter="OPT_OUT"),
            from_hubspot(3, "cy@x.io", event="e3", kind=ProfileChangeKind.CREATED),
        ],
    )
    statuses = {m["email_address"]: m["status"] for m in space.members.values()}
    assert statuses == {
        "ada@x.io": "subscribed",
        "bob@x.io": "unsubscribed",
        "cy@x.io": "transactional",
    }
    deliver(destination, [from_hubspot(1, "ada@x.io", event="e4", newsletter="OPT_OUT")])
    assert space.member("ada@x.io")["status"] == "unsubscribed"  # type: ignore[index]


def test_batches_keep_to_500_members(
    audience: tuple[Audience, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = audience
    events = [
        from_hubspot(n, f"p{n}@x.io", {"first_name": (None, f"P{n}")}, event="e1")
        for n in range(501)
    ]
    assert deliver(settings(server, monkeypatch), events).refused == []
    assert space.batches == [500, 1]
    assert len(space.members) == 501


def test_a_member_error_refuses_only_that_profile(
    audience: tuple[Audience, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = audience
    events = [
        from_hubspot(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1"),
        from_hubspot(2, "not-an-email", {"first_name": (None, "Bob")}, event="e2"),
        from_hubspot(3, "cy@x.io", {"first_name": (None, "Cy")}, event="e3"),
    ]
    [refused] = deliver(settings(server, monkeypatch), events).refused
    assert refused.change.event.profile_id == 2 and refused.status == 400
    assert refused.answer.startswith("ERROR_GENERIC: <member> looks fake or invalid")
    assert "not-an-email" not in refused.answer
    assert sorted(m["email_address"] for m in space.members.values()) == ["ada@x.io", "cy@x.io"]


def test_a_profile_without_email_is_refused_before_sending(
    audience: tuple[Audience, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = audience
    [refused] = deliver(
        settings(server, monkeypatch),
        [from_hubspot(1, None, {"first_name": (None, "A")}, event="e1")],
    ).refused
    assert refused.status is None and "no email" in refused.answer
    assert space.batches == []


def test_the_same_chunk_twice_leaves_the_same_members(
    audience: tuple[Audience, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = audience
    events = [
        from_hubspot(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1", newsletter="OPT_IN"),
        from_hubspot(2, "bob@x.io", {"city": (None, "Rome")}, event="e2"),
    ]
    destination = settings(server, monkeypatch)
    deliver(destination, events)
    once = copy.deepcopy({k: (m["status"], m["merge_fields"]) for k, m in space.members.items()})
    deliver(destination, events)
    assert {k: (m["status"], m["merge_fields"]) for k, m in space.members.items()} == once
    assert len(space.members) == 2


def test_an_erased_profile_is_deleted_permanently_once(
    audience: tuple[Audience, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = audience
    space.seed("ada@x.io", "subscribed", FNAME="Ada")
    destination = settings(server, monkeypatch)
    erased = [
        from_hubspot(1, "ada@x.io", {"first_name": ("Ada", "Ada L.")}, event="e1"),
        from_hubspot(1, "ada@x.io", event="e2", kind=ProfileChangeKind.ERASED),
    ]
    assert deliver(destination, erased, times=2).refused == []  # the second time: a 404
    assert space.members == {} and space.deletions == 1
    assert space.batches == []  # the update before the erasure was not written
    [refused] = deliver(
        destination, [from_hubspot(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e3")]
    ).refused
    assert "permanently deleted" in refused.answer


def test_throttling_is_waited_out_and_a_wrong_key_is_an_outage(
    audience: tuple[Audience, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = audience
    server.faults.script(429, 503)
    event = from_hubspot(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1")
    assert deliver(settings(server, monkeypatch), [event]).refused == []
    assert server.statuses[429] == 1 and server.statuses[503] == 1 and len(space.members) == 1
    monkeypatch.setenv("MAILCHIMP_OTHER_KEY", "wrong-us6")
    wrong = settings(
        server,
        monkeypatch,
        api={
            "base_url": f"{server.url}/3.0",
            "token": {"env": "MAILCHIMP_OTHER_KEY"},
            "max_attempts": 1,
        },
    )
    with pytest.raises(ApiUnavailable, match="credentials refused"):
        deliver(wrong, [event])


def test_settings_say_what_mailchimp_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {
        "kind": "mailchimp",
        "api": {"base_url": "https://us6.api.mailchimp.com/3.0", "token": {"env": "K"}},
        "list_id": LIST_ID,
        "attributes": {"first_name": "FNAME"},
    }
    MailchimpDestination.model_validate(base)
    wrong: list[tuple[dict[str, object], str]] = [
        (
            {"api": {"base_url": "https://api.mailchimp.com/3.0", "token": {"env": "K"}}},
            "data center",
        ),
        ({"api": {"base_url": "https://us6.api.mailchimp.com", "token": {"env": "K"}}}, "/3.0"),
        ({"api": {"base_url": "https://us6.api.mailchimp.com/3.0"}}, "API key"),
        ({"attributes": {"first_name": "fname"}}, "merge tag"),
        ({"attributes": {}}, "merge fields"),
        ({"consents": {"newsletter": "subscribed"}}, "one subscription status"),
        ({"batch_size": 501}, "less than or equal to 500"),
        ({"status_if_new": "archived"}, "status_if_new"),
    ]
    for change_to, message in wrong:
        with pytest.raises(ValidationError, match=message):
            MailchimpDestination.model_validate({**base, **change_to})


def test_a_key_of_another_data_center_is_named_when_opening(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILCHIMP_TEST_KEY", "abc-us21")
    destination = MailchimpDestination.model_validate(
        {
            "kind": "mailchimp",
            "api": {
                "base_url": "https://us6.api.mailchimp.com/3.0",
                "token": {"env": "MAILCHIMP_TEST_KEY"},
            },
            "list_id": LIST_ID,
            "attributes": {"first_name": "FNAME"},
        }
    )
    with pytest.raises(ValueError, match="data center us21"):
        asyncio.run(MailchimpAudience("mailchimp", destination).open())
