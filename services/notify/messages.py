"""What a notice says: one plain-text rendering (Slack's text, the mail's body and
subject) and one JSON shape (the generic webhook's).

A notice's text is a headline and one line per entry:

    crmsync-prod: 2 incidents, 1 resolved
    - ERROR sync failing: source hubspot (reason http_503, failures 6) at 2026-12-03 09:30:12Z
    - RESOLVED authentication failing: source salesforce

Everything in it comes from an ``Incident``, whose fields are names, codes and numbers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from services.notify.incidents import Entry, IncidentKind, Notice, Status

MESSAGE_TYPE: Final = "crmsync.notification"
SUBJECT_LIMIT: Final = 160

KIND_TITLES: Final = {
    IncidentKind.SYNC_FAILING: "sync failing",
    IncidentKind.AUTH_FAILING: "authentication failing",
    IncidentKind.REJECTION_SPIKE: "rejection spike",
    IncidentKind.FULLSYNC_FINISHED: "full sync finished",
    IncidentKind.FULLSYNC_FAILED: "full sync failed",
    IncidentKind.DESTINATION_DEAD_LETTER: "destination dead-lettering",
}


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def what(entry: Entry) -> str:
    """``sync failing: source hubspot``."""
    incident = entry.incident
    return f"{KIND_TITLES[incident.kind]}: {incident.subject_type} {incident.subject}"


def line(entry: Entry) -> str:
    incident = entry.incident
    if entry.status is Status.RESOLVED:
        return f"RESOLVED {what(entry)}"
    details = [f"reason {incident.reason}"] if incident.reason else []
    details += [f"{name} {value}" for name, value in incident.counts.items()]
    sized = f" ({', '.join(details)})" if details else ""
    return f"{incident.level.upper()} {what(entry)}{sized} at {_utc(incident.at)}"


def headline(notice: Notice) -> str:
    if len(notice.entries) == 1:
        return f"{notice.instance}: {line(notice.entries[0])}"
    resolved = sum(entry.status is Status.RESOLVED for entry in notice.entries)
    firing = len(notice.entries) - resolved
    parts = [f"{firing} incident{'' if firing == 1 else 's'}"] if firing else []
    parts += [f"{resolved} resolved"] if resolved else []
    return f"{notice.instance}: {', '.join(parts)}"


def text(notice: Notice) -> str:
    """The whole message as plain text: the headline, then a line per entry."""
    if len(notice.entries) == 1:
        return headline(notice)
    return "\n".join([headline(notice), *(f"- {line(entry)}" for entry in notice.entries)])


def subject(notice: Notice) -> str:
    """A mail subject that names every entry, as far as a short subject allows."""
    if len(notice.entries) == 1:
        return headline(notice)
    names = [
        f"{'resolved ' if e.status is Status.RESOLVED else ''}"
        f"{KIND_TITLES[e.incident.kind]} ({e.incident.subject})"
        for e in notice.entries
    ]
    summary = f"{headline(notice)}: {', '.join(names)}"
    if len(summary) <= SUBJECT_LIMIT:
        return summary
    return summary[: SUBJECT_LIMIT - 3].rstrip(" ,") + "..."


def incident_json(entry: Entry) -> dict[str, Any]:
    incident = entry.incident
    return {
        "kind": incident.kind.value,
        "status": entry.status.value,
        "severity": incident.level.value,
        "subject": incident.subject,
        "subject_type": incident.subject_type,
        "reason": incident.reason,
        "counts": dict(incident.counts),
        "at": incident.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "summary": line(entry),
    }


def webhook_json(notice: Notice, *, now: datetime) -> dict[str, Any]:
    return {
        "type": MESSAGE_TYPE,
        "id": notice.id,
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "instance": notice.instance,
        "text": text(notice),
        "incidents": [incident_json(entry) for entry in notice.entries],
    }
