"""The APSIS One destination against the fake of its public API, served on loopback."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from services.core.api_client import ApiUnavailable
from services.core.destinations.apsis import ApsisDestination
from services.core.profile_changed import (
    ProfileChanged,
    ProfileChangeKind,
)
from services.outbound.destinations.apsis import ApsisProfiles
from services.outbound.destinations.base import Delivered
from tests.fakes import apsis
from tests.fakes.apsis import Account
from tests.fakes.server import FakeServer, ServerThread
from tests.support.destinations import from_hubspot, send_each, shaped

pytestmark = pytest.mark.unit

SECTION = "com.apsis1.sections.default"
EMAIL_KEYSPACE = "com.apsis1.keyspaces.email"
FIRST, LAST, EMAIL_ATTR = "312460234", "312461234", "312462234"
TOPIC = (SECTION, "usercreated.targets.news", "usercreated.topics.weekly")


@pytest.fixture
def account() -> Iterator[tuple[Account, FakeServer]]:
    space = Account(sections={SECTION: {FIRST, LAST, EMAIL_ATTR}}, topics={TOPIC})
    with ServerThread(apsis.server(space)) as server:
        yield space, server


def settings(
    server: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    secret: str = apsis.CLIENT_SECRET,
    **values: object,
) -> ApsisDestination:
    monkeypatch.setenv("APSIS_TEST_SECRET", secret)
    return ApsisDestination.model_validate(
        {
            "kind": "apsis",
            "api": {"base_url": server.url, "max_attempts": 3, "backoff_initial_seconds": 0.05},
            "client_id": apsis.CLIENT_ID,
            "client_secret": {"env": "APSIS_TEST_SECRET"},
            "section": SECTION,
            "attributes": {"first_name": FIRST, "last_name": LAST},
            "email_attribute": EMAIL_ATTR,
            "consents": {"newsletter": "weekly"},
            "topics": {
                "weekly": {
                    "consent_list_discriminator": TOPIC[1],
                    "topic_discriminator": TOPIC[2],
                }
            },
            **values,
        }
    )


def send(
    destination: ApsisDestination, *chunks: Sequence[ProfileChanged], account: Account | None = None
) -> list[Delivered]:
    """The chunks sent in turn by one opened destination; with ``account``, its tokens
    expire before each chunk but the first, so the second finds its session gone."""
    return send_each(
        ApsisProfiles("apsis", destination),
        [shaped(events, destination) for events in chunks],
        between=None if account is None else account.expire_tokens,
    )


def key(email: str) -> tuple[str, str]:
    return (EMAIL_KEYSPACE, email)


def test_a_profile_is_created_then_updated_with_only_what_changed(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    destination = settings(server, monkeypatch)
    [first, second] = send(
        destination,
        [
            from_hubspot(1, "ada@x.io", {"first_name": (None, "Ada")}, event="e1"),
            from_hubspot(
                1,
                "ada@x.io",
                {"first_name": ("Ada", "Ada L."), "last_name": (None, "L")},
                event="e2",
            ),
        ],
        [from_hubspot(1, "ada@x.io", {"last_name": ("L", None)}, event="e3")],
    )
    assert first == second == Delivered()
    assert space.profiles[key("ada@x.io")] == {
        SECTION: {FIRST: "Ada L.", LAST: "L", EMAIL_ATTR: "ada@x.io"}
    }
    assert space.calls["attributes"] == 1  # e3 only clears: left out by default, no call
    send(
        settings(server, monkeypatch, send_clears=True),
        [from_hubspot(1, "ada@x.io", {"last_name": ("L", None)}, event="e4")],
    )
    assert LAST not in space.profiles[key("ada@x.io")][SECTION]


def test_consents_opt_in_subscribe_and_opt_out(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    destination = settings(server, monkeypatch)
    [opted] = send(destination, [from_hubspot(2, "bob@x.io", {}, event="e1", newsletter="OPT_IN")])
    assert opted == Delivered()
    address = ("com.apsis1.channels.email", "bob@x.io", TOPIC[2])
    assert space.consents[address] == "opt-in"
    assert (EMAIL_KEYSPACE, "bob@x.io", SECTION, TOPIC[2]) in space.subscriptions
    send(destination, [from_hubspot(2, "bob@x.io", {}, event="e2", newsletter="OPT_OUT")])
    assert space.consents[address] == "opt-out"


def test_sending_a_chunk_twice_leaves_the_same_state(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    events = [
        from_hubspot(3, "cy@x.io", {"first_name": (None, "Cy")}, event="e1", newsletter="OPT_IN")
    ]
    first, second = send(settings(server, monkeypatch), events, events)
    assert first == second == Delivered()  # the repeated consent's 409 counts as done
    assert len(space.profiles) == 1 and len(space.consents) == 1


def test_a_refusal_names_only_its_profile(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    destination = settings(server, monkeypatch, attributes={"first_name": FIRST, "vip": "999"})
    [delivered] = send(
        destination,
        [
            from_hubspot(4, "di@x.io", {"first_name": (None, "Di")}, event="e1"),
            from_hubspot(5, "ed@x.io", {"vip": (None, True)}, event="e1"),
            from_hubspot(6, None, {"first_name": (None, "Anon")}, event="e1"),
        ],
    )
    refused = {r.change.event.profile_id: (r.status, r.answer) for r in delivered.refused}
    assert refused[5][0] == 400 and "unknown attribute version id 999" in refused[5][1]
    assert refused[6][0] is None
    assert list(space.profiles) == [key("di@x.io")]


def test_an_expired_token_is_renewed_and_a_wrong_secret_is_an_outage(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    send(
        settings(server, monkeypatch),
        [from_hubspot(7, "fa@x.io", {"first_name": (None, "Fa")}, event="e1")],
        [from_hubspot(7, "fa@x.io", {"first_name": ("Fa", "Fay")}, event="e2")],
        account=space,
    )
    assert space.tokens_issued == 2
    assert space.profiles[key("fa@x.io")][SECTION][FIRST] == "Fay"
    with pytest.raises(ApiUnavailable, match="credentials refused"):
        send(
            settings(server, monkeypatch, secret="wrong"),
            [from_hubspot(8, "go@x.io", {"first_name": (None, "Go")}, event="e1")],
        )


def test_throttling_is_waited_out(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    server.faults.script(429, 502)
    [delivered] = send(
        settings(server, monkeypatch),
        [from_hubspot(9, "hu@x.io", {"first_name": (None, "Hu")}, event="e1")],
    )
    assert delivered == Delivered() and key("hu@x.io") in space.profiles
    assert server.statuses[429] == 1


def test_an_erased_profile_is_deleted_and_a_missing_one_counts_as_done(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    destination = settings(server, monkeypatch)
    send(destination, [from_hubspot(10, "io@x.io", {"first_name": (None, "Io")}, event="e1")])
    erase = [from_hubspot(10, "io@x.io", {}, event="e2", kind=ProfileChangeKind.ERASED)]
    first, second = send(destination, erase, erase)
    assert first == second == Delivered()
    assert space.profiles == {} and space.calls["delete"] == 2


def test_profiles_keyed_by_crm_id(
    account: tuple[Account, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    space, server = account
    destination = settings(
        server,
        monkeypatch,
        keyspace="com.apsis1.keyspaces.crm-id",
        crm_id_source="hubspot",
        consents={},
    )
    send(destination, [from_hubspot(11, "ju@x.io", {"first_name": (None, "Ju")}, event="e1")])
    assert list(space.profiles) == [("com.apsis1.keyspaces.crm-id", "11")]


def test_settings_catch_what_apsis_needs() -> None:
    base = {
        "kind": "apsis",
        "api": {"base_url": "https://api.apsis.one"},
        "client_id": "x",
        "client_secret": {"env": "X"},
        "section": SECTION,
    }
    with pytest.raises(ValueError, match="version id"):
        ApsisDestination.model_validate(base)
    with pytest.raises(ValueError, match="not firstname"):
        ApsisDestination.model_validate({**base, "attributes": {"first_name": "firstname"}})
    with pytest.raises(ValueError, match="topics"):
        ApsisDestination.model_validate(
            {**base, "attributes": {"a": "1"}, "consents": {"newsletter": "weekly"}}
        )
    with pytest.raises(ValueError, match="crm_id_source"):
        ApsisDestination.model_validate(
            {**base, "attributes": {"a": "1"}, "keyspace": "com.apsis1.keyspaces.crm-id"}
        )
