"""The profile store interface every store (SQLite, PostgreSQL, HTTP CDP) implements.

A store applies one batch of ProfileUpdates in one transaction together with the
Kafka positions they came from, so the data and "how far we got" can never disagree
after a crash: on restart the writer resumes from the positions the store holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from services.core.contracts import FieldValue, Identity, ProfileUpdate
from services.core.versions import from_micros
from services.writer.profiles import Merge, Profile

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True)
class StoredAttribute:
    value: FieldValue
    source: str
    source_modified_at: datetime
    mapping_version: int
    written_at: datetime


@dataclass(frozen=True)
class StoredConsentView:
    subscription: str
    channel: str
    status: str
    changed_at: datetime
    source: str


@dataclass(frozen=True)
class StoredRetiredIdentity:
    """An identity no source record asserts any more: history, it matches nothing."""

    identity: Identity
    retired_at: datetime
    """The source time of the change that let go of it last."""
    source: str
    record_id: str


@dataclass(frozen=True)
class StoredProfile:
    profile_id: int
    identities: tuple[Identity, ...]
    attributes: Mapping[str, StoredAttribute]
    consents: tuple[StoredConsentView, ...]
    created_at: datetime
    updated_at: datetime
    retired: tuple[StoredRetiredIdentity, ...] = ()


@dataclass(frozen=True)
class StoreRejection:
    """An update the store cannot take (a poison change); the batch goes on without it."""

    index: int
    reason: str


@dataclass
class BatchReport:
    """What a batch did besides the data: refused updates, merges and drops.

    Indexes are positions in the batch's ``updates``.
    """

    rejections: list[StoreRejection] = field(default_factory=list)
    merges: list[tuple[int, Merge]] = field(default_factory=list)
    drops: list[tuple[int, str, str]] = field(default_factory=list)
    """(index, attribute or subscription, why)"""
    dropped_updates: list[tuple[int, str]] = field(default_factory=list)
    """(index, why): whole updates left out, e.g. for an erased identity."""


@dataclass(frozen=True)
class OutboxEntry:
    """A committed ProfileChanged waiting in the store's outbox to be relayed."""

    seq: int
    """Its place in commit order."""
    messages: bytes
    """Its ProfileChanged messages, packed (``services/writer/stores/outbox.py``)."""


class TransientStoreError(Exception):
    """The store is unavailable for now; the same batch is retried, nothing is skipped."""


BeforeCommit = Callable[[BatchReport], None]


class ProfileStore(Protocol):
    keeps_offsets: bool
    """Whether Kafka positions commit atomically with the data (SQL stores). A store
    without (the CDP over HTTP) relies on idempotency keys for what is consumed again."""

    def migrate(self) -> None:
        """Create or upgrade the schema to this version's."""

    def ping(self) -> None:
        """Raise unless the store answers."""

    def stored_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the next offset to consume, as committed with the data."""

    def apply_batch(
        self,
        *,
        updates: Sequence[ProfileUpdate],
        next_offsets: Mapping[TopicPartitionKey, int],
        written_at: datetime,
        before_commit: BeforeCommit,
    ) -> BatchReport:
        """Apply all updates and the offsets atomically.

        ``before_commit`` receives the batch's report and must make its rejections
        and merges durable (the rejected and audit topics) before the transaction
        commits; if it raises, nothing is committed.
        """

    def pending_changes(self, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` outbox rows of committed ProfileChanged events not yet
        relayed, in commit order; none while another writer relays this store's outbox
        (one relay at a time, so the events leave in order)."""

    def changes_relayed(self, up_to: int) -> None:
        """Forget the outbox's rows up to the ``seq`` ``up_to``: Kafka has them."""

    def find_profile(self, identity: Identity) -> StoredProfile | None:
        """The live profile owning ``identity`` (None for unknown or erased ones)."""

    def all_profiles(self) -> list[StoredProfile]:
        """Every live profile, by id (for exports and tests; not for large stores)."""

    def profiles_by_mapping_version(self) -> dict[str, dict[int, int]]:
        """Per source, how many profiles hold attributes it wrote under each mapping
        version (profiles under an older version than the source's current one wait
        for a full sync)."""

    def close(self) -> None: ...


def stored_profile(profile: Profile) -> StoredProfile:
    """What a read shows of a profile: live attributes with provenance, and consents.

    The profile must have been loaded with its values.
    """
    if profile.partial:
        raise ValueError(f"profile {profile.id} was loaded without its values")
    return StoredProfile(
        profile_id=profile.id,
        identities=tuple(sorted(profile.identities, key=lambda i: (i.kind, i.value))),
        attributes={
            name: StoredAttribute(
                value=value.value,
                source=value.source,
                source_modified_at=from_micros(value.version[0]),
                mapping_version=value.mapping_version,
                written_at=from_micros(value.written_at),
            )
            for name, value in sorted(profile.attributes.items())
            if value.value is not None
        },
        consents=tuple(
            StoredConsentView(
                subscription=sub,
                channel=channel,
                status=consent.status,
                changed_at=from_micros(consent.changed_at),
                source=consent.source,
            )
            for (sub, channel), consent in sorted(profile.consents.items())
        ),
        created_at=from_micros(profile.created_at),
        updated_at=from_micros(profile.updated_at),
        retired=tuple(
            StoredRetiredIdentity(identity, from_micros(r.retired_at), r.source, r.record_id)
            for identity, r in sorted(profile.retired.items())
        ),
    )


def script_statements(script: str) -> list[str]:
    """The statements of a migration script, split at its semicolons (the schema
    scripts hold no semicolon inside a statement)."""
    return [statement for part in script.split(";") if (statement := part.strip())]
