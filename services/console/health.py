"""The health light of a source or destination, and the rule that set it.

The rules are checked in order and the first that holds sets the light, so a page
always says why: "error: 3 polls in a row failed (401 ...)" rather than a colour
alone. Thresholds are those of the alert rules (deploy/prometheus/alerts.yml), so
the console and the alerts agree: three failed polls in a row, 5 % of the last
hour's changes rejected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

POLL_FAILURES_ERROR: Final = 3
REJECTED_SHARE_WARNING: Final = 0.05
REJECTED_SHARE_ERROR: Final = 0.5
REJECTED_AT_LEAST: Final = 3
DEAD_LETTERS_ERROR: Final = 10
WAITING_WARNING: Final = 10_000
AUTH_FAILURE: Final = re.compile(r"\b(401|403)\b|unauthori[sz]ed|forbidden|invalid.*token", re.I)


class Light(StrEnum):
    HEALTHY = "healthy"
    WARNING = "warning"
    ERROR = "error"
    INACTIVE = "inactive"


@dataclass(frozen=True)
class Health:
    light: Light
    rule: str
    auth: bool = False
    """The error is an authentication failure (notified as such)."""


@dataclass(frozen=True)
class SourceFacts:
    """What the light of a source is decided from (ingest's status and the index)."""

    paused_since: str | None = None
    poll: dict[str, Any] | None = None
    fullsync: dict[str, Any] | None = None
    received_last_hour: int = 0
    rejected_last_hour: int = 0
    last_received_at: str | None = None
    last_applied_at: str | None = None
    older_profiles: int = 0
    mapping_version: int = 0
    ingest_error: str | None = None


def source_health(facts: SourceFacts) -> Health:
    if facts.ingest_error is not None:
        return Health(Light.ERROR, f"ingest's admin API not answering: {facts.ingest_error}")
    if facts.paused_since is not None:
        return Health(Light.INACTIVE, f"paused since {_when(facts.paused_since)}; changes queue")
    poll = facts.poll or {}
    failures = int(poll.get("consecutive_failures") or 0)
    last_error = str(poll.get("last_error") or "")
    if failures >= POLL_FAILURES_ERROR:
        auth = bool(AUTH_FAILURE.search(last_error))
        what = "authentication failing" if auth else f"{failures} polls in a row failed"
        return Health(Light.ERROR, f"{what}: {last_error}", auth=auth)
    sync = facts.fullsync or {}
    if sync.get("status") == "FAILED":
        return Health(
            Light.ERROR, f"the last full sync failed: {sync.get('reason') or 'no reason'}"
        )
    share = _share(facts.rejected_last_hour, facts.received_last_hour)
    rejected = f"{facts.rejected_last_hour} of {facts.received_last_hour} changes rejected"
    if facts.rejected_last_hour >= REJECTED_AT_LEAST and share >= REJECTED_SHARE_ERROR:
        return Health(Light.ERROR, f"{rejected} in the last hour")
    if failures:
        return Health(Light.WARNING, f"the last poll failed: {last_error}")
    if facts.rejected_last_hour and share >= REJECTED_SHARE_WARNING:
        return Health(Light.WARNING, f"{rejected} in the last hour")
    if facts.older_profiles:
        return Health(
            Light.WARNING,
            f"a full sync is due: {facts.older_profiles} profiles written under a mapping "
            f"older than v{facts.mapping_version}",
        )
    if sync.get("status") == "RUNNING":
        return Health(Light.HEALTHY, "a full sync is running")
    if poll.get("last_success_at"):
        return Health(Light.HEALTHY, f"last poll succeeded at {_when(poll['last_success_at'])}")
    if facts.last_received_at or facts.last_applied_at:
        last = facts.last_received_at or facts.last_applied_at
        return Health(Light.HEALTHY, f"last change at {_when(last)}")
    return Health(Light.INACTIVE, "nothing received yet")


@dataclass(frozen=True)
class DestinationFacts:
    paused: bool = False
    """Paused in its config."""
    paused_since: str | None = None
    """Paused by an operator (crmsync destination pause, the console)."""
    waiting: int | None = None
    dead_letters_last_hour: int = 0
    kafka_error: str | None = None


def destination_health(facts: DestinationFacts) -> Health:
    if facts.paused:
        return Health(Light.INACTIVE, "paused in the config; its changes wait in Kafka")
    if facts.paused_since is not None:
        return Health(
            Light.INACTIVE, f"paused since {_when(facts.paused_since)}; its changes wait in Kafka"
        )
    if facts.dead_letters_last_hour >= DEAD_LETTERS_ERROR:
        return Health(
            Light.ERROR, f"{facts.dead_letters_last_hour} changes dead-lettered in the last hour"
        )
    if facts.kafka_error is not None:
        return Health(Light.WARNING, f"backlog unknown: {facts.kafka_error}")
    if facts.dead_letters_last_hour:
        return Health(
            Light.WARNING, f"{facts.dead_letters_last_hour} changes dead-lettered in the last hour"
        )
    if facts.waiting is not None and facts.waiting >= WAITING_WARNING:
        return Health(Light.WARNING, f"{facts.waiting} changes waiting")
    waiting = "nothing" if not facts.waiting else f"{facts.waiting} changes"
    return Health(Light.HEALTHY, f"delivering; {waiting} waiting")


def _share(part: int, whole: int) -> float:
    return part / whole if whole else (1.0 if part else 0.0)


def _when(text: str | None) -> str:
    """An ISO time as a person reads it, in UTC."""
    try:
        return datetime.fromisoformat(str(text)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return str(text)
