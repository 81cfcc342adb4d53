"""One batch through a ProfileBook, inside a store transaction the store has opened.

Every SQL store applies a batch the same way:

1. Updates no store can hold (``update_problem``) are refused up front.
2. The store finds the profiles owning the batch's identities and loads them, with
   the tombstones and detachments of those identities and the highest profile id; and
   the claims of the batch's records, with the other asserters of any identity one of
   them may let go of (services/writer/identity_claims.py). A batch erasing someone
   also loads the profiles holding one of its identities as retired.
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

from services.core.contracts import Identity, ProfileUpdate, UpdateOperation
from services.core.mapping_settings import ProfileSettings
from services.writer.identity_claims import (
    Claims,
    IdentityRules,
    RecordClaim,
    RecordKey,
    claim_key,
    crm_identity,
    letting_go,
)
from services.writer.profiles import (
    BatchWrites,
    BookChanges,
    ConflictRules,
    IdentityConflictPolicy,
    Merge,
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
class LoadedClaims:
    records: dict[RecordKey, RecordClaim] = field(default_factory=dict)
    asserters: dict[Identity, set[RecordKey]] = field(default_factory=dict)
    """For each identity asked about (an entry even when nobody asserts it)."""


@dataclass
class Loaded:
    profiles: list[Profile] = field(default_factory=list)
    tombstones: dict[str, int] = field(default_factory=dict)
    detached: dict[str, Version] = field(default_factory=dict)
    max_profile_id: int = 0
    claims: LoadedClaims = field(default_factory=LoadedClaims)
    retired_holders: dict[Identity, set[int]] = field(default_factory=dict)
    merges: dict[int, Merge] = field(default_factory=dict)
    """The merge records the batch's splits undo."""
    separations: dict[int, set[int]] = field(default_factory=dict)


class BookSession(Protocol):
    """An open store transaction, as the batch applier drives it."""

    write_every: int
    """Updates decided between two writes of the book's changes; 0 for a single write
    once the batch is decided. A store that sends its writes without waiting for them
    (PostgreSQL, in pipeline mode) has the server write one part while the book
    decides the next."""

    def owners(self, identities: set[Identity]) -> dict[Identity, int]:
        """The profile owning each of ``identities`` that has one."""

    def retired_holders(self, identities: set[Identity]) -> dict[Identity, set[int]]:
        """The profiles holding each of ``identities`` as retired (history)."""

    def claims(self, records: set[RecordKey]) -> dict[RecordKey, RecordClaim]:
        """The claim of each of ``records`` that has one."""

    def asserters(self, identities: set[Identity]) -> dict[Identity, set[RecordKey]]:
        """The records asserting each of ``identities`` (those nobody asserts absent)."""

    def merges(self, merged_ids: set[int]) -> dict[int, Merge]:
        """The merge records of ``merged_ids`` that exist."""

    def separations(self, profile_ids: set[int]) -> dict[int, set[int]]:
        """The profiles a split keeps apart from each of ``profile_ids`` (none kept)."""

    def load(
        self, profile_ids: set[int], identities: set[Identity], *, only: BatchWrites | None
    ) -> Loaded:
        """The profiles of ``profile_ids``, the tombstones and detachments of
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
    identity_rules: IdentityRules = field(default_factory=IdentityRules)

    @classmethod
    def of(cls, profile: ProfileSettings, encode_change: ChangeEncoder | None) -> BookSettings:
        return cls(
            rules=ConflictRules(profile),
            on_identity_conflict=profile.on_identity_conflict,
            encode_change=encode_change,
            identity_rules=IdentityRules(profile.identities),
        )


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
    sets: dict[RecordKey, list[tuple[frozenset[Identity], str]]] = {}
    keys: list[str] = []
    erasing = False
    split_ids: set[int] = set()
    for (_index, update), one in zip(updates, carried, strict=True):
        key = claim_key(one)
        keys.append(key)
        if update.operation is UpdateOperation.ERASE:
            erasing = True
            continue
        if update.operation is UpdateOperation.SPLIT:
            if update.record_id.isdigit():
                split_ids.add(int(update.record_id))
            continue
        record = (update.source, update.record_id)
        # A late change is routed by its record's own id: it is always asked.
        identities.add(crm_identity(record))
        if update.operation is UpdateOperation.UPSERT:
            sets.setdefault(record, []).append((frozenset(one), key))
        else:
            sets.setdefault(record, []).append((frozenset(), "[]"))
    merges = session.merges(split_ids) if split_ids else {}
    for merge in merges.values():
        identities.update(crm_identity(record) for record in merge.records)
    # A merged profile that stands again (split already) is loaded: the split refuses.
    profile_ids = set(session.owners(identities).values()) | split_ids
    holders = session.retired_holders(identities) if erasing else {}
    for held in holders.values():
        profile_ids |= held
    records = session.claims(set(sets))
    gone = letting_go(records, sets)
    claims = LoadedClaims(records, session.asserters(gone) if gone else {})
    for identity in gone:
        claims.asserters.setdefault(identity, set())
    keyed = list(zip(carried, keys, strict=True))
    separations = session.separations(profile_ids)
    writes = batch_writes(update for _index, update in updates)
    attempt = BatchReport()
    try:
        loaded = session.load(profile_ids, identities, only=None if merges else writes)
        loaded.claims, loaded.retired_holders = claims, holders
        loaded.merges, loaded.separations = merges, separations
        _with_asserters_of_split_profiles(session, loaded)
        _decide(session, updates, keyed, loaded, settings=settings, now=now, report=attempt)
    except NeedsValues:
        session.discard_writes()
        attempt = BatchReport()
        loaded = session.load(profile_ids, identities, only=None)
        loaded.claims, loaded.retired_holders = claims, holders
        loaded.merges, loaded.separations = merges, separations
        _with_asserters_of_split_profiles(session, loaded)
        _decide(session, updates, keyed, loaded, settings=settings, now=now, report=attempt)
    _extend(report, attempt)


def _with_asserters_of_split_profiles(session: BookSession, loaded: Loaded) -> None:
    """A split gives back the identities only the leaving records assert: it must know
    every asserter of each identity of the profiles holding those records."""
    if not loaded.merges:
        return
    leaving = {crm_identity(r) for merge in loaded.merges.values() for r in merge.records}
    asked = {
        identity
        for profile in loaded.profiles
        if not leaving.isdisjoint(profile.identities)
        for identity in profile.identities
        if identity.kind != "crm" and identity not in loaded.claims.asserters
    }
    if asked:
        found = session.asserters(asked)
        for identity in asked:
            loaded.claims.asserters[identity] = found.get(identity, set())


def _decide(
    session: BookSession,
    updates: Sequence[tuple[int, ProfileUpdate]],
    carried: Sequence[tuple[list[Identity], str]],
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
        claims=Claims.loaded(loaded.claims.records, loaded.claims.asserters),
        identity_rules=settings.identity_rules,
        retired_holders=loaded.retired_holders,
        merges=loaded.merges,
        separations=loaded.separations,
    )
    every, last = session.write_every, len(updates)
    # Step 3
    for position, ((index, update), (identities, key)) in enumerate(
        zip(updates, carried, strict=True), 1
    ):
        result = book.apply(update, identities, key)
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
