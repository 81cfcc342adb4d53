"""Which source records assert which identities, and how many a profile may hold.

An identity matches (finds its profile) while a source record asserts it: a record
asserts the identities of its newest change (its email addresses and its own CRM id),
so when the contact's email changes, the record is deleted or it is detached, the
identities it carried before are no longer asserted by it. One nobody asserts any more
is retired: kept on its profile as history, matching nothing, unless the
``keep_matching`` policy keeps it matching (a CRM record id never: a deleted record's
id finds nothing).

A record's claim carries the version of the change that last changed it (its set of
identities is versioned like a field: the mapper sends a record's changes with the
identities of its newest email field), so a change replayed or arriving late never
asserts an identity the record has since let go: only a newer change moves the claim.

Limits guard against the slow mega-merge: per identity kind, the most a profile may
hold (and for CRM ids, the most records of one source). ``review`` rejects the change
that would pass a limit (to the rejected topic, replayable once resolved);
``keep_oldest`` leaves the change's extra identities out. A merge past a limit always
goes to review. A limit counts what a change adds: a profile already past a limit (the
limit was lowered) keeps what it holds and takes nothing more of that kind.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import orjson

from services.core.contracts import Identity
from services.core.mapping_settings import IdentityLimit, IdentitySettings

Version = tuple[int, int]
RecordKey = tuple[str, str]
"""(source, record id)"""

CRM: Final = "crm"


def crm_identity(record: RecordKey) -> Identity:
    """The identity a source record's own id is to profiles."""
    return Identity(CRM, f"{record[0]}:{record[1]}")


def record_of(identity: Identity) -> RecordKey | None:
    """The record a CRM identity names, None for other kinds."""
    if identity.kind != CRM:
        return None
    source, _, record_id = identity.value.partition(":")
    return (source, record_id)


def claim_key(identities: Iterable[Identity]) -> str:
    """A set of identities as one string, the same for the same set (sorted JSON): a
    store keeps it with the record, so that a change asserting what its record already
    asserts (nearly every change) is told by comparing two strings."""
    return orjson.dumps([(kind, value) for kind, value in sorted(identities)]).decode()


class RecordClaim(NamedTuple):
    """What a record asserts, as of the version of its newest change (a NamedTuple:
    one is read per change of a batch)."""

    version: Version
    key: str
    """``claim_key`` of the identities (another spelling of the same set only costs a
    comparison that finds nothing changed)."""


def claimed(claim: RecordClaim) -> frozenset[Identity]:
    """The identities a claim names."""
    return frozenset(Identity(kind, value) for kind, value in orjson.loads(claim.key))


class RetiredIdentity(NamedTuple):
    """An identity no record asserts any more, kept on its profile as history."""

    retired_at: int
    source: str
    """The source and record that asserted it last."""
    record_id: str


class MissingAsserters(LookupError):
    """A claim changed for an identity whose asserters were not loaded: a store bug."""


@dataclass
class Claims:
    """The claims a batch can touch: each record's, and who asserts the identities the
    batch's records may let go of (``candidates`` in services/writer/stores/batch.py)."""

    records: dict[RecordKey, RecordClaim] = field(default_factory=dict)
    asserters: dict[Identity, set[RecordKey]] = field(default_factory=dict)
    """Per identity other than a CRM id (only its own record asserts that one)."""

    @classmethod
    def loaded(
        cls,
        records: Mapping[RecordKey, RecordClaim],
        asserters: Mapping[Identity, Iterable[RecordKey]],
    ) -> Claims:
        return cls(dict(records), {identity: set(rs) for identity, rs in asserters.items()})

    def of(self, record: RecordKey) -> RecordClaim | None:
        return self.records.get(record)

    def claim(
        self, record: RecordKey, claim: RecordClaim, identities: frozenset[Identity]
    ) -> tuple[bool, bool, list[Identity]]:
        """``record`` asserts ``identities`` (``claim`` names them); returns whether the
        claim is new (to keep), whether the set changed, and the identities it asserted
        before that no record asserts any more, in a stable order.

        The same set again keeps the claim as it was, its version too: a claim changes
        only by a change newer than the one that last changed it (the mapper sends a
        record's changes with the identities of its newest fields, so a newer change
        never carries an older set), and nearly every change then writes nothing here."""
        old = self.records.get(record)
        if old is not None and old.key == claim.key:
            return False, False, []
        self.records[record] = claim
        before = claimed(old) if old is not None else frozenset()
        if before == identities:
            return True, old is None, []  # the same set, spelt another way: kept anew
        for identity in identities - before:
            if identity.kind != CRM:
                self.asserters.setdefault(identity, set()).add(record)
        orphans: list[Identity] = []
        for identity in sorted(before - identities):
            if identity.kind == CRM:
                # Only its own record asserts a record's id.
                orphans.append(identity)
                continue
            holders = self.asserters.get(identity)
            if holders is None:
                raise MissingAsserters(f"asserters of a {identity.kind} identity not loaded")
            holders.discard(record)
            if not holders:
                orphans.append(identity)
        return True, True, orphans

    def forget(self, record: RecordKey) -> None:
        """An erased profile's record: its claim goes, personal data and all."""
        old = self.records.pop(record, None)
        if old is None:
            return
        for identity in claimed(old):
            holders = self.asserters.get(identity)
            if holders is not None:
                holders.discard(record)


def letting_go(
    claims: Mapping[RecordKey, RecordClaim],
    batch: Mapping[RecordKey, list[tuple[frozenset[Identity], str]]],
) -> set[Identity]:
    """The identities a batch's records may stop asserting (each record's claim, then
    the sets its changes carry, with their keys, in order), whose other asserters the
    batch must know. Nearly every batch lets go of none."""
    found: set[Identity] = set()
    for record, sets in batch.items():
        claim = claims.get(record)
        if claim is None:
            before: frozenset[Identity] = frozenset()
        elif all(key == claim.key for _carried, key in sets):
            continue
        else:
            before = claimed(claim)
        for carried, _key in sets:
            found.update(before - carried)
            before = carried
    return found


class Breach(NamedTuple):
    """A limit a change would pass."""

    scope: str
    """What is counted: ``email``, or ``crm of hubspot`` for a per-source limit."""
    limit: int
    held: int

    def describe(self) -> str:
        return f"{self.held} {self.scope} identities (limit {self.limit})"


class IdentityRules:
    """The identity settings, as the ProfileBook asks them."""

    def __init__(self, settings: IdentitySettings | None = None) -> None:
        settings = settings or IdentitySettings()
        self._keep_matching = settings.retired == "keep_matching"
        self._limits: dict[str, IdentityLimit] = dict(settings.limits)
        bounds = [
            bound
            for limit in self._limits.values()
            for bound in (limit.max, limit.max_per_source)
            if bound is not None
        ]
        self.smallest = min(bounds, default=2**31)
        """No change carrying at most this many identities can make a new profile pass
        a limit."""

    def retires(self, identity: Identity) -> bool:
        """Whether an identity nobody asserts stops matching."""
        return identity.kind == CRM or not self._keep_matching

    def keeps_oldest(self, identity: Identity) -> bool:
        limit = self._limits.get(identity.kind)
        return limit is not None and limit.at_limit == "keep_oldest"

    def breaches(
        self, before: Iterable[Collection[Identity]], after: Collection[Identity]
    ) -> list[Breach]:
        """The limits ``after`` passes that none of ``before`` (the profiles it was, one
        or several being merged) had already passed as far."""
        if not self._limits:
            return []
        counted_after = self._counts(after)
        most_before: dict[str, int] = {}
        for held in before:
            for scope, count in self._counts(held).items():
                most_before[scope] = max(most_before.get(scope, 0), count)
        found: list[Breach] = []
        for scope, count in sorted(counted_after.items()):
            limit = self._limit_of(scope)
            if limit is not None and count > limit and count > most_before.get(scope, 0):
                found.append(Breach(scope, limit, count))
        return found

    def _limit_of(self, scope: str) -> int | None:
        kind, _, source = scope.partition(" of ")
        limit = self._limits.get(kind)
        if limit is None:
            return None
        return limit.max_per_source if source else limit.max

    def _counts(self, identities: Iterable[Identity]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for identity in identities:
            limit = self._limits.get(identity.kind)
            if limit is None:
                continue
            if limit.max is not None:
                counts[identity.kind] = counts.get(identity.kind, 0) + 1
            if limit.max_per_source is not None:
                record = record_of(identity)
                if record is not None:
                    scope = f"{CRM} of {record[0]}"
                    counts[scope] = counts.get(scope, 0) + 1
        return counts
