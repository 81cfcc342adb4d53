"""What a test sync found, record by record, and its JSON form.

A ``SyncTestReport`` says per record what the mapper would decide (an update, no
update, or a rejection with its reason, and the values it drops), what the store
would make of the update (old -> new per attribute and consent, or a new profile),
and what each destination would be sent. ``report_json`` is the one JSON form: the
console's API answers with it, ``crmsync source test --json`` prints it, and the
CLI's text is rendered from it, so the page, scripts and the shell agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from services.core.contracts import FieldValue


class ValueVerdict(StrEnum):
    """What the store would do with one attribute's or consent's value."""

    NEW = "new"
    """The profile has no value yet: the update's is written."""
    CHANGED = "changed"
    CLEARED = "cleared"
    UNCHANGED = "unchanged"
    KEPT = "kept"
    """The store keeps its value (``why``: ownership, priority, a newer value)."""
    WRITER_DECIDES = "writer_decides"
    """Both were written at the same moment: the writer's tie rules decide."""


@dataclass(frozen=True)
class AttributeOutcome:
    attribute: str
    old: FieldValue
    new: FieldValue
    verdict: ValueVerdict
    rule: str | None = None
    """The mapping rule that made the new value."""
    why: str | None = None


@dataclass(frozen=True)
class ConsentOutcome:
    subscription: str
    channel: str
    old: str | None
    new: str
    verdict: ValueVerdict
    why: str | None = None


@dataclass(frozen=True)
class DroppedValue:
    """A value the mapper leaves out of the update (code: unmatched, ownership, blank,
    stale, invalid, outbound_only)."""

    attribute: str
    code: str
    reason: str


@dataclass(frozen=True)
class StoreOutcome:
    profile_id: int | None
    """The profile the update lands on; None: a new profile."""
    attributes: tuple[AttributeOutcome, ...] = ()
    consents: tuple[ConsentOutcome, ...] = ()
    note: str | None = None
    """What else the writer would do: merge two profiles, reject for review, detach."""


class DestinationVerdict(StrEnum):
    WOULD_SEND = "would_send"
    NOT_SENT = "not_sent"
    """The destination is the tested source's own system: never echoed back."""
    FILTERED_OUT = "filtered_out"
    """The profile would not match the destination's ``send_if``."""
    NOTHING_TO_SEND = "nothing_to_send"
    WOULD_DEAD_LETTER = "would_dead_letter"
    """A value the destination's transforms cannot shape."""


@dataclass(frozen=True)
class DestinationOutcome:
    destination: str
    verdict: DestinationVerdict
    reason: str | None = None
    fields: Mapping[str, FieldValue] = field(default_factory=dict)
    """The destination's field -> the value it would get (None: cleared)."""
    consents: Mapping[str, bool] = field(default_factory=dict)
    """The destination's consent field -> opted in."""
    paused: bool = False
    """Paused in the config: what it would be sent waits until it is unpaused."""


class RecordVerdict(StrEnum):
    UPDATE = "update"
    NO_UPDATE = "no_update"
    """The mapper would emit nothing for it (see the drops)."""
    REJECTED = "rejected"


@dataclass(frozen=True)
class RecordReport:
    record_id: str
    operation: str
    verdict: RecordVerdict
    rejected_by: str | None = None
    """The stage that would reject it: ``ingest`` (the CRM's record is unreadable) or
    ``mapper`` (a value the rules refuse)."""
    reason: str | None = None
    identities: tuple[str, ...] = ()
    drops: tuple[DroppedValue, ...] = ()
    store: StoreOutcome | None = None
    """None when the store was not read (rejected, no update, or unreadable)."""
    destinations: tuple[DestinationOutcome, ...] = ()


class RecordsFrom(StrEnum):
    API = "api"
    """The first page(s) of a full sync from the CRM's API."""
    GIVEN = "given"
    """Changes the caller passed (the last ones a webhook-only source sent)."""
    NONE = "none"


@dataclass(frozen=True)
class SyncTestReport:
    source: str
    kind: str
    records_from: RecordsFrom
    records: tuple[RecordReport, ...] = ()
    notes: tuple[str, ...] = ()
    """What the operator should know about the whole test: why there are no records,
    a CRM or store that could not be read, a source the mapper ignores."""


def report_json(report: SyncTestReport) -> dict[str, Any]:
    """The report as JSON-ready dicts and lists (enums are their string values)."""
    return dataclasses.asdict(report)
