"""The profile model and what one ProfileUpdate does to it, as pure logic.

A store loads the profiles a batch can touch (every profile owning one of the batch's
identities) into a ``ProfileBook``, applies the batch's updates to it in order, and
writes back what the book says changed, in one transaction with the batch's offsets.
Every store (SQLite, PostgreSQL, the CDP over HTTP) therefore decides identically.

Applying one update:

1. **Tombstones.** An update carrying an identity erased at or after the update's
   source time is dropped: a late event never brings an erased person back. (A
   newer one, say a fresh sign-up, starts a new profile.)
2. **Identity resolution.** The update finds its profiles by every identity it
   carries, match key first. None: a new profile. Several: the configured policy
   merges them into the first (the leading profile) or rejects the update for review
   naming both profile ids; a merge past an identity limit, or of two profiles a split
   keeps apart, does not happen. No identity ever belongs to two profiles. The
   update's identities are what its record asserts now (services/writer/
   identity_claims.py): those it asserted before and no record asserts any more are
   retired, kept as history. An update no newer than its record's claim asserts
   nothing and only writes its values.
3. **ERASE** removes the profile's identities, attributes and consents (and those
   of a profile keeping one of its identities as retired) and leaves a tombstone per
   identity: a SHA-256 hash, so no personal data is kept.
4. **DELETE** detaches the source record (its CRM identity) and retires what only it
   asserted; its claim keeps the deletion's version, so a replayed older update does
   not attach it again.
5. **UPSERT** attaches the update's identities and writes each attribute that wins
   under the attribute's conflict policy; a blank never clears, only ``cleared``
   does, and a clear is kept as a versioned marker so an older value cannot return.
   Another record's value that loses, or is replaced, is kept as an alternative, by
   provenance. Consents change only from their subscription's consent source, and
   only with a newer ``changed_at``.
6. **SPLIT** undoes a merge from its record (services/writer/unmerge.py).

Every comparison is a version guard, so applying any update a second time changes
nothing: replaying any range of the topic leaves the book as it was.

Each update that changes a profile (a value, a consent status or an identity; or
creates, detaches or erases it) also yields a ``ProfileChanged`` event with the old
and new values, which the store commits to its outbox with the batch. A write of the
same value under a newer version moves the provenance and is no event; a replay is
none either.

The profile model in one module (identity resolution, merges and splits, field
ownership and conflicts), the rules every store applies alike, read together; hence
over 1,000 lines. What can stand alone does: the claims and limits
(identity_claims.py) and a split's plan (unmerge.py).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal, NamedTuple

from services.core.contracts import FieldValue, Identity, ProfileUpdate, UpdateOperation
from services.core.mapping_settings import ProfileSettings
from services.core.profile_changed import ProfileChangeKind, change_key, change_record
from services.core.versions import to_micros
from services.writer.identity_claims import (
    Claims,
    IdentityRules,
    RecordClaim,
    RecordKey,
    RetiredIdentity,
    claim_key,
    claimed,
    crm_identity,
    record_of,
)
from services.writer.unmerge import Side, split_plan

Version = tuple[int, int]
IdentityConflictPolicy = Literal["merge", "reject"]


def identity_hash(identity: Identity) -> str:
    """What a tombstone keeps of an erased identity."""
    return hashlib.sha256(f"{identity.kind}:{identity.value}".encode()).hexdigest()


TIME_NOT_LOADED: Final = 2**63 - 1
"""The created and updated times of a partial profile whose store did not read them.
Such a store writes only the updated time of a partial profile it writes (the book
sets it anew), never its created time."""


class NeedsValues(Exception):
    """A merge met a profile loaded without its values: load them and start again."""


class StoredValue(NamedTuple):
    """An attribute's value with its provenance. ``value`` None marks a clear.

    NamedTuples here and for consents: one is built per attribute a batch writes or
    reads, and a tuple is built in C, a frozen dataclass in Python.
    """

    value: FieldValue
    source: str
    record_id: str
    version: Version
    mapping_version: int
    written_at: int


class StoredConsent(NamedTuple):
    status: str
    changed_at: int
    source: str
    written_at: int


ConsentKey = tuple[str, str]
"""(subscription, channel)"""


@dataclass(slots=True)
class Profile:
    id: int
    created_at: int
    updated_at: int
    identities: set[Identity] = field(default_factory=set)
    attributes: dict[str, StoredValue] = field(default_factory=dict)
    consents: dict[ConsentKey, StoredConsent] = field(default_factory=dict)
    retired: dict[Identity, RetiredIdentity] = field(default_factory=dict)
    """Identities no record asserts any more, kept as history (whole profiles only: a
    partial one has none loaded)."""
    alternatives: dict[str, dict[RecordKey, StoredValue]] = field(default_factory=dict)
    """Per attribute, the newest write of each other record that wrote it (the value
    shown is one record's): what a split gives back by provenance (whole profiles only)."""
    partial: bool = False
    """Loaded with only the attributes its batch writes (see BatchWrites), its times
    perhaps TIME_NOT_LOADED: enough to decide those writes and say what they changed,
    not to merge or show."""


class Outcome(StrEnum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    DROPPED = "dropped"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Merge:
    merged_id: int
    into_id: int
    event_id: str
    records: tuple[RecordKey, ...] = ()
    """The source records the merged profile held: what a split gives back."""
    created_at: int = 0
    """The merged profile's creation time, which a split restores."""


class Result(NamedTuple):
    """What one update did (a NamedTuple: one is built per update)."""

    outcome: Outcome
    profile_id: int | None = None
    reason: str = ""
    merges: tuple[Merge, ...] = ()
    drops: tuple[tuple[str, str], ...] = ()
    """(attribute or subscription, why) for parts of an applied update left out."""


@dataclass
class BookChanges:
    """What a store writes back: the touched rows, by key."""

    profiles: dict[int, Profile] = field(default_factory=dict)
    """Profiles created or changed, in their final state."""
    new_profiles: set[int] = field(default_factory=set)
    removed_profiles: set[int] = field(default_factory=set)
    """Merged into another or erased: their rows go."""
    identities: dict[Identity, int | None] = field(default_factory=dict)
    """Identity -> owning profile, None for detached or erased."""
    attributes: dict[tuple[int, str], StoredValue] = field(default_factory=dict)
    consents: dict[tuple[int, str, str], StoredConsent] = field(default_factory=dict)
    detached: dict[str, Version] = field(default_factory=dict)
    """Identity hash -> version of the newest detachment (no CRM id kept in clear)."""
    tombstones: dict[str, int] = field(default_factory=dict)
    merges: list[Merge] = field(default_factory=list)
    claims: dict[RecordKey, RecordClaim | None] = field(default_factory=dict)
    """Record -> its claim as of its newest change, None for a record forgotten."""
    claimed: dict[RecordKey, frozenset[Identity]] = field(default_factory=dict)
    """Record -> the identities it asserts now, for records whose set changed (or was
    forgotten: empty)."""
    first_claims: set[RecordKey] = field(default_factory=set)
    """Records of ``claimed`` that asserted nothing before (no rows to replace)."""
    retired: dict[tuple[int, Identity], RetiredIdentity | None] = field(default_factory=dict)
    """(profile, identity) -> kept as history, None when it matches again."""
    alternatives: dict[tuple[int, str, str, str], StoredValue | None] = field(default_factory=dict)
    """(profile, attribute, source, record id) -> that record's newest write of the
    attribute when another record's shows (kept if newer than the stored one), None
    when it shows again or went to another profile."""
    attributes_gone: set[tuple[int, str]] = field(default_factory=set)
    """(profile, attribute) rows a split took away (no write of the profile's own)."""
    separations: set[tuple[int, int]] = field(default_factory=set)
    """Profiles a split keeps apart, each pair once (lower id first)."""
    splits: dict[int, int] = field(default_factory=dict)
    """Merged profile id -> when it was split off again."""
    erasures: dict[int, int] = field(default_factory=dict)
    """Erased profile id -> erasure time."""
    events: list[tuple[bytes, bytes]] = field(default_factory=list)
    """What each applied update changed, in order, as ProfileChanged messages (key,
    encoded value): what the store's outbox keeps for the relay."""


@dataclass(slots=True)
class _Seen:
    """What one update changed, as the book applies it: its ProfileChanged events."""

    attributes: dict[str, tuple[FieldValue, StoredValue]] = field(default_factory=dict)
    """name -> (the value before this update, the value written)"""
    consents: dict[ConsentKey, tuple[str | None, StoredConsent]] = field(default_factory=dict)
    added: list[Identity] = field(default_factory=list)
    removed: list[Identity] = field(default_factory=list)
    merged: list[int] = field(default_factory=list)

    def attribute(self, name: str, old: StoredValue | None, new: StoredValue) -> None:
        before = self.attributes[name][0] if name in self.attributes else _value(old)
        if _differs(before, new.value):
            self.attributes[name] = (before, new)
        else:
            self.attributes.pop(name, None)

    def consent(self, key: ConsentKey, old: StoredConsent | None, new: StoredConsent) -> None:
        before = self.consents[key][0] if key in self.consents else _status(old)
        if before != new.status:
            self.consents[key] = (before, new)
        else:
            self.consents.pop(key, None)

    def any(self) -> bool:
        return bool(self.attributes or self.consents or self.added or self.removed or self.merged)


def _value(stored: StoredValue | None) -> FieldValue:
    return None if stored is None else stored.value


def _status(stored: StoredConsent | None) -> str | None:
    return None if stored is None else stored.status


def _differs(old: FieldValue, new: FieldValue) -> bool:
    # True == 1 in Python; a boolean attribute becoming 1 is a change.
    return type(old) is not type(new) or old != new


class ConflictRules:
    """Which of two writes of an attribute stands (guarantee 3 across sources)."""

    def __init__(self, profile: ProfileSettings) -> None:
        self._profile = profile
        # Asked for every attribute of every update; the answers never change.
        self._refusals: dict[tuple[str, str], str | None] = {}
        self._policies = profile.attributes
        self.restricted = frozenset(profile.attributes)
        """The attributes with a policy: any other one every source may write."""

    def consent_source(self, subscription: str, channel: str) -> str | None:
        settings = self._profile.subscriptions.get(subscription)
        if settings is None or settings.channel.upper() != channel:
            return None
        return settings.source

    def refusal(self, attribute: str, source: str) -> str | None:
        """Why ``source`` may not write ``attribute`` at all, or None."""
        key = (attribute, source)
        if key not in self._refusals:
            self._refusals[key] = self._refusal(attribute, source)
        return self._refusals[key]

    def _refusal(self, attribute: str, source: str) -> str | None:
        policy = self._policies.get(attribute)
        if policy is None or policy.may_write(source):
            return None
        if policy.policy == "owner_only":
            return f"owned by {policy.owner}"
        return "source not in its priority list"

    def wins(self, attribute: str, incoming: StoredValue, stored: StoredValue | None) -> bool:
        if stored is None:
            return True
        policy = self._policies.get(attribute)
        if policy is not None and policy.policy == "source_priority" and stored.value is not None:
            rank_in = policy.priority.index(incoming.source)
            rank_stored = (
                policy.priority.index(stored.source)
                if stored.source in policy.priority
                else len(policy.priority)
            )
            if rank_in != rank_stored:
                return rank_in < rank_stored
        # Last writer wins (owner_only is one writer, so the same): the newer version;
        # a tie goes to the greater source name, then record id, whatever the order
        # the writes arrive in (two records of one CRM can carry the same time).
        return (incoming.version, incoming.source, incoming.record_id) > (
            stored.version,
            stored.source,
            stored.record_id,
        )


class ProfileBook:
    """Profiles a batch can touch, changed in memory; ``changes`` says what to write."""

    def __init__(
        self,
        *,
        profiles: Iterable[Profile],
        tombstones: Mapping[str, int],
        detached: Mapping[str, Version],
        rules: ConflictRules,
        on_identity_conflict: IdentityConflictPolicy,
        next_id: Callable[[], int],
        now: int,
        encode_change: Callable[[dict[str, Any]], bytes] | None = None,
        claims: Claims | None = None,
        identity_rules: IdentityRules | None = None,
        retired_holders: Mapping[Identity, Iterable[int]] | None = None,
        merges: Mapping[int, Merge] | None = None,
        separations: Mapping[int, Iterable[int]] | None = None,
    ) -> None:
        """``encode_change`` encodes each ProfileChanged record as it is decided (a
        batch's records, kept as dicts until its end, cost the garbage collector more
        than their encoding); without it the book records no events.

        ``claims`` are what the batch's records assert (services/writer/
        identity_claims.py); ``retired_holders`` the profiles holding one of the
        batch's identities as retired, which an erasure of it erases too; ``merges`` the
        merge records the batch's splits undo; ``separations`` the profiles a split
        keeps apart from each of the loaded ones."""
        self._encode_change = encode_change
        self._claims = claims if claims is not None else Claims()
        self._identity_rules = identity_rules or IdentityRules()
        self._retired_holders = {i: list(ids) for i, ids in (retired_holders or {}).items()}
        self._merges = dict(merges or {})
        self._apart: dict[int, set[int]] = {p: set(ids) for p, ids in (separations or {}).items()}
        self._profiles = {profile.id: profile for profile in profiles}
        self._owner = {
            identity: profile.id
            for profile in self._profiles.values()
            for identity in profile.identities
        }
        self._tombstones = dict(tombstones)
        self._detached = dict(detached)
        self._rules = rules
        self._on_conflict = on_identity_conflict
        self._next_id = next_id
        self._now = now
        self._seen = _Seen()
        self.changes = BookChanges()

    def take_changes(self) -> BookChanges:
        """What changed since the last take; the book goes on deciding from here.

        A store may write a batch's changes in parts (see BookSession.write_every):
        a part holds each row in its state when taken, and a row changed again later
        comes again in a later part, so writing the parts in order leaves every row
        in its final state."""
        changes, self.changes = self.changes, BookChanges()
        return changes

    def apply(
        self,
        update: ProfileUpdate,
        identities: list[Identity] | None = None,
        key: str | None = None,
    ) -> Result:
        """Apply one update; ``identities`` is ``identities_of(update)`` if known, and
        ``key`` their ``claim_key``."""
        version: Version = (to_micros(update.source_modified_at), update.sequence)
        identities = identities_of(update) if identities is None else identities
        self._seen = _Seen()
        if update.operation is UpdateOperation.SPLIT:
            return self._split(update)
        # Step 1
        if self._tombstones and self._erased(identities, version[0]):
            return Result(Outcome.DROPPED, reason="erased")
        if update.operation is UpdateOperation.ERASE:
            return self._erase_all(update, identities, version)
        record = (update.source, update.record_id)
        claim = self._claims.of(record)
        if claim is None and self._detached:
            # A record deleted before claims were kept (schema 5) left only this.
            detached = self._detached.get(identity_hash(crm_identity(record)))
            if detached is not None and version <= detached:
                claim = RecordClaim(detached, "[]")
        # A record's identities have a version of their own (ProfileUpdate).
        asserted_at = update.identities_version or version
        if claim is not None and asserted_at <= claim.version:
            # Older than the record's newest change: what it says of identities is
            # out of date, so it only writes (version-guarded) to the record's profile.
            return self._stale(update, record, version)
        if update.operation is UpdateOperation.DELETE:
            return self._delete(update, record, identities, version)
        key = key or claim_key(identities)
        return self._upsert(
            update, record, identities, version=version, key=key, asserted_at=asserted_at
        )

    def _erase_all(
        self, update: ProfileUpdate, identities: list[Identity], version: Version
    ) -> Result:
        """Step 3: every profile holding one of the identities, as a match or retired."""
        found = self._owners_of(identities)
        for identity in identities:
            found += [p for p in self._retired_holders.get(identity, ()) if p not in found]
        found = [profile_id for profile_id in found if profile_id in self._profiles]
        if any(self._profiles[profile_id].partial for profile_id in found):
            raise NeedsValues("erasing needs every identity of the profile")
        for profile_id in found:
            self._erase(self._profiles[profile_id], version[0], update)
        for identity in identities:
            self._tombstone(identity, version[0])
        return Result(Outcome.APPLIED, profile_id=found[0] if found else None)

    def _stale(self, update: ProfileUpdate, record: RecordKey, version: Version) -> Result:
        if update.operation is UpdateOperation.DELETE:
            return Result(Outcome.UNCHANGED)
        profile_id = self._owner.get(crm_identity(record))
        if profile_id is None:
            # The record was deleted or detached by a newer change.
            return Result(Outcome.DROPPED, reason="stale")
        profile = self._profiles[profile_id]
        drops: list[tuple[str, str]] = []
        changed = self._write_attributes(profile, update, version, drops)
        changed |= self._write_consents(profile, update, drops)
        self._observed(profile, update, ProfileChangeKind.UPDATED)
        return self._result(profile, changed, [], drops)

    def _delete(
        self, update: ProfileUpdate, record: RecordKey, identities: list[Identity], version: Version
    ) -> Result:
        """Step 4: the record asserts nothing any more; its own id is detached (and
        remembered, hashed), and what nobody else asserts is retired."""
        found = self._owners_of([crm_identity(record), *identities])
        orphans = self._claim(record, RecordClaim(version, "[]"), frozenset())
        if not found:
            self._detached_version(crm_identity(record), version)
            return Result(Outcome.UNCHANGED)
        profile = self._profiles[found[0]]
        changed = self._detach(profile, crm_identity(record), version)
        for identity in orphans:
            if identity.kind != "crm" and self._identity_rules.retires(identity):
                changed |= self._retire(identity, record, version)
        kind = ProfileChangeKind.DETACHED if changed else ProfileChangeKind.UPDATED
        self._observed(profile, update, kind)
        return self._result(profile, changed, [], ())

    def _upsert(
        self,
        update: ProfileUpdate,
        record: RecordKey,
        identities: list[Identity],
        *,
        version: Version,
        key: str,
        asserted_at: Version,
    ) -> Result:
        """Step 2 and step 5."""
        found = self._owners_of(identities)
        # What the profile takes: all the record asserts, but what a profile a split
        # keeps apart holds (the record asserts it still; it stays where it is).
        joining = identities
        if len(found) > 1 and self._apart:
            found, contested = self._kept_apart(found, record, identities)
            joining = [identity for identity in identities if identity not in contested]
        if len(found) > 1 and self._on_conflict == "reject":
            ids = " and ".join(str(profile_id) for profile_id in found)
            return Result(
                Outcome.REJECTED,
                reason=f"identities of one change belong to profiles {ids}; "
                "merge them or correct the source",
            )
        retiring = self._retiring(record, identities, key)
        left_out, refusal = self._within_limits(found, joining, retiring)
        if refusal is not None:
            return Result(Outcome.REJECTED, reason=refusal)
        merges = [
            self._merge(self._profiles[other], self._profiles[found[0]], update)
            for other in found[1:]
        ]
        profile = self._profiles[found[0]] if found else self._create()
        changed = bool(merges) or not found
        claimed = [identity for identity in identities if identity not in left_out]
        claim = RecordClaim(asserted_at, key if not left_out else claim_key(claimed))
        orphans = self._claim(record, claim, frozenset(claimed))
        for identity in joining:
            if identity not in left_out:
                changed |= self._attach(profile, identity, version)
        for identity in orphans:
            if self._identity_rules.retires(identity):
                changed |= self._retire(identity, record, version)
        drops: list[tuple[str, str]] = [
            (f"identity:{identity.kind}", "limit reached: the profile keeps its oldest")
            for identity in left_out
        ]
        changed |= self._write_attributes(profile, update, version, drops)
        changed |= self._write_consents(profile, update, drops)
        self._observed(
            profile, update, ProfileChangeKind.UPDATED if found else ProfileChangeKind.CREATED
        )
        return self._result(profile, changed, merges, drops)

    def _split(self, update: ProfileUpdate) -> Result:
        """Undo the merge of profile ``update.record_id`` (services/writer/unmerge.py),
        and keep the two apart from then on."""
        merged_id = int(update.record_id) if update.record_id.isdigit() else -1
        merge = self._merges.get(merged_id)
        if merge is None:
            return Result(Outcome.REJECTED, reason=f"split: no merge of profile {merged_id}")
        if merged_id in self._profiles:
            return Result(Outcome.REJECTED, reason=f"split: profile {merged_id} is not merged")
        holders = self._owners_of([crm_identity(record) for record in merge.records])
        if len(holders) != 1:
            where = " and ".join(str(p) for p in holders) or "no profile"
            return Result(
                Outcome.REJECTED,
                reason=f"split: the records of profile {merged_id} are in {where} now",
            )
        profile = self._profiles[holders[0]]
        if profile.partial:
            raise NeedsValues(f"splitting profile {profile.id}")
        leaving = {r for r in merge.records if self._owner.get(crm_identity(r)) == profile.id}
        values: dict[str, list[StoredValue]] = {
            name: [*([value] if value is not None else []), *kept.values()]
            for name in {*profile.attributes, *profile.alternatives}
            for value, kept in [(profile.attributes.get(name), profile.alternatives.get(name, {}))]
        }
        plan = split_plan(
            identities=profile.identities,
            retired={i: (r.source, r.record_id) for i, r in profile.retired.items()},
            values=values,
            provenance=lambda value: (value.source, value.record_id),
            leaving=leaving,
            asserters=self._claims.asserters,
            wins=self._rules.wins,
        )
        back = Profile(id=merged_id, created_at=merge.created_at or self._now, updated_at=self._now)
        self._profiles[back.id] = back
        self.changes.profiles[back.id] = back
        self.changes.new_profiles.add(back.id)
        for identity in plan.identities:
            profile.identities.discard(identity)
            back.identities.add(identity)
            self._owner[identity] = back.id
            self.changes.identities[identity] = back.id
            self._seen.removed.append(identity)
        for identity in plan.retired:
            back.retired[identity] = retired = profile.retired.pop(identity)
            self.changes.retired[(profile.id, identity)] = None
            self.changes.retired[(back.id, identity)] = retired
        self._take_side(profile, plan.stays, values)
        profile.updated_at = self._now
        self.changes.profiles[profile.id] = profile
        self._observed(profile, update, ProfileChangeKind.UPDATED)
        self._seen = _Seen()
        self._seen.added.extend(sorted(back.identities))
        self._take_side(back, plan.leaves, values)
        self._observed(back, update, ProfileChangeKind.CREATED)
        self._keep_apart(profile.id, back.id)
        self.changes.splits[merged_id] = self._now
        return Result(Outcome.APPLIED, profile_id=back.id)

    def _take_side(
        self, profile: Profile, side: Side[StoredValue], values: Mapping[str, list[StoredValue]]
    ) -> None:
        """``profile`` shows and keeps its side's values of a split, and no others."""
        for name, writes in values.items():
            shown = side.shown.get(name)
            before = profile.attributes.get(name)
            if shown is None:
                if before is not None:
                    del profile.attributes[name]
                    self.changes.attributes.pop((profile.id, name), None)
                    self.changes.attributes_gone.add((profile.id, name))
                    self._seen.attribute(name, before, before._replace(value=None))
            elif shown is not before:
                self._set_attribute(profile, name, shown)
            kept = side.kept.get(name, {})
            for write in writes:
                record = (write.source, write.record_id)
                key = (profile.id, name, *record)
                self.changes.alternatives[key] = kept.get(record)
            if kept:
                profile.alternatives[name] = dict(kept)
            else:
                profile.alternatives.pop(name, None)

    def _kept_apart(
        self, found: list[int], record: RecordKey, identities: list[Identity]
    ) -> tuple[list[int], set[Identity]]:
        """The profiles a change may merge, and the identities it cannot take: those of
        a profile a split keeps apart from the one it joins (the record's own profile,
        if it has one, else the match key's)."""
        own = self._owner.get(crm_identity(record))
        lead = found[0]
        if own is not None and own in self._apart.get(lead, ()):
            lead = own
        kept = [lead]
        for profile_id in found:
            apart = self._apart.get(profile_id, set())
            if profile_id not in kept and apart.isdisjoint(kept):
                kept.append(profile_id)
        contested = {i for i in identities if self._owner.get(i) not in (None, *kept)}
        return kept, contested

    # --- identities asserted by records (services/writer/identity_claims.py) -----

    def _claim(
        self, record: RecordKey, claim: RecordClaim, identities: frozenset[Identity]
    ) -> list[Identity]:
        """``record`` asserts ``identities`` from the claim's version on; returns the ones
        nobody asserts any more."""
        first = self._claims.of(record) is None
        kept, changed, orphans = self._claims.claim(record, claim, identities)
        if kept:
            self.changes.claims[record] = claim
        if changed:
            if first and record not in self.changes.claimed:
                self.changes.first_claims.add(record)
            self.changes.claimed[record] = identities
        return orphans

    def _retiring(self, record: RecordKey, identities: list[Identity], key: str) -> set[Identity]:
        """What a new claim of ``record`` retires: the identities it lets go of that no
        other record asserts, as the policy retires them."""
        claim = self._claims.of(record)
        if claim is None or claim.key == key:
            return set()
        kept = set(identities)
        return {
            identity
            for identity in claimed(claim)
            if identity not in kept
            and self._identity_rules.retires(identity)
            and self._claims.asserters.get(identity, set()) <= {record}
        }

    def _within_limits(
        self, found: list[int], identities: list[Identity], retiring: set[Identity]
    ) -> tuple[set[Identity], str | None]:
        """The identities the change leaves out (``keep_oldest``), or why it goes to
        review instead."""
        rules = self._identity_rules
        held = [self._profiles[profile_id].identities for profile_id in found]
        if len(held) == 1 and held[0].issuperset(identities):
            return set(), None  # nearly every change: nothing added, no limit to pass
        if not held and len(identities) <= rules.smallest:
            return set(), None  # a new record's own profile
        after = set().union(*held, identities) - retiring
        breaches = rules.breaches(held, after)
        if not breaches:
            return set(), None
        told = "; ".join(breach.describe() for breach in breaches)
        if len(found) > 1:
            ids = " and ".join(str(profile_id) for profile_id in found)
            return set(), f"review: merging profiles {ids} would hold {told}"
        scopes = {breach.scope.partition(" of ")[0] for breach in breaches}
        if not all(rules.keeps_oldest(Identity(kind, "")) for kind in scopes):
            where = f"profile {found[0]}" if found else "a new profile"
            return set(), f"review: {where} would hold {told}"
        kept = set(held[0]) - retiring if held else set()
        left_out: set[Identity] = set()
        for identity in identities:
            if identity in kept:
                continue
            if rules.breaches([kept], kept | {identity}):
                left_out.add(identity)
            else:
                kept.add(identity)
        return left_out, None

    def _retire(self, identity: Identity, record: RecordKey, version: Version) -> bool:
        """Nobody asserts ``identity`` any more: it matches nothing, kept as history."""
        profile_id = self._owner.pop(identity, None)
        if profile_id is None:
            return False
        profile = self._profiles[profile_id]
        profile.identities.discard(identity)
        self.changes.identities[identity] = None
        if identity.kind != "crm":
            retired = RetiredIdentity(version[0], record[0], record[1])
            profile.retired[identity] = retired
            self.changes.retired[(profile_id, identity)] = retired
        self._seen.removed.append(identity)
        return True

    # --- the steps --------------------------------------------------------------

    def _owners_of(self, identities: Iterable[Identity]) -> list[int]:
        """The profiles owning ``identities``, each once, in identity order."""
        owner = self._owner.get
        found: list[int] = []
        for identity in identities:
            profile_id = owner(identity)
            if profile_id is not None and profile_id not in found:
                found.append(profile_id)
        return found

    def _erased(self, identities: Iterable[Identity], moment: int) -> bool:
        """Whether one of ``identities`` was erased at or after ``moment``."""
        for identity in identities:
            erased_at = self._tombstones.get(identity_hash(identity))
            if erased_at is not None and erased_at >= moment:
                return True
        return False

    def _observed(self, profile: Profile, update: ProfileUpdate, kind: ProfileChangeKind) -> None:
        """The update's ProfileChanged event, when it changed a value, a consent or an
        identity of ``profile`` (or created it)."""
        seen = self._seen
        if self._encode_change is None or (
            kind is not ProfileChangeKind.CREATED and not seen.any()
        ):
            return
        self._event(
            profile,
            update,
            kind,
            attributes=[(name, old, new.value) for name, (old, new) in seen.attributes.items()],
            consents=[
                (sub, channel, old, new.status, new.changed_at)
                for (sub, channel), (old, new) in seen.consents.items()
            ],
        )

    def _event(
        self,
        profile: Profile,
        update: ProfileUpdate,
        kind: ProfileChangeKind,
        *,
        attributes: list[tuple[str, FieldValue, FieldValue]] | None = None,
        consents: list[tuple[str, str, str | None, str, int]] | None = None,
    ) -> None:
        seen, encode = self._seen, self._encode_change
        if encode is None:
            return
        record = change_record(
            event_id=f"{update.event_id}:{profile.id}",
            profile_id=profile.id,
            kind=kind,
            committed_at=self._now,
            source=update.source,
            record_id=update.record_id,
            source_event_id=update.event_id,
            source_modified_at=update.source_modified_at,
            mapping_version=update.mapping_version,
            identities=sorted(profile.identities),
            identities_added=seen.added,
            identities_removed=seen.removed,
            attributes=attributes or (),
            consents=consents or (),
            merged_profile_ids=seen.merged,
        )
        self.changes.events.append((change_key(profile.id), encode(record)))

    def _result(
        self, profile: Profile, changed: bool, merges: list[Merge], drops: Iterable[tuple[str, str]]
    ) -> Result:
        if changed:
            profile.updated_at = self._now
            self.changes.profiles[profile.id] = profile
        outcome = Outcome.APPLIED if changed else Outcome.UNCHANGED
        return Result(outcome, profile.id, "", tuple(merges), tuple(drops))

    def _create(self) -> Profile:
        profile = Profile(id=self._next_id(), created_at=self._now, updated_at=self._now)
        self._profiles[profile.id] = profile
        self.changes.profiles[profile.id] = profile
        self.changes.new_profiles.add(profile.id)
        return profile

    def _attach(self, profile: Profile, identity: Identity, version: Version) -> bool:
        if identity in profile.identities:
            return False
        profile.identities.add(identity)
        self._owner[identity] = profile.id
        self.changes.identities[identity] = profile.id
        self._seen.added.append(identity)
        # Asserted again: it matches again, no longer history. A partial profile has
        # its retired identities unloaded: the row goes, if there is one.
        was_retired = profile.retired.pop(identity, None) is not None
        if was_retired or (profile.partial and profile.id not in self.changes.new_profiles):
            self.changes.retired[(profile.id, identity)] = None
        return True

    def _detached_version(self, identity: Identity, version: Version) -> None:
        key = identity_hash(identity)
        previous = self._detached.get(key)
        if previous is None or version > previous:
            self._detached[key] = version
            self.changes.detached[key] = version

    def _detach(self, profile: Profile, identity: Identity, version: Version) -> bool:
        self._detached_version(identity, version)
        if identity not in profile.identities:
            return False
        profile.identities.discard(identity)
        del self._owner[identity]
        self.changes.identities[identity] = None
        self._seen.removed.append(identity)
        return True

    def _write_attributes(
        self,
        profile: Profile,
        update: ProfileUpdate,
        version: Version,
        drops: list[tuple[str, str]],
    ) -> bool:
        # The hot loop of every store: names looked up once, tuples built in C.
        rules, attributes, written = self._rules, profile.attributes, self.changes.attributes
        source, record_id, now = update.source, update.record_id, self._now
        profile_id, mapping_version = profile.id, update.mapping_version
        seen = self._seen
        changed = False
        writes: list[tuple[str, FieldValue]] = [
            (name, value) for name, value in update.attributes.items() if value is not None
        ]
        writes += [(name, None) for name in update.cleared]
        restricted = rules.restricted
        for name, value in writes:
            refusal = rules.refusal(name, source) if name in restricted else None
            if refusal is not None:
                drops.append((name, refusal))
                continue
            incoming = StoredValue(value, source, record_id, version, mapping_version, now)
            stored = attributes.get(name)
            if stored is not None and (stored.record_id != record_id or stored.source != source):
                # Another record's value: the loser is kept by provenance (a split).
                if not rules.wins(name, incoming, stored):
                    self._keep_alternative(profile, name, incoming)
                    continue
                self._keep_alternative(profile, name, stored)
                self._drop_alternative(profile, name, (source, record_id))
            elif stored is not None and not rules.wins(name, incoming, stored):
                continue
            attributes[name] = incoming
            written[(profile_id, name)] = incoming
            seen.attribute(name, stored, incoming)
            changed = True
        return changed

    def _write_consents(
        self, profile: Profile, update: ProfileUpdate, drops: list[tuple[str, str]]
    ) -> bool:
        changed = False
        for consent in update.consents:
            channel = consent.channel.value
            allowed = self._rules.consent_source(consent.subscription, channel)
            if allowed != update.source:
                why = "no such subscription" if allowed is None else f"consent source is {allowed}"
                drops.append((f"{consent.subscription}/{channel.lower()}", why))
                continue
            key = (consent.subscription, channel)
            changed_at = to_micros(consent.changed_at)
            stored = profile.consents.get(key)
            if stored is not None and changed_at <= stored.changed_at:
                continue
            value = StoredConsent(consent.status.value, changed_at, update.source, self._now)
            profile.consents[key] = value
            self.changes.consents[(profile.id, *key)] = value
            self._seen.consent(key, stored, value)
            changed = True
        return changed

    def _set_attribute(self, profile: Profile, name: str, value: StoredValue) -> None:
        self._seen.attribute(name, profile.attributes.get(name), value)
        profile.attributes[name] = value
        self.changes.attributes[(profile.id, name)] = value

    def _merge(self, merged: Profile, lead: Profile, update: ProfileUpdate) -> Merge:
        for profile in (merged, lead):
            if profile.partial:
                raise NeedsValues(f"merging profile {profile.id}")
        records = tuple(sorted(r for i in merged.identities if (r := record_of(i)) is not None))
        for identity in merged.identities:
            lead.identities.add(identity)
            self._owner[identity] = lead.id
            self.changes.identities[identity] = lead.id
            self._seen.added.append(identity)
        self._merge_attributes(merged, lead)
        for other in self._apart.pop(merged.id, set()):
            self._keep_apart(lead.id, other)
        for key, consent in merged.consents.items():
            stored = lead.consents.get(key)
            if stored is None or consent.changed_at > stored.changed_at:
                lead.consents[key] = consent
                self.changes.consents[(lead.id, *key)] = consent
                self._seen.consent(key, stored, consent)
        for identity, retired in merged.retired.items():
            if identity not in lead.identities and identity not in lead.retired:
                lead.retired[identity] = retired
                self.changes.retired[(lead.id, identity)] = retired
        lead.created_at = min(lead.created_at, merged.created_at)
        self._seen.merged.append(merged.id)
        self._remove(merged)
        merge = Merge(merged.id, lead.id, update.event_id, records, merged.created_at)
        self.changes.merges.append(merge)
        self._merges[merged.id] = merge
        return merge

    def _merge_attributes(self, merged: Profile, lead: Profile) -> None:
        """Each attribute's winner shows; every other record's newest write is kept."""
        for name, value in merged.attributes.items():
            mine = lead.attributes.get(name)
            if self._rules.wins(name, value, mine):
                self._set_attribute(lead, name, value)
                if mine is not None:
                    self._keep_alternative(lead, name, mine)
            else:
                self._keep_alternative(lead, name, value)
        for name, others in merged.alternatives.items():
            for value in others.values():
                self._keep_alternative(lead, name, value)

    def _keep_alternative(self, profile: Profile, name: str, value: StoredValue) -> None:
        """``value``, another record's than the one shown, kept if that record's newest."""
        record = (value.source, value.record_id)
        if not profile.partial:
            kept = profile.alternatives.setdefault(name, {})
            known = kept.get(record)
            if known is not None and known.version >= value.version:
                return
            kept[record] = value
        # A partial profile's are not loaded: the store keeps the newer of the stored
        # one and this, and of two in one batch, this keeps the newer.
        key = (profile.id, name, *record)
        pending = self.changes.alternatives.get(key)
        if pending is not None and pending.version >= value.version:
            return
        self.changes.alternatives[key] = value

    def _drop_alternative(self, profile: Profile, name: str, record: RecordKey) -> None:
        """The record's value shows now: no longer an alternative."""
        if not profile.partial:
            if record not in profile.alternatives.get(name, {}):
                return
            del profile.alternatives[name][record]
        self.changes.alternatives[(profile.id, name, *record)] = None

    def _keep_apart(self, one: int, other: int) -> None:
        self._apart.setdefault(one, set()).add(other)
        self._apart.setdefault(other, set()).add(one)
        self.changes.separations.add((min(one, other), max(one, other)))

    def _erase(self, profile: Profile, erased_at: int, update: ProfileUpdate) -> None:
        self._event(profile, update, ProfileChangeKind.ERASED)
        for identity in profile.identities:
            self._tombstone(identity, erased_at)
            del self._owner[identity]
            self.changes.identities[identity] = None
            record = record_of(identity)
            if record is not None:
                # The record's claim names its emails: personal data, it goes too.
                self._claims.forget(record)
                self.changes.claims[record] = None
                self.changes.claimed[record] = frozenset()
        for identity in profile.retired:
            self._tombstone(identity, erased_at)
        self.changes.erasures[profile.id] = erased_at
        self._remove(profile)

    def _remove(self, profile: Profile) -> None:
        del self._profiles[profile.id]
        self.changes.profiles.pop(profile.id, None)
        self.changes.removed_profiles.add(profile.id)
        for key in [k for k in self.changes.attributes if k[0] == profile.id]:
            del self.changes.attributes[key]
        for ckey in [k for k in self.changes.consents if k[0] == profile.id]:
            del self.changes.consents[ckey]
        for rkey in [k for k in self.changes.retired if k[0] == profile.id]:
            del self.changes.retired[rkey]
        for akey in [k for k in self.changes.alternatives if k[0] == profile.id]:
            del self.changes.alternatives[akey]

    def _tombstone(self, identity: Identity, erased_at: int) -> None:
        key = identity_hash(identity)
        if self._tombstones.get(key, -1) < erased_at:
            self._tombstones[key] = erased_at
            self.changes.tombstones[key] = erased_at


def match_identity(update: ProfileUpdate) -> Identity:
    kind, _, value = update.match_key.partition(":")
    return Identity(kind, value)


def identities_of(update: ProfileUpdate) -> list[Identity]:
    """The match key's identity first, then the others, each once."""
    match = match_identity(update)
    return [match, *(i for i in update.identities if i != match)]


class BatchWrites(NamedTuple):
    """What a batch writes, so what its decisions need of the stored profiles: the
    versions of these attributes, and the stored consents only if it writes any."""

    attributes: frozenset[str]
    consents: bool


def batch_writes(updates: Iterable[ProfileUpdate]) -> BatchWrites:
    names: set[str] = set()
    consents = False
    for update in updates:
        names.update(update.attributes)
        names.update(update.cleared)
        consents = consents or bool(update.consents)
    return BatchWrites(frozenset(names), consents)


MAX_TEXT: Final = 65_536
SMALL_INT: Final = 2**53


def update_problem(update: ProfileUpdate) -> str | None:
    """Why no store can hold ``update`` (a poison change), or None."""
    match_kind, _, match_value = update.match_key.partition(":")
    for kind, text in ((match_kind, match_value), *update.identities):
        if not kind or not text:
            return f"empty identity {kind}:{text}"
        if _bad_text(text):
            return f"identity of kind {kind} is not storable text"
    for name, value in update.attributes.items():
        # Short clean strings and small integers are nearly every value: decided here.
        if (
            len(name) < 256
            and "\x00" not in name
            and (
                (isinstance(value, str) and len(value) < 256 and "\x00" not in value)
                or (type(value) is int and -SMALL_INT < value < SMALL_INT)
            )
        ):
            continue
        problem = _value_problem(value)
        if problem is not None or _bad_text(name):
            return f"attribute {name[:64]!r}: {problem or 'name is not storable text'}"
    return None


def _value_problem(value: FieldValue) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return "integer out of the 64-bit range"
    if isinstance(value, str) and _bad_text(value):
        return "text with a NUL character or over 64 KiB"
    if isinstance(value, (list, tuple)) and any(_bad_text(item) for item in value):
        return "a list item with a NUL character or over 64 KiB"
    return None


def _bad_text(text: str) -> bool:
    # PostgreSQL text cannot hold NUL, and no profile attribute is megabytes long.
    return "\x00" in text or len(text) > MAX_TEXT
