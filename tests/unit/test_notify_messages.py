"""What a notice says, as text (Slack, mail) and as the generic webhook's JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.core.logs import EMAIL_PATTERN
from services.notify import messages
from services.notify.incidents import Entry, Incident, IncidentKind, Notice, Status

pytestmark = pytest.mark.unit

AT = datetime(2026, 12, 3, 9, 30, 12, tzinfo=UTC)


def notice(*entries: Entry) -> Notice:
    return Notice(id="msg_1", instance="crmsync-prod", entries=entries)


FAILING = Entry(
    Incident(
        IncidentKind.SYNC_FAILING, "hubspot", reason="http_503", counts={"failures": 6}, at=AT
    ),
    Status.FIRING,
)
AUTH = Entry(Incident(IncidentKind.AUTH_FAILING, "salesforce", at=AT), Status.FIRING)
DEAD = Entry(
    Incident(IncidentKind.DESTINATION_DEAD_LETTER, "cdp", counts={"refused": 3}, at=AT),
    Status.FIRING,
)
RESOLVED = Entry(Incident(IncidentKind.SYNC_FAILING, "webcrm", at=AT), Status.RESOLVED)


def test_one_incident_is_one_line() -> None:
    assert messages.text(notice(FAILING)) == (
        "crmsync-prod: ERROR sync failing: source hubspot (reason http_503, failures 6) "
        "at 2026-12-03 09:30:12Z"
    )
    assert messages.subject(notice(RESOLVED)) == (
        "crmsync-prod: RESOLVED sync failing: source webcrm"
    )


def test_a_group_has_a_headline_and_a_line_each() -> None:
    assert messages.text(notice(FAILING, DEAD, RESOLVED)).splitlines() == [
        "crmsync-prod: 2 incidents, 1 resolved",
        "- ERROR sync failing: source hubspot (reason http_503, failures 6) "
        "at 2026-12-03 09:30:12Z",
        "- WARNING destination dead-lettering: destination cdp (refused 3) at 2026-12-03 09:30:12Z",
        "- RESOLVED sync failing: source webcrm",
    ]
    assert messages.subject(notice(FAILING, AUTH)) == (
        "crmsync-prod: 2 incidents: sync failing (hubspot), authentication failing (salesforce)"
    )


def test_a_long_subject_is_cut_short() -> None:
    many = [
        Entry(Incident(IncidentKind.REJECTION_SPIKE, f"source-{n:02d}", at=AT), Status.FIRING)
        for n in range(20)
    ]
    subject = messages.subject(notice(*many))
    assert len(subject) <= messages.SUBJECT_LIMIT
    assert subject.startswith("crmsync-prod: 20 incidents: rejection spike (source-00)")
    assert subject.endswith("...")


def test_the_webhook_json_has_a_stable_shape() -> None:
    body = messages.webhook_json(notice(FAILING, RESOLVED), now=AT)
    assert body["type"] == "crmsync.notification"
    assert body["id"] == "msg_1"
    assert body["timestamp"] == "2026-12-03T09:30:12Z"
    assert body["instance"] == "crmsync-prod"
    assert body["incidents"] == [
        {
            "kind": "sync_failing",
            "status": "firing",
            "severity": "error",
            "subject": "hubspot",
            "subject_type": "source",
            "reason": "http_503",
            "counts": {"failures": 6},
            "at": "2026-12-03T09:30:12Z",
            "summary": "ERROR sync failing: source hubspot (reason http_503, failures 6) "
            "at 2026-12-03 09:30:12Z",
        },
        {
            "kind": "sync_failing",
            "status": "resolved",
            "severity": "error",
            "subject": "webcrm",
            "subject_type": "source",
            "reason": None,
            "counts": {},
            "at": "2026-12-03T09:30:12Z",
            "summary": "RESOLVED sync failing: source webcrm",
        },
    ]


@pytest.mark.parametrize("kind", list(IncidentKind))
def test_every_kind_has_a_title_and_no_message_holds_an_address(kind: IncidentKind) -> None:
    entry = Entry(Incident(kind, "hubspot", reason="x", counts={"n": 1}, at=AT), Status.FIRING)
    rendered = [messages.text(notice(entry)), messages.subject(notice(entry))]
    rendered.append(str(messages.webhook_json(notice(entry), now=AT)))
    assert kind in messages.KIND_TITLES
    assert not any(EMAIL_PATTERN.search(text) for text in rendered)
