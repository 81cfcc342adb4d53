"""One batch through a ProfileBook, inside a store transaction the store has opened.

Every SQL store applies a batch the same way:

1. Updates no store can hold (``update_problem``) are refused up front.
2. The store finds the profiles owning the batch's identities and loads them, with
   the tombstones and detachments of those identities and the highest profile id.
   Only the attributes the batch writes are read (their values too: the batch's
   ProfileChanged events say old and new), every identity of those profiles, and the
   consents only if the batch writes any: that is all the book needs to decide writes
   and report them. A merge needs every value it moves; it raises NeedsValues, and the
   batch starts again from here with whole profiles loaded (merges are rare).
3. The book applies the updates in order; what it reports (rejected identity
   conflicts, merges, drops) goes into the batch report.
4. The store writes back what the book changed, the batch's ProfileChanged events
   into its outbox included: once the batch is decided or, for a
   store that can write while the book decides (``write_every``), in parts as it goes.
   Should a merge raise NeedsValues after a part was written, the store undoes the
   attempt's writes before the batch starts again.

Should the store still refuse a write (a constraint or data error: poison the checks
did not foresee), the store rolls back and calls again with ``isolate=True``: each
update then goes through steps 2 to 4 alone, inside a savepoint, and the one the
store refuses is rejected while the rest of the batch goes on.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.core.contracts import Identity, ProfileUpdate
from services.writer.profiles import (
    BatchWrites,
    BookChanges,
    ConflictRules,
    IdentityConflictPolicy,
    NeedsValues,
    Outcome,
    Profile,
    ProfileBook,
    Version,
    batch_writes,
    identities_of,
    update_problem,
)
from services.writer.stores.base import BatchReport, StoreRejection
from services.writer.stores.outbox import ChangeEncoder, standalone_encoder


class StorePoison(Exception):
    """The store refused a write: a constraint or data error, not an outage."""


@dataclass
class Loaded:
    profiles: list[Profile] = field(default_factory=list)
    tombstones: dict[str, int] = field(default_factory=dict)
    detached: dict[str, Version] = field(default_factory=dict)
    max_profile_id: int = 0


class BookSession(Protocol):
    """An open store transaction, as the batch applier drives it."""

    write_every: int
    """Updates decided between two writes of the book's changes; 0 for a single write
    once the batch is decided. A store that sends its writes without waiting for them
    (PostgreSQL, in pipeline mode) has the server write one part while the book
    decides the next."""

    def owners(self, identities: set[Identity]) -> dict[Identity, int]:
        """The profile owning each of ``identities`` that has one."""

    def load(
        self, owners: dict[Identity, int], identities: set[Identity], *, only: BatchWrites | None
    ) -> Loaded:
        """The profiles ``owners`` names, the tombstones and detachments of
        ``identities``, and the highest profile id ever given.

        With ``only``, a profile is partial: its attributes are just those the batch
        writes; its consents none unless the batch writes some; its times perhaps
        TIME_NOT_LOADED. Its identities are all there. Without, profiles are whole."""

    def write(self, changes: BookChanges, *, more: bool) -> None:
        """Write ``changes``; ``more`` when further parts of this attempt follow."""

    def discard_writes(self) -> None:
        """Undo what this attempt wrote (the batch starts again on whole profiles)."""

    def savepoint(self) -> None: ...

    def rollback_to_savepoint(self) -> None: ...

    def release_savepoint(self) -> None: ...


@dataclass(frozen=True)
class BookSettings:
    rules: ConflictRules
    on_identity_conflict: IdentityConflictPolicy
    encode_change: ChangeEncoder | None = None
    """The outbox's ProfileChanged codec (the writer's; a standalone one by default)."""


def apply_updates(
    session: BookSession,
    updates: Sequence[ProfileUpdate],
    *,
    settings: BookSettings,
    now: int,
    isolate: bool,
) -> BatchReport:
    report = BatchReport()
    # Step 1
    storable: list[tuple[int, ProfileUpdate]] = []
    for index, update in enumerate(updates):
        problem = update_problem(update)
        if problem is None:
            storable.append((index, update))
        else:
            report.rejections.append(StoreRejection(index, f"store refused the update: {problem}"))
    if not isolate:
        _apply(session, storable, settings=settings, now=now, report=report)
        return report
    for one in storable:
        session.savepoint()
        partial = BatchReport()
        try:
            _apply(session, [one], settings=settings, now=now, report=partial)
        except StorePoison as exc:
            session.rollback_to_savepoint()
            report.rejections.append(StoreRejection(one[0], f"store refused the update: {exc}"))
        else:
            _extend(report, partial)
        session.release_savepoint()
    report.rejections.sort(key=lambda rejection: rejection.index)
    return report


def _apply(
    session: BookSession,
    updates: Sequence[tuple[int, ProfileUpdate]],
    *,
    settings: BookSettings,
    now: int,
    report: BatchReport,
) -> None:
    # Step 2
    carried = [identities_of(update) for _index, update in updates]
    identities = {identity for one in carried for identity in one}
    owners = session.owners(identities)
    writes = batch_writes(update for _index, update in updates)
    attempt = BatchReport()
    try:
        loaded = session.load(owners, identities, only=writes)
        _decide(session, updates, carried, loaded, settings=settings, now=now, report=attempt)
    except NeedsValues:
        session.discard_writes()
        attempt = BatchReport()
        loaded = session.load(owners, identities, only=None)
        _decide(session, updates, carried, loaded, settings=settings, now=now, report=attempt)
    _extend(report, attempt)


def _decide(
    session: BookSession,
    updates: Sequence[tuple[int, ProfileUpdate]],
    carried: Sequence[list[Identity]],
    loaded: Loaded,
    *,
    settings: BookSettings,
    now: int,
    report: BatchReport,
) -> None:
    ids = itertools.count(loaded.max_profile_id + 1)
    book = ProfileBook(
        profiles=loaded.profiles,
        tombstones=loaded.tombstones,
        detached=loaded.detached,
        rules=settings.rules,
        on_identity_conflict=settings.on_identity_conflict,
        next_id=lambda: next(ids),
        now=now,
        encode_change=settings.encode_change or standalone_encoder(),
    )
    every, last = session.write_every, len(updates)
    # Step 3
    for position, ((index, update), identities) in enumerate(zip(updates, carried, strict=True), 1):
        result = book.apply(update, identities)
        if result.outcome is Outcome.REJECTED:
            report.rejections.append(StoreRejection(index, result.reason))
        elif result.outcome is Outcome.DROPPED:
            report.dropped_updates.append((index, result.reason))
        # Tested first: nearly every update has neither, and a generator per update
        # was a tenth of this loop.
        if result.merges:
            report.merges.extend((index, merge) for merge in result.merges)
        if result.drops:
            report.drops.extend((index, name, why) for name, why in result.drops)
        if every and position % every == 0 and position < last:
            # Step 4, a part
            session.write(book.take_changes(), more=True)
    # Step 4
    session.write(book.take_changes(), more=False)


def _extend(report: BatchReport, partial: BatchReport) -> None:
    report.rejections.extend(partial.rejections)
    report.merges.extend(partial.merges)
    report.drops.extend(partial.drops)
    report.dropped_updates.extend(partial.dropped_updates)
