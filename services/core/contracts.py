"""The wire contracts as typed Python values (their codecs are in ``codecs``).

The Avro schemas in ``schemas/`` are the only definition of the contracts; the frozen
dataclasses and named tuples here mirror them field for field (a unit test keeps the
two in step) so that pure logic works with typed values instead of dicts. Nothing
here needs an Avro library: the rules and the stores import the types alone.

The three records every change becomes on the hot path (``ContactChange``,
``ProfileUpdate`` and its ``ConsentChange``) are NamedTuples: one of each is built per
change in the mapper and the writer, and a frozen dataclass's constructor, which sets
each field through ``object.__setattr__``, took twice as long (its ``replace`` three
times as long as ``_replace``).

One type per Avro schema, mirrored field for field with its record conversions; hence
over 400 lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, NamedTuple

FieldValue = None | bool | int | float | str | list[str]
"""A field as CRMs send it: scalars, or a list of strings for multi-select values."""


class Operation(StrEnum):
    UPSERT = "UPSERT"
    DELETE = "DELETE"


class Origin(StrEnum):
    WEBHOOK = "WEBHOOK"
    POLL = "POLL"
    FULL_SYNC = "FULL_SYNC"
    CSV_IMPORT = "CSV_IMPORT"
    REPLAY = "REPLAY"
    WRITE_BACK = "WRITE_BACK"
    """The id a destination gave a profile crmsync wrote there (services/outbound/links.py)."""


class UpdateOperation(StrEnum):
    UPSERT = "UPSERT"
    DELETE = "DELETE"
    ERASE = "ERASE"
    SPLIT = "SPLIT"


class ControlKind(StrEnum):
    STARTED = "STARTED"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    PAUSED = "PAUSED"
    """An operator paused the source: its real-time changes are held as during a sync."""
    RESUMED = "RESUMED"


class Channel(StrEnum):
    EMAIL = "EMAIL"
    SMS = "SMS"


class ConsentStatus(StrEnum):
    OPT_IN = "OPT_IN"
    OPT_OUT = "OPT_OUT"


# The union branch of each FieldValue type, for fastavro's tuple notation: naming the
# branch spares fastavro trying each branch of the union per value (a third of the
# encoding time of a typical contact).
_BRANCHES: Final[dict[type, str]] = {
    str: "string",
    int: "long",
    bool: "boolean",
    float: "double",
    list: "array",
}


def tagged(values: Mapping[str, FieldValue]) -> dict[str, Any]:
    """Field values with their Avro union branch named (see ``_BRANCHES``)."""
    result: dict[str, Any] = {}
    for name, value in values.items():
        branch = _BRANCHES.get(type(value))
        result[name] = (branch, value) if branch is not None else value
    return result


# Enum members by their Avro symbol: a dict lookup per decoded record, where calling the
# enum class goes through its metaclass (the schema already refused unknown symbols).
_OPERATIONS: Final = {member.value: member for member in Operation}
_ORIGINS: Final = {member.value: member for member in Origin}
_UPDATE_OPERATIONS: Final = {member.value: member for member in UpdateOperation}
_CHANNELS: Final = {member.value: member for member in Channel}
_CONSENT_STATUSES: Final = {member.value: member for member in ConsentStatus}


def record_key(source: str, record_id: str) -> bytes:
    """Key of a source record's messages; source names cannot contain ':'."""
    return f"{source}:{record_id}".encode()


class ContactChange(NamedTuple):
    source: str
    record_id: str
    operation: Operation
    event_id: str
    source_modified_at: datetime
    received_at: datetime
    fields: Mapping[str, FieldValue]
    sequence: int = 0
    origin: Origin = Origin.WEBHOOK
    sync_id: str | None = None

    @property
    def key(self) -> bytes:
        return record_key(self.source, self.record_id)

    def to_record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "record_id": self.record_id,
            "operation": self.operation.value,
            "event_id": self.event_id,
            "source_modified_at": self.source_modified_at,
            "sequence": self.sequence,
            "received_at": self.received_at,
            "origin": self.origin.value,
            "sync_id": self.sync_id,
            "fields": tagged(self.fields),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ContactChange:
        # Positional: this runs for every change the mapper reads.
        return cls(
            record["source"],
            record["record_id"],
            _OPERATIONS[record["operation"]],
            record["event_id"],
            record["source_modified_at"],
            record["received_at"],
            record["fields"],
            record["sequence"],
            _ORIGINS[record["origin"]],
            record["sync_id"],
        )


class Identity(NamedTuple):
    """How a profile is known: ``email``, or ``crm`` with value '<source>:<record id>'.

    A NamedTuple rather than a dataclass: identities are hashed in every set and dict
    of the writer's hot path, and a tuple's hash runs in C.
    """

    kind: str
    value: str


class ConsentChange(NamedTuple):
    subscription: str
    channel: Channel
    status: ConsentStatus
    changed_at: datetime


class ProfileUpdate(NamedTuple):
    match_key: str
    source: str
    record_id: str
    event_id: str
    operation: UpdateOperation
    source_modified_at: datetime
    received_at: datetime
    identities: tuple[Identity, ...]
    attributes: Mapping[str, FieldValue]
    sequence: int = 0
    mapping_version: int = 0
    cleared: tuple[str, ...] = ()
    consents: tuple[ConsentChange, ...] = ()
    identities_version: tuple[int, int] | None = None
    """The version of the change that set ``identities`` (the record's email field's,
    as the mapper versions each field), when it is older than this change's; None:
    this change's own."""

    @property
    def key(self) -> bytes:
        return self.match_key.encode()

    def narrowed(
        self,
        attributes: Mapping[str, FieldValue],
        cleared: tuple[str, ...],
        consents: tuple[ConsentChange, ...],
    ) -> ProfileUpdate:
        """This update with only these attributes, clears and consents (the mapper's
        change detection keeps what differs). Built positionally: ``_replace`` took
        three times as long, once per change."""
        return ProfileUpdate(
            self.match_key,
            self.source,
            self.record_id,
            self.event_id,
            self.operation,
            self.source_modified_at,
            self.received_at,
            self.identities,
            attributes,
            self.sequence,
            self.mapping_version,
            cleared,
            consents,
            self.identities_version,
        )

    def to_record(self) -> dict[str, Any]:
        return {
            "match_key": self.match_key,
            "source": self.source,
            "record_id": self.record_id,
            "event_id": self.event_id,
            "operation": self.operation.value,
            "source_modified_at": self.source_modified_at,
            "sequence": self.sequence,
            "received_at": self.received_at,
            "mapping_version": self.mapping_version,
            "identities": [{"kind": i.kind, "value": i.value} for i in self.identities],
            "attributes": tagged(self.attributes),
            "cleared": list(self.cleared),
            "consents": [
                {
                    "subscription": c.subscription,
                    "channel": c.channel.value,
                    "status": c.status.value,
                    "changed_at": c.changed_at,
                }
                for c in self.consents
            ],
            "identities_version": None
            if self.identities_version is None
            else {
                "modified_at": self.identities_version[0],
                "sequence": self.identities_version[1],
            },
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ProfileUpdate:
        # Positional, enums by dict lookup: this runs for every update the writer reads.
        return cls(
            record["match_key"],
            record["source"],
            record["record_id"],
            record["event_id"],
            _UPDATE_OPERATIONS[record["operation"]],
            record["source_modified_at"],
            record["received_at"],
            tuple([Identity(i["kind"], i["value"]) for i in record["identities"]]),
            record["attributes"],
            record["sequence"],
            record["mapping_version"],
            tuple(record["cleared"]),
            tuple(
                [
                    ConsentChange(
                        c["subscription"],
                        _CHANNELS[c["channel"]],
                        _CONSENT_STATUSES[c["status"]],
                        c["changed_at"],
                    )
                    for c in record["consents"]
                ]
            ),
            _identities_version(record),
        )


def _identities_version(record: Mapping[str, Any]) -> tuple[int, int] | None:
    version = record.get("identities_version")
    return None if version is None else (version["modified_at"], version["sequence"])


@dataclass(frozen=True, slots=True)
class PartitionOffset:
    partition: int
    offset: int


DESTINATION_SUBJECT: Final = "destination:"
"""A SyncControl whose ``source`` starts so pauses or resumes that destination's
deliveries (names cannot contain ':', so no source is ever taken for one)."""


def destination_subject(name: str) -> str:
    return f"{DESTINATION_SUBJECT}{name}"


def destination_of(subject: str) -> str | None:
    """The destination a control's subject names, or None for a source."""
    return subject[len(DESTINATION_SUBJECT) :] if subject.startswith(DESTINATION_SUBJECT) else None


@dataclass(frozen=True, slots=True)
class SyncControl:
    source: str
    sync_id: str
    kind: ControlKind
    at: datetime
    mapping_version: int = 0
    records_total: int | None = None
    fullsync_end_offsets: tuple[PartitionOffset, ...] = ()
    reason: str | None = None
    changes_start_offsets: tuple[PartitionOffset, ...] = ()

    @property
    def key(self) -> bytes:
        return self.source.encode()

    def to_record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sync_id": self.sync_id,
            "kind": self.kind.value,
            "at": self.at,
            "mapping_version": self.mapping_version,
            "records_total": self.records_total,
            "fullsync_end_offsets": [
                {"partition": p.partition, "offset": p.offset} for p in self.fullsync_end_offsets
            ],
            "reason": self.reason,
            "changes_start_offsets": [
                {"partition": p.partition, "offset": p.offset} for p in self.changes_start_offsets
            ],
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SyncControl:
        return cls(
            source=record["source"],
            sync_id=record["sync_id"],
            kind=ControlKind(record["kind"]),
            at=record["at"],
            mapping_version=record["mapping_version"],
            records_total=record["records_total"],
            fullsync_end_offsets=tuple(
                PartitionOffset(p["partition"], p["offset"]) for p in record["fullsync_end_offsets"]
            ),
            reason=record["reason"],
            changes_start_offsets=tuple(
                PartitionOffset(p["partition"], p["offset"])
                for p in record["changes_start_offsets"]
            ),
        )


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    stage: str
    reason: str
    rejected_at: datetime
    source: str | None = None
    event_id: str | None = None
    key: bytes | None = None
    value: bytes | None = None
    origin_topic: str | None = None
    origin_partition: int | None = None
    origin_offset: int | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "reason": self.reason,
            "source": self.source,
            "event_id": self.event_id,
            "key": self.key,
            "value": self.value,
            "origin_topic": self.origin_topic,
            "origin_partition": self.origin_partition,
            "origin_offset": self.origin_offset,
            "rejected_at": self.rejected_at,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RejectedEvent:
        return cls(**record)


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    old_value: FieldValue
    new_value: FieldValue
    rule: str


@dataclass(frozen=True, slots=True)
class FieldDrop:
    field: str
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class ProfileMerge:
    merged_profile_id: int
    into_profile_id: int


@dataclass(frozen=True, slots=True)
class AuditEvent:
    match_key: str
    source: str
    record_id: str
    event_id: str
    decided_at: datetime
    mapping_version: int = 0
    changes: tuple[FieldChange, ...] = ()
    dropped: tuple[FieldDrop, ...] = ()
    stage: str = "mapper"
    merge: ProfileMerge | None = None

    @property
    def key(self) -> bytes:
        return self.match_key.encode()

    def to_record(self) -> dict[str, Any]:
        return audit_record(
            match_key=self.match_key,
            source=self.source,
            record_id=self.record_id,
            event_id=self.event_id,
            decided_at=self.decided_at,
            mapping_version=self.mapping_version,
            changes=((c.field, c.old_value, c.new_value, c.rule) for c in self.changes),
            dropped=((d.field, d.code, d.reason) for d in self.dropped),
            stage=self.stage,
            merge=self.merge,
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> AuditEvent:
        return cls(
            match_key=record["match_key"],
            source=record["source"],
            record_id=record["record_id"],
            event_id=record["event_id"],
            decided_at=record["decided_at"],
            mapping_version=record["mapping_version"],
            changes=tuple(FieldChange(**c) for c in record["changes"]),
            dropped=tuple(FieldDrop(**d) for d in record["dropped"]),
            stage=record["stage"],
            merge=None if record["merge"] is None else ProfileMerge(**record["merge"]),
        )


def audit_record(
    *,
    match_key: str,
    source: str,
    record_id: str,
    event_id: str,
    decided_at: datetime,
    mapping_version: int,
    changes: Iterable[tuple[str, FieldValue, FieldValue, str]],
    dropped: Iterable[tuple[str, str, str]],
    stage: str = "mapper",
    merge: ProfileMerge | None = None,
) -> dict[str, Any]:
    """An AuditEvent's Avro record, from its parts: the mapper builds one per change
    straight from its decisions (field, old, new, rule) and drops (field, code,
    reason), without an AuditEvent and its FieldChanges in between."""
    return {
        "match_key": match_key,
        "source": source,
        "record_id": record_id,
        "event_id": event_id,
        "decided_at": decided_at,
        "mapping_version": mapping_version,
        "changes": [
            {
                "field": field,
                "old_value": tagged_value(old),
                "new_value": tagged_value(new),
                "rule": rule,
            }
            for field, old, new, rule in changes
        ],
        "dropped": [{"field": f, "code": code, "reason": why} for f, code, why in dropped],
        "stage": stage,
        "merge": None
        if merge is None
        else {
            "merged_profile_id": merge.merged_profile_id,
            "into_profile_id": merge.into_profile_id,
        },
    }


def tagged_value(value: FieldValue) -> Any:
    branch = _BRANCHES.get(type(value))
    return (branch, value) if branch is not None else value
