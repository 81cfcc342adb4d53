"""What the notifier tells, without any I/O: cooldowns, groups, resolutions, routes,
and incidents that cannot carry personal data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notify.digest import Digest
from services.notify.incidents import (
    Entry,
    Incident,
    IncidentKind,
    Resolution,
    Severity,
    Status,
)
from services.notify.routing import Router
from services.notify.settings import NotificationSettings
from tests.support.notify_receivers import FakeClock

pytestmark = pytest.mark.unit

SYNC = IncidentKind.SYNC_FAILING
AUTH = IncidentKind.AUTH_FAILING


def digest(clock: FakeClock, *, cooldown_s: float = 900, send_resolved: bool = True) -> Digest:
    return Digest(cooldown_s=cooldown_s, send_resolved=send_resolved, clock=clock)


def told(entries: tuple[Entry, ...]) -> list[tuple[str, str, str]]:
    return [(e.incident.kind.value, e.incident.subject, e.status.value) for e in entries]


def test_an_incident_is_told_once_within_its_cooldown_and_again_after_it() -> None:
    clock = FakeClock()
    d = digest(clock)
    assert d.offer(Incident(SYNC, "hubspot"))
    assert told(d.take()) == [("sync_failing", "hubspot", "firing")]
    clock.advance(899)
    assert not d.offer(Incident(SYNC, "hubspot"))
    assert d.take() == ()
    clock.advance(1)
    assert d.offer(Incident(SYNC, "hubspot"))
    assert told(d.take()) == [("sync_failing", "hubspot", "firing")]


def test_the_same_kind_for_another_subject_or_another_kind_is_another_incident() -> None:
    d = digest(FakeClock())
    assert d.offer(Incident(SYNC, "hubspot"))
    assert d.offer(Incident(SYNC, "salesforce"))
    assert d.offer(Incident(AUTH, "hubspot"))
    assert len(d.take()) == 3


def test_a_repeat_within_the_open_group_is_one_line_with_the_latest_counts() -> None:
    d = digest(FakeClock())
    assert d.offer(Incident(SYNC, "hubspot", counts={"failures": 3}))
    assert not d.offer(Incident(SYNC, "hubspot", counts={"failures": 4}))
    (entry,) = d.take()
    assert entry.incident.counts == {"failures": 4}


def test_a_resolved_incident_is_told_again_at_once_when_it_recurs() -> None:
    clock = FakeClock()
    d = digest(clock)
    d.offer(Incident(SYNC, "hubspot"))
    d.take()
    clock.advance(5)
    assert d.resolve(Resolution(SYNC, "hubspot"))
    assert told(d.take()) == [("sync_failing", "hubspot", "resolved")]
    clock.advance(5)
    assert d.offer(Incident(SYNC, "hubspot"))
    assert told(d.take()) == [("sync_failing", "hubspot", "firing")]


def test_resolving_what_was_never_told_sends_nothing() -> None:
    d = digest(FakeClock())
    assert not d.resolve(Resolution(SYNC, "hubspot"))
    d.offer(Incident(SYNC, "hubspot"))
    # Still in the open group: nobody was told, so nobody is told it is over.
    assert not d.resolve(Resolution(SYNC, "hubspot"))
    assert d.take() == ()
    assert d.offer(Incident(SYNC, "hubspot"))


def test_resolved_messages_can_be_turned_off_and_the_cooldown_still_resets() -> None:
    d = digest(FakeClock(), send_resolved=False)
    d.offer(Incident(SYNC, "hubspot"))
    d.take()
    assert not d.resolve(Resolution(SYNC, "hubspot"))
    assert d.take() == ()
    assert d.offer(Incident(SYNC, "hubspot"))


def test_failing_again_before_the_resolved_went_out_is_told_as_failing() -> None:
    d = digest(FakeClock())
    d.offer(Incident(SYNC, "hubspot"))
    d.take()
    d.resolve(Resolution(SYNC, "hubspot"))
    assert d.offer(Incident(SYNC, "hubspot", reason="http_503"))
    assert told(d.take()) == [("sync_failing", "hubspot", "firing")]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["offer", "resolve", "take", "tick"]),
            st.sampled_from(["hubspot", "webcrm"]),
        ),
        max_size=60,
    )
)
def test_an_unresolved_incident_is_never_told_twice_within_its_cooldown(
    steps: list[tuple[str, str]],
) -> None:
    clock = FakeClock()
    d = digest(clock, cooldown_s=10)
    last_told: dict[str, float] = {}
    for action, subject in steps:
        if action == "offer":
            d.offer(Incident(SYNC, subject))
        elif action == "resolve":
            d.resolve(Resolution(SYNC, subject))
            last_told.pop(subject, None)
        elif action == "tick":
            clock.advance(3)
        else:
            for entry in d.take():
                if entry.status is Status.FIRING:
                    subject_told = entry.incident.subject
                    if subject_told in last_told:
                        assert clock() - last_told[subject_told] >= 10
                    last_told[subject_told] = clock()


@pytest.mark.parametrize(
    ("subject", "reason", "counts"),
    [
        ("ada@example.com", None, {}),
        ("Ada Lovelace", None, {}),
        ("hubspot", "contact ada@example.com refused", {}),
        ("hubspot", None, {"ada@example.com": 1}),
        ("hubspot", None, {"rejected": "many"}),
        ("hubspot", None, {"rejected": True}),
        ("+4712345678", None, {}),
    ],
)
def test_an_incident_holds_names_codes_and_numbers_only(
    subject: str, reason: str | None, counts: dict[str, object]
) -> None:
    with pytest.raises(ValueError, match="incident"):
        Incident(SYNC, subject, reason=reason, counts=counts)  # type: ignore[arg-type]


def test_an_incident_time_must_say_its_zone_and_its_severity_defaults_by_kind() -> None:
    with pytest.raises(ValueError, match="time zone"):
        Incident(SYNC, "hubspot", at=datetime(2026, 1, 1))
    assert Incident(SYNC, "hubspot").level is Severity.ERROR
    assert Incident(IncidentKind.FULLSYNC_FINISHED, "hubspot").level is Severity.INFO
    assert (
        Incident(IncidentKind.REJECTION_SPIKE, "x", severity=Severity.ERROR).level is Severity.ERROR
    )
    assert Incident(IncidentKind.DESTINATION_DEAD_LETTER, "cdp").subject_type == "destination"
    oslo = Incident(
        SYNC, "hubspot", at=datetime(2026, 1, 1, 10, tzinfo=timezone(timedelta(hours=1)))
    )
    assert oslo.at.astimezone(UTC).hour == 9


def router(**routing: object) -> Router:
    return Router(
        NotificationSettings.model_validate(
            {
                "channels": {
                    "ops": {"kind": "slack", "url": {"env": "X"}},
                    "oncall": {
                        "kind": "webhook",
                        "url": "http://127.0.0.1:1/hook",
                        "min_severity": "error",
                    },
                },
                **routing,
            }
        )
    )


def test_kinds_go_to_every_channel_unless_routed_and_thresholds_filter() -> None:
    entries = (
        Entry(Incident(SYNC, "hubspot"), Status.FIRING),
        Entry(Incident(IncidentKind.REJECTION_SPIKE, "hubspot"), Status.FIRING),
        Entry(Incident(IncidentKind.FULLSYNC_FINISHED, "webcrm"), Status.RESOLVED),
    )
    split = router().split(entries)
    assert split["ops"] == entries
    assert split["oncall"] == entries[:1]
    routed = router(routes={"sync_failing": ["ops"]}, min_severity="warning").split(entries)
    assert routed == {"ops": entries[:2]}
