"""What the notifier is told: an incident (kind, subject, severity, reason code, counts)
and what it sends on: an entry (an incident firing or resolved) and a notice (the
entries of one group, for one channel).

An incident carries no free text. Its subject is a source's or destination's name
from the config, its reason a short code, its counts numbers under code names: the
constructor refuses anything else, so an email address, a name or a phone number
cannot reach a message, whatever a caller passes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

NAME_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
"""A source's, destination's or channel's name (the config's rule for names)."""
CODE_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
"""A reason code or a count's name: lower case, no spaces, short."""


class IncidentKind(StrEnum):
    SYNC_FAILING = "sync_failing"
    AUTH_FAILING = "auth_failing"
    REJECTION_SPIKE = "rejection_spike"
    FULLSYNC_FINISHED = "fullsync_finished"
    FULLSYNC_FAILED = "fullsync_failed"
    DESTINATION_DEAD_LETTER = "destination_dead_letter"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS: Final = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}

DEFAULT_SEVERITY: Final = {
    IncidentKind.SYNC_FAILING: Severity.ERROR,
    IncidentKind.AUTH_FAILING: Severity.ERROR,
    IncidentKind.REJECTION_SPIKE: Severity.WARNING,
    IncidentKind.FULLSYNC_FINISHED: Severity.INFO,
    IncidentKind.FULLSYNC_FAILED: Severity.ERROR,
    IncidentKind.DESTINATION_DEAD_LETTER: Severity.WARNING,
}

DESTINATION_KINDS: Final = frozenset({IncidentKind.DESTINATION_DEAD_LETTER})
"""Kinds whose subject is a destination; every other kind's is a source."""

IncidentKey = tuple[IncidentKind, str]
"""What makes two incidents the same one: their kind and subject."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Incident:
    kind: IncidentKind
    subject: str
    """The source's or destination's name, as the config spells it."""
    reason: str | None = None
    """A short code (``http_503``, ``invalid_grant``), never a message text."""
    counts: Mapping[str, int] = field(default_factory=dict)
    """Numbers that size it, under code names (``failures``, ``rejected``)."""
    severity: Severity | None = None
    """None: the kind's default severity."""
    at: datetime = field(default_factory=_now)

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.subject):
            raise ValueError("an incident's subject is a source or destination name")
        if self.reason is not None and not CODE_PATTERN.match(self.reason):
            raise ValueError("an incident's reason is a short code, not free text")
        for name, value in self.counts.items():
            if (
                not CODE_PATTERN.match(name)
                or isinstance(value, bool)
                or not isinstance(value, int)
            ):
                raise ValueError("an incident's counts are integers under code names")
        if self.at.tzinfo is None:
            raise ValueError("an incident's time must carry its time zone")

    @property
    def key(self) -> IncidentKey:
        return (self.kind, self.subject)

    @property
    def level(self) -> Severity:
        return self.severity or DEFAULT_SEVERITY[self.kind]

    @property
    def subject_type(self) -> str:
        return "destination" if self.kind in DESTINATION_KINDS else "source"


@dataclass(frozen=True)
class Resolution:
    """The incident of this kind and subject is over: its cooldown starts afresh."""

    kind: IncidentKind
    subject: str

    @property
    def key(self) -> IncidentKey:
        return (self.kind, self.subject)


class Status(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class Entry:
    """One line of a notice: an incident, firing or (the one told before) resolved."""

    incident: Incident
    status: Status


@dataclass(frozen=True)
class Notice:
    """One message: the entries of a group that go to one channel."""

    id: str
    """The same on every attempt, so a receiver can drop a repeat."""
    instance: str
    """How the messages name this deployment."""
    entries: tuple[Entry, ...]
