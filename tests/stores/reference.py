"""A reference profile model for the model-based store tests, kept apart from the
ProfileBook on purpose: plain dictionaries, the rules as the README states them.

- A source record asserts the identities of the newest change that changed them (its
  emails and its own CRM id), by their own version (a change's ``identities_version``,
  as the mapper sets it); a change no newer than that asserts nothing and only writes
  its attributes (newest write wins) to the record's profile, if it has one.
- A change finds the profiles owning any identity it asserts; several are merged into
  the first (the match key's). An identity nobody asserts any more is retired (it
  stops matching); a deleted record asserts nothing.
- Limits: a change that would leave a profile holding more identities of a kind than
  the limit, and more than any of the profiles it joins already held, is rejected.
- Each attribute's value is the newest write (set or clear) of the profile's changes,
  ties going to the greater source name, then record id; a merge keeps the newest of
  both.
- A split gives a merge back: the records the merged profile held and are still in
  the profile go back to one of the merged id, with their CRM ids, the identities only
  they assert and their writes; the two are kept apart after: a change joining them
  stays with its record's own profile and cannot take the other's identities.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

from services.core.contracts import FieldValue, Identity, ProfileUpdate, UpdateOperation
from services.writer.profiles import identities_of

Version = tuple[int, int]
Record = tuple[str, str]


@dataclass(frozen=True)
class Write:
    version: Version
    source: str
    record_id: str
    value: FieldValue

    def order(self) -> tuple[Version, str, str]:
        return (self.version, self.source, self.record_id)


@dataclass
class ModelProfile:
    identities: set[Identity] = field(default_factory=set)
    writes: dict[str, dict[Record, Write]] = field(default_factory=dict)
    """Per attribute, each record's newest write: the value is the newest of them."""

    def values(self) -> frozenset[tuple[str, FieldValue]]:
        shown = {name: max(by.values(), key=Write.order) for name, by in self.writes.items()}
        return frozenset((n, w.value) for n, w in shown.items() if w.value is not None)


def crm(record: Record) -> Identity:
    return Identity("crm", f"{record[0]}:{record[1]}")


def record_of(identity: Identity) -> Record:
    source, _, record_id = identity.value.partition(":")
    return (source, record_id)


def version_of(update: ProfileUpdate) -> Version:
    return (int(update.source_modified_at.timestamp() * 1e6), update.sequence)


class Reference:
    def __init__(self, *, email_limit: int | None = None, crm_limit: int | None = None) -> None:
        self.limits = {"email": email_limit, "crm": crm_limit}
        self.profiles: dict[int, ModelProfile] = {}
        self.owner: dict[Identity, int] = {}
        self.claims: dict[Record, tuple[Version, frozenset[Identity]]] = {}
        self.merges: dict[int, tuple[Record, ...]] = {}
        """Merged profile id -> the records it held."""
        self.apart: set[frozenset[int]] = set()
        self.rejected: set[str] = set()
        self._ids = itertools.count(1)

    # --- what the store must equal -------------------------------------------------

    def state(self) -> Counter[tuple[frozenset[Identity], frozenset[tuple[str, FieldValue]]]]:
        return Counter((frozenset(p.identities), p.values()) for p in self.profiles.values())

    # --- one change ----------------------------------------------------------------

    def apply(self, update: ProfileUpdate) -> None:
        if update.operation is UpdateOperation.SPLIT:
            self._split(update)
            return
        record = (update.source, update.record_id)
        version = version_of(update)
        asserted_at = update.identities_version or version
        identities = identities_of(update)
        claim = self.claims.get(record)
        if claim is not None and asserted_at <= claim[0]:
            owner = self.owner.get(crm(record))
            if update.operation is UpdateOperation.UPSERT and owner is not None:
                self._write(self.profiles[owner], update, version)
            return
        if update.operation is UpdateOperation.DELETE:
            found = self._owners([crm(record), *identities])
            self._claim(record, version, frozenset())
            if found:
                self.profiles[found[0]].identities.discard(crm(record))
                self.owner.pop(crm(record), None)
            self._retire_unasserted()
            return
        self._upsert(update, record, version, identities, asserted_at)

    def _upsert(
        self,
        update: ProfileUpdate,
        record: Record,
        version: Version,
        identities: list[Identity],
        asserted_at: Version,
    ) -> None:
        claim = self.claims.get(record)
        found = self._owners(identities)
        joining = identities
        if len(found) > 1 and self.apart:
            found, contested = self._kept_apart(found, record, identities)
            joining = [i for i in identities if i not in contested]
        old = claim[1] if claim is not None else frozenset()
        others = {i for r, (_v, ids) in self.claims.items() if r != record for i in ids}
        retiring = {i for i in old - set(identities) if i not in others}
        held = [self.profiles[p].identities for p in found]
        after = set().union(*held, joining) - retiring
        if self._breaks_a_limit(held, after):
            self.rejected.add(update.event_id)
            return
        if found:
            lead_id = found[0]
        else:
            lead_id = next(self._ids)
            self.profiles[lead_id] = ModelProfile()
        lead = self.profiles[lead_id]
        for other in found[1:]:
            merged = self.profiles.pop(other)
            self.merges[other] = tuple(
                sorted(record_of(i) for i in merged.identities if i.kind == "crm")
            )
            lead.identities |= merged.identities
            for name, by in merged.writes.items():
                lead.writes.setdefault(name, {}).update(by)
            # The merged profile stays apart from those it was (should it come back).
            for pair in [p for p in self.apart if other in p]:
                (kept,) = pair - {other}
                self.apart.add(frozenset({lead_id, kept}))
        self._claim(record, asserted_at, frozenset(identities))
        lead.identities |= set(joining)
        for identity in set(lead.identities):
            self.owner[identity] = lead_id
        self._retire_unasserted()
        self._write(lead, update, version)

    def _kept_apart(
        self, found: list[int], record: Record, identities: list[Identity]
    ) -> tuple[list[int], set[Identity]]:
        own = self.owner.get(crm(record))
        lead = found[0]
        if own is not None and frozenset({own, lead}) in self.apart:
            lead = own
        kept = [lead]
        for profile_id in found:
            if profile_id not in kept and all(
                frozenset({profile_id, k}) not in self.apart for k in kept
            ):
                kept.append(profile_id)
        contested = {i for i in identities if self.owner.get(i) not in (None, *kept)}
        return kept, contested

    def _split(self, update: ProfileUpdate) -> None:
        merged_id = int(update.record_id)
        records = self.merges.get(merged_id)
        holders = self._owners([crm(r) for r in records]) if records is not None else []
        if records is None or merged_id in self.profiles or len(holders) != 1:
            self.rejected.add(update.event_id)
            return
        profile = self.profiles[holders[0]]
        leaving = {r for r in records if self.owner.get(crm(r)) == holders[0]}
        back = self.profiles[merged_id] = ModelProfile()
        for identity in sorted(profile.identities):
            if identity.kind == "crm":
                goes = record_of(identity) in leaving
            else:
                asserting = {r for r, (_v, ids) in self.claims.items() if identity in ids}
                goes = bool(asserting) and asserting <= leaving
            if goes:
                profile.identities.discard(identity)
                back.identities.add(identity)
                self.owner[identity] = merged_id
        for name in list(profile.writes):
            by = profile.writes[name]
            gone = {r: w for r, w in by.items() if r in leaving}
            if gone:
                back.writes[name] = gone
                for r in gone:
                    del by[r]
                if not by:
                    del profile.writes[name]
        self.apart.add(frozenset({holders[0], merged_id}))

    def _claim(self, record: Record, version: Version, identities: frozenset[Identity]) -> None:
        """A claim changes (its version too) only when its set does."""
        old = self.claims.get(record)
        if old is None or old[1] != identities:
            self.claims[record] = (version, identities)

    def _owners(self, identities: list[Identity]) -> list[int]:
        found: list[int] = []
        for identity in identities:
            owner = self.owner.get(identity)
            if owner is not None and owner not in found:
                found.append(owner)
        return found

    def _retire_unasserted(self) -> None:
        asserted = {i for _v, ids in self.claims.values() for i in ids}
        for identity in [i for i in self.owner if i not in asserted]:
            self.profiles[self.owner.pop(identity)].identities.discard(identity)

    def _breaks_a_limit(self, held: list[set[Identity]], after: set[Identity]) -> bool:
        for kind, limit in self.limits.items():
            if limit is None:
                continue
            count = sum(1 for i in after if i.kind == kind)
            before = max((sum(1 for i in h if i.kind == kind) for h in held), default=0)
            if count > limit and count > before:
                return True
        return False

    @staticmethod
    def _write(profile: ModelProfile, update: ProfileUpdate, version: Version) -> None:
        writes = [(n, v) for n, v in update.attributes.items() if v is not None]
        writes += [(n, None) for n in update.cleared]
        record = (update.source, update.record_id)
        for name, value in writes:
            incoming = Write(version, update.source, update.record_id, value)
            by = profile.writes.setdefault(name, {})
            stored = by.get(record)
            if stored is None or incoming.order() > stored.order():
                by[record] = incoming
