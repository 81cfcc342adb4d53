"""Building ProfileUpdates and applying them to a store, for the store tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from services.core.contracts import (
    Channel,
    ConsentChange,
    ConsentStatus,
    FieldValue,
    Identity,
    ProfileUpdate,
    UpdateOperation,
)
from services.writer.stores.base import BatchReport, ProfileStore, StoredProfile

T0 = datetime(2026, 11, 1, tzinfo=UTC)
TOPIC = "profile-updates"
_events = itertools.count()
_offsets = itertools.count()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def update(
    source: str,
    record_id: str,
    *,
    t: float,
    email: str | None = None,
    attributes: dict[str, FieldValue] | None = None,
    cleared: Sequence[str] = (),
    consents: Sequence[tuple[str, str, str, float]] = (),
    operation: UpdateOperation = UpdateOperation.UPSERT,
    sequence: int = 0,
) -> ProfileUpdate:
    """A change of ``source`` record ``record_id`` modified ``t`` seconds after T0.

    ``consents`` are (subscription, channel, status, changed t).
    """
    crm = Identity("crm", f"{source}:{record_id}")
    identities = (crm,) if email is None else (Identity("email", email), crm)
    match_key = f"email:{email}" if email is not None else f"crm:{source}:{record_id}"
    return ProfileUpdate(
        match_key=match_key,
        source=source,
        record_id=record_id,
        event_id=f"event-{next(_events)}",
        operation=operation,
        source_modified_at=at(t),
        sequence=sequence,
        received_at=at(t),
        mapping_version=1,
        identities=identities,
        attributes=attributes or {},
        cleared=tuple(cleared),
        consents=tuple(
            ConsentChange(sub, Channel(channel.upper()), ConsentStatus(status.upper()), at(ct))
            for sub, channel, status, ct in consents
        ),
    )


def erase(email: str, *, t: float) -> ProfileUpdate:
    return ProfileUpdate(
        match_key=f"email:{email}",
        source="admin",
        record_id="erasure",
        event_id=f"event-{next(_events)}",
        operation=UpdateOperation.ERASE,
        source_modified_at=at(t),
        received_at=at(t),
        identities=(Identity("email", email),),
        attributes={},
    )


def split(merged_id: int, *, t: float) -> ProfileUpdate:
    """The split of profile ``merged_id`` off the profile it was merged into."""
    return ProfileUpdate(
        match_key=f"profile:{merged_id}",
        source="split",
        record_id=str(merged_id),
        event_id=f"event-{next(_events)}",
        operation=UpdateOperation.SPLIT,
        source_modified_at=at(t),
        received_at=at(t),
        identities=(),
        attributes={},
    )


def apply(
    store: ProfileStore, updates: Iterable[ProfileUpdate], *, topic: str = TOPIC, now: float = 0
) -> BatchReport:
    """One batch, at fresh offsets of ``topic`` partition 0."""
    batch = list(updates)
    offset = 0
    for _ in batch:
        offset = next(_offsets)
    reports: list[BatchReport] = []
    store.apply_batch(
        updates=batch,
        next_offsets={(topic, 0): offset + 1},
        written_at=at(1_000_000 + now),
        before_commit=reports.append,
    )
    return reports[0]


def profile(store: ProfileStore, kind: str, value: str) -> StoredProfile | None:
    return store.find_profile(Identity(kind, value))


def values(found: StoredProfile | None) -> dict[str, Any]:
    assert found is not None
    return {name: attribute.value for name, attribute in found.attributes.items()}


def snapshot(store: ProfileStore) -> list[StoredProfile]:
    return store.all_profiles()
