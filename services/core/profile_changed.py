"""The ProfileChanged contract (``schemas/profile_changed.avsc``): what one committed
update changed in the profile store, as the ``profile-changes`` topic carries it.

The writer builds each event's Avro record straight from the book's decisions
(``change_record``) and its store keeps the encoded messages in its outbox; readers
decode them into ``ProfileChanged`` values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from services.core.contracts import FieldValue, Identity, tagged_value
from services.core.versions import to_micros


class ProfileChangeKind(StrEnum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    DETACHED = "DETACHED"
    ERASED = "ERASED"
    SNAPSHOT = "SNAPSHOT"
    """The whole profile, for one destination's backfill (``destination``)."""


class AttributeChange(NamedTuple):
    name: str
    old_value: FieldValue
    new_value: FieldValue


class ConsentStatusChange(NamedTuple):
    subscription: str
    channel: str
    old_status: str | None
    new_status: str
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class ProfileChanged:
    event_id: str
    profile_id: int
    kind: ProfileChangeKind
    committed_at: datetime
    source: str
    record_id: str
    source_event_id: str
    source_modified_at: datetime
    mapping_version: int
    identities: tuple[Identity, ...]
    identities_added: tuple[Identity, ...] = ()
    identities_removed: tuple[Identity, ...] = ()
    attributes: tuple[AttributeChange, ...] = ()
    consents: tuple[ConsentStatusChange, ...] = ()
    merged_profile_ids: tuple[int, ...] = ()
    destination: str | None = None

    @property
    def key(self) -> bytes:
        return change_key(self.profile_id)

    def to_record(self) -> dict[str, Any]:
        return change_record(
            event_id=self.event_id,
            profile_id=self.profile_id,
            kind=self.kind,
            committed_at=to_micros(self.committed_at),
            source=self.source,
            record_id=self.record_id,
            source_event_id=self.source_event_id,
            source_modified_at=self.source_modified_at,
            mapping_version=self.mapping_version,
            identities=self.identities,
            identities_added=self.identities_added,
            identities_removed=self.identities_removed,
            attributes=self.attributes,
            consents=(
                (c.subscription, c.channel, c.old_status, c.new_status, to_micros(c.changed_at))
                for c in self.consents
            ),
            merged_profile_ids=self.merged_profile_ids,
            destination=self.destination,
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ProfileChanged:
        return cls(
            event_id=record["event_id"],
            profile_id=record["profile_id"],
            kind=ProfileChangeKind(record["kind"]),
            committed_at=record["committed_at"],
            source=record["source"],
            record_id=record["record_id"],
            source_event_id=record["source_event_id"],
            source_modified_at=record["source_modified_at"],
            mapping_version=record["mapping_version"],
            identities=_from_identities(record["identities"]),
            identities_added=_from_identities(record["identities_added"]),
            identities_removed=_from_identities(record["identities_removed"]),
            attributes=tuple(AttributeChange(**a) for a in record["attributes"]),
            consents=tuple(ConsentStatusChange(**c) for c in record["consents"]),
            merged_profile_ids=tuple(record["merged_profile_ids"]),
            destination=record.get("destination"),
        )


def change_record(
    *,
    event_id: str,
    profile_id: int,
    kind: ProfileChangeKind,
    committed_at: int,
    source: str,
    record_id: str,
    source_event_id: str,
    source_modified_at: datetime,
    mapping_version: int,
    identities: Iterable[Identity],
    identities_added: Iterable[Identity] = (),
    identities_removed: Iterable[Identity] = (),
    attributes: Iterable[tuple[str, FieldValue, FieldValue]] = (),
    consents: Iterable[tuple[str, str, str | None, str, int]] = (),
    merged_profile_ids: Iterable[int] = (),
    destination: str | None = None,
) -> dict[str, Any]:
    """A ProfileChanged's Avro record, from its parts: the writer builds one per change
    it commits straight from its decisions, without a ProfileChanged in between (as the
    mapper does its audit records). Times in microseconds since the epoch; attributes
    as (name, old, new), consents as (subscription, channel, old
    status, new status, changed time); identities as 'kind:value'."""
    return {
        "event_id": event_id,
        "profile_id": profile_id,
        "kind": kind.value,
        "committed_at": committed_at,
        "source": source,
        "record_id": record_id,
        "source_event_id": source_event_id,
        "source_modified_at": source_modified_at,
        "mapping_version": mapping_version,
        "identities": _identities(identities),
        "identities_added": _identities(identities_added),
        "identities_removed": _identities(identities_removed),
        "attributes": [
            {"name": name, "old_value": tagged_value(old), "new_value": tagged_value(new)}
            for name, old, new in attributes
        ],
        "consents": [
            {
                "subscription": subscription,
                "channel": channel,
                "old_status": old_status,
                "new_status": new_status,
                "changed_at": changed,
            }
            for subscription, channel, old_status, new_status, changed in consents
        ],
        "merged_profile_ids": list(merged_profile_ids),
        "destination": destination,
    }


def change_key(profile_id: int) -> bytes:
    """The key of a profile's ProfileChanged events."""
    return str(profile_id).encode()


def _identities(identities: Iterable[Identity]) -> list[str]:
    return [f"{kind}:{value}" for kind, value in identities]


def _from_identities(items: list[str]) -> tuple[Identity, ...]:
    return tuple(Identity(*item.split(":", 1)) for item in items)
