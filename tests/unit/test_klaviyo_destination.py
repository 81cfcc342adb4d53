"""The Klaviyo destination against the fake of its REST API, served on loopback: what a
chunk of changes becomes in the account, and what each answer does."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Unpack

import pytest
from pydantic import ValidationError

from services.core.api_client import ApiUnavailable
from services.core.contracts import FieldValue
from services.core.destinations.klaviyo import KlaviyoDestination
from services.core.profile_changed import (
    ProfileChanged,
    ProfileChangeKind,
)
from services.outbound.destinations.klaviyo import KlaviyoProfiles, named_profile
from services.outbound.outgoing import OutgoingChange
from tests.fakes import klaviyo
from tests.fakes.klaviyo import Account
from tests.fakes.server import FakeServer, ServerThread
from tests.support.destinations import (
    Attributes,
    FromHubSpot,
    deliver,
    from_hubspot,
    linked,
    send,
)

pytestmark = pytest.mark.unit

LIST_ID = "Y6nRLr"
SUBSCRIBE = "profile-subscription-bulk-create-job"
UNSUBSCRIBE = "profile-subscription-bulk-delete-job"


@pytest.fixture
def account() -> Iterator[tuple[Account, FakeServer]]:
    space = Account()
    with ServerThread(klaviyo.server(space)) as server:
        yield space, server


def settings(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, **values: object
) -> KlaviyoDestination:
    monkeypatch.setenv("KLAVIYO_TEST_KEY", klaviyo.PRIVATE_KEY)
    return KlaviyoDestination.model_validate(
        {
            "kind": "klaviyo",
            "source": "klaviyo",
            "api": {
                "base_url": server.url,
                "token": {"env": "KLAVIYO_TEST_KEY"},
                "max_attempts": 3,
                "backoff_initial_seconds": 0.05,
                "backoff_max_seconds": 2,
                "max_requests_per_second": 1000,
            },
            "list_id": LIST_ID,
            "attributes": {
                "first_name": "first_name",
                "city": "location.city",
                "shoe_size": "shoe_size",
            },
            "consents": {"newsletter": "email_marketing"},
            **values,
        }
    )


def change(
    profile: int,
    email: str | None,
    attributes: Attributes | None = None,
    *,
    klaviyo_id: str | None = None,
    **given: Unpack[FromHubSpot],
) -> ProfileChanged:
    """A HubSpot profile's change; ``klaviyo_id``: the Klaviyo profile id it carries."""
    return from_hubspot(profile, email, attributes, crm=linked("klaviyo", klaviyo_id), **given)


def test_a_profile_is_created_reported_and_then_updated_by_id(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    destination = settings(server, monkeypatch)
    created = deliver(
        destination,
        [
            change(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1"),
            change(1, "ada@x.io", {"city": (None, "Oslo"), "shoe_size": (None, 38)}, event="e2"),
        ],
    )
    assert created.refused == [] and space.imports == 1
    [(profile_id, klaviyo_id)] = created.assigned.items()
    assert profile_id == 1
    stored = space.profiles[klaviyo_id]
    assert stored["email"] == "ada@x.io" and stored["first_name"] == "Ada"
    assert stored["location"] == {"city": "Oslo"} and stored["properties"] == {"shoe_size": 38}
    # Linked: found by id, even under a new email.
    updated = deliver(
        destination,
        [
            change(
                1, "ada@y.io", {"first_name": ("Ada", "Ada L.")}, event="e3", klaviyo_id=klaviyo_id
            )
        ],
    )
    assert updated.refused == [] and updated.assigned == {}
    assert list(space.profiles) == [klaviyo_id]
    assert space.profiles[klaviyo_id]["email"] == "ada@y.io"
    assert space.profiles[klaviyo_id]["first_name"] == "Ada L."


def test_only_what_changed_is_sent_and_a_clear_only_when_asked(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    first = deliver(
        settings(server, monkeypatch),
        [
            change(
                2,
                "bob@x.io",
                {"first_name": (None, "Bob"), "city": (None, "Rome"), "shoe_size": (None, 44)},
                event="e1",
            )
        ],
    )
    [klaviyo_id] = first.assigned.values()
    clears: dict[str, tuple[FieldValue, FieldValue]] = {
        "first_name": ("Bob", None),
        "city": ("Rome", None),
        "shoe_size": (44, None),
    }
    deliver(settings(server, monkeypatch), [change(2, "bob@x.io", clears, event="e2")])
    stored = space.profiles[klaviyo_id]
    assert (stored["first_name"], stored["location"], stored["properties"]) == (
        "Bob",
        {"city": "Rome"},
        {"shoe_size": 44},
    )
    deliver(
        settings(server, monkeypatch, send_clears=True), [change(2, "bob@x.io", clears, event="e3")]
    )
    stored = space.profiles[klaviyo_id]
    assert "first_name" not in stored and stored["location"] == {} and stored["properties"] == {}
    assert stored["email"] == "bob@x.io"


def test_a_change_with_nothing_for_klaviyo_sends_nothing(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    destination = settings(server, monkeypatch)

    nothing = [
        OutgoingChange(change(1, "a@x.io", event="e1")),
        OutgoingChange(change(2, "b@x.io", event="e2", kind=ProfileChangeKind.DETACHED)),
    ]
    assert send(KlaviyoProfiles("klaviyo", destination), nothing).refused == []
    assert server.requests == 0 and space.profiles == {}


def test_consent_changes_go_in_bulk_jobs_for_the_list(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    destination = settings(server, monkeypatch)
    delivered = deliver(
        destination,
        [
            change(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1", newsletter="OPT_IN"),
            change(2, "bob@x.io", event="e2", newsletter="OPT_IN"),
            change(3, "cy@x.io", event="e3", newsletter="OPT_OUT"),
        ],
    )
    assert delivered.refused == []
    assert space.jobs == [(SUBSCRIBE, 2), (UNSUBSCRIBE, 1)]
    consent = {p["email"]: p["consent"] for p in space.profiles.values()}
    assert consent == {
        "ada@x.io": "SUBSCRIBED",
        "bob@x.io": "SUBSCRIBED",
        "cy@x.io": "UNSUBSCRIBED",
    }
    on_list = {space.profiles[i]["email"] for i in space.members[LIST_ID]}
    assert on_list == {"ada@x.io", "bob@x.io"}
    deliver(destination, [change(1, "ada@x.io", event="e4", newsletter="OPT_OUT")])
    assert {space.profiles[i]["email"] for i in space.members[LIST_ID]} == {"bob@x.io"}


def test_jobs_keep_to_the_documented_limits(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    events = [change(n, f"p{n}@x.io", event="e1", newsletter="OPT_OUT") for n in range(101)]
    assert deliver(settings(server, monkeypatch), events).refused == []
    assert space.jobs == [(UNSUBSCRIBE, 100), (UNSUBSCRIBE, 1)]
    assert space.imports == 0


def test_a_refused_profile_is_refused_alone(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    events = [
        change(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1"),
        change(2, "not-an-email", {"first_name": (None, "Bob")}, event="e2"),
        change(3, "cy@x.io", {"first_name": (None, "Cy")}, event="e3"),
        change(4, None, {"first_name": (None, "Dee")}, event="e4"),
    ]
    delivered = deliver(settings(server, monkeypatch), events)
    refused = {r.change.event.profile_id: r for r in delivered.refused}
    assert sorted(refused) == [2, 4]
    assert refused[2].status == 400 and "/data/attributes/email" in refused[2].answer
    assert refused[4].status is None
    assert sorted(p["email"] for p in space.profiles.values()) == ["ada@x.io", "cy@x.io"]
    assert sorted(delivered.assigned) == [1, 3]


def test_a_profile_a_job_points_at_is_refused_alone(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    events = [
        change(1, "ada@x.io", event="e1", newsletter="OPT_IN"),
        change(2, "bad@", event="e2", newsletter="OPT_IN"),
        change(3, "cy@x.io", event="e3", newsletter="OPT_IN"),
    ]
    [refused] = deliver(settings(server, monkeypatch), events).refused
    assert refused.change.event.profile_id == 2 and refused.status == 400
    assert space.jobs == [(SUBSCRIBE, 2)]
    assert named_profile(refused.answer) == 1


def test_the_same_chunk_twice_leaves_the_same_account(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    events = [
        change(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1", newsletter="OPT_IN"),
        change(2, "bob@x.io", {"city": (None, "Rome")}, event="e2"),
    ]
    destination = settings(server, monkeypatch)
    deliver(destination, events)
    once = copy.deepcopy((space.profiles, space.members))
    twice = deliver(destination, events)
    assert (space.profiles, space.members) == once
    assert sorted(twice.assigned) == [1, 2]  # matched by email: the same ids again


def test_an_erased_profile_gets_a_deletion_job(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    destination = settings(server, monkeypatch)
    [ada_id] = deliver(
        destination, [change(1, "ada@x.io", {"first_name": (None, "A")}, event="e1")]
    ).assigned.values()
    deliver(destination, [change(2, "bob@x.io", {"first_name": (None, "B")}, event="e2")])
    erased = deliver(
        destination,
        [
            change(1, "ada@x.io", {"first_name": ("A", "Ada")}, event="e3", klaviyo_id=ada_id),
            change(1, "ada@x.io", event="e4", kind=ProfileChangeKind.ERASED, klaviyo_id=ada_id),
            change(2, "bob@x.io", event="e5", kind=ProfileChangeKind.ERASED),
        ],
        times=2,
    )
    assert erased.refused == [] and space.profiles == {}
    assert ada_id in space.deleted and len(space.deleted) == 2
    assert space.imports == 2  # the update before the erasure was not written


def test_throttling_is_waited_out_and_a_wrong_key_is_an_outage(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    server.faults.script(429, 502)
    event = change(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1")
    assert deliver(settings(server, monkeypatch), [event]).refused == []
    assert server.statuses[429] == 1 and server.statuses[502] == 1 and len(space.profiles) == 1
    monkeypatch.setenv("KLAVIYO_OTHER_KEY", "pk_wrong")
    wrong = settings(
        server,
        monkeypatch,
        api={"base_url": server.url, "token": {"env": "KLAVIYO_OTHER_KEY"}, "max_attempts": 1},
    )
    with pytest.raises(ApiUnavailable, match="credentials refused"):
        deliver(wrong, [event])


def test_settings_say_what_klaviyo_needs() -> None:
    base = {
        "kind": "klaviyo",
        "api": {"base_url": "https://a.klaviyo.com", "token": {"env": "K"}},
        "consents": {"newsletter": "email_marketing"},
    }
    KlaviyoDestination.model_validate(base)
    wrong: list[tuple[dict[str, object], str]] = [
        ({"api": {"base_url": "https://a.klaviyo.com/api", "token": {"env": "K"}}}, "host only"),
        ({"api": {"base_url": "https://a.klaviyo.com"}}, "private API key"),
        ({"consents": {"newsletter": "sms"}}, "email_marketing"),
        ({"attributes": {"town": "location.town"}}, "no location field"),
        ({"revision": "July 2026"}, "revision"),
        ({"batch_size": 1001}, "less than or equal to 1000"),
    ]
    for change_to, message in wrong:
        with pytest.raises(ValidationError, match=message):
            KlaviyoDestination.model_validate({**base, **change_to})
