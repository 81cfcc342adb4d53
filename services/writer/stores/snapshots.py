"""A destination's backfill: every profile as it stands, queued in the outbox in order.

``crmsync destination push NAME`` puts each profile's SNAPSHOT (a ProfileChanged of
kind SNAPSHOT carrying every attribute and consent, for that destination alone) into
the store's outbox, one batch of profiles per transaction in profile id order,
together with how far the push got (the ``destination_pushes`` row). The writer's
relay sends outbox rows to Kafka in commit order, so a snapshot and the live changes
committed around it reach the destination in the order the store saw them: a
snapshot never overtakes a later change of its profile, nor a change an older
snapshot.

A push killed halfway resumes after its last committed batch: the progress row
commits with the batch, so no profile is queued twice and none is skipped. Event ids
are ``push:<destination>:<run>:<profile id>``, one per profile per run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, Protocol

from services.core.profile_changed import (
    AttributeChange,
    ConsentStatusChange,
    ProfileChanged,
    ProfileChangeKind,
    change_key,
)
from services.core.versions import from_micros, to_micros
from services.writer.profiles import Profile
from services.writer.stores.base import StoredProfile, stored_profile
from services.writer.stores.outbox import ChangeEncoder, Message

PUSH_SOURCE: Final = "crmsync"
"""The source a snapshot names: crmsync itself, as it is the whole profile."""


@dataclass(frozen=True)
class PushProgress:
    destination: str
    run_id: str
    after_profile_id: int
    """The last profile queued; the next batch starts after it."""
    pushed: int
    total: int
    """Profiles in the store when the run started (profiles created since are pushed
    too, so ``pushed`` may end above it)."""
    started_at: datetime
    finished_at: datetime | None = None
    mapping_version: int = 1
    """The destination's mapping version the run pushed under: a newer one makes the
    destination due for another push."""

    def advanced(self, profile_ids: list[int], now: datetime) -> PushProgress:
        if not profile_ids:
            return replace(self, finished_at=now)
        return replace(
            self, after_profile_id=profile_ids[-1], pushed=self.pushed + len(profile_ids)
        )

    def row(self) -> tuple[str, str, int, int, int, int, int | None, int]:
        return (
            self.destination,
            self.run_id,
            self.after_profile_id,
            self.pushed,
            self.total,
            to_micros(self.started_at),
            to_micros(self.finished_at) if self.finished_at is not None else None,
            self.mapping_version,
        )

    @classmethod
    def from_row(cls, row: tuple[str, str, int, int, int, int, int | None, int]) -> PushProgress:
        destination, run_id, after, pushed, total, started, finished, version = row
        return cls(
            destination=destination,
            run_id=run_id,
            after_profile_id=int(after),
            pushed=int(pushed),
            total=int(total),
            started_at=from_micros(int(started)),
            finished_at=from_micros(int(finished)) if finished is not None else None,
            mapping_version=int(version),
        )


class PushableStore(Protocol):
    """A store with an outbox (SQLite, PostgreSQL): it can queue a backfill."""

    def push_progress(self, destination: str) -> PushProgress | None:
        """The destination's latest push run, if it had one."""

    def start_push(
        self, destination: str, *, run_id: str, mapping_version: int, now: datetime
    ) -> PushProgress:
        """A new run from the first profile (any earlier run's progress replaced)."""

    def push_batch(self, destination: str, *, limit: int, now: datetime) -> PushProgress:
        """Queue the next ``limit`` profiles of the current run in one transaction;
        the progress after it (``finished_at`` set once none were left)."""

    def outbox_rows(self) -> int:
        """Outbox rows the writer has not relayed yet."""


def snapshot_messages(
    profiles: Iterable[Profile],
    *,
    progress: PushProgress,
    now: datetime,
    encode: ChangeEncoder,
) -> list[Message]:
    """The outbox messages of ``profiles``' snapshots for the run of ``progress``."""
    return [
        (
            change_key(profile.id),
            encode(
                snapshot_event(
                    stored_profile(profile),
                    destination=progress.destination,
                    run_id=progress.run_id,
                    now=now,
                ).to_record()
            ),
        )
        for profile in profiles
    ]


def snapshot_event(
    profile: StoredProfile, *, destination: str, run_id: str, now: datetime
) -> ProfileChanged:
    """A profile's SNAPSHOT for ``destination`` in push run ``run_id``: what a push
    queues, and what a dry run shows (the same event, so the two cannot differ). The
    profile's live attributes (none it holds as cleared) and its consents."""
    return ProfileChanged(
        event_id=f"push:{destination}:{run_id}:{profile.profile_id}",
        profile_id=profile.profile_id,
        kind=ProfileChangeKind.SNAPSHOT,
        committed_at=now,
        source=PUSH_SOURCE,
        record_id=str(profile.profile_id),
        source_event_id=f"push:{run_id}",
        source_modified_at=profile.updated_at,
        mapping_version=0,
        identities=profile.identities,
        attributes=tuple(
            AttributeChange(name, None, stored.value) for name, stored in profile.attributes.items()
        ),
        consents=tuple(
            ConsentStatusChange(c.subscription, c.channel, None, c.status, c.changed_at)
            for c in profile.consents
        ),
        destination=destination,
    )
