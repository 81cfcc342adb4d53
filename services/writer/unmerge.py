"""What a split gives back: a merged profile's share of the profile it was merged into.

A merge record names the source records the merged profile held. Splitting it, those
of them still in the profile go back to a profile of their own (the merged one's id
and creation time), with, by provenance:

- their CRM ids, and every other identity only they assert (one records of both sides
  assert stays where it is: no identity matches two profiles), and the identities they
  retired;
- per attribute, the newest write of their records (each record's newest write is
  kept, shown or as an alternative, so each side's value is what it would be had the
  merge never happened); the other side keeps its own the same way.

Consents stay with the profile split from: a consent knows its source, not the record
that gave it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.core.contracts import Identity
from services.writer.identity_claims import RecordKey, record_of

V = TypeVar("V")
"""An attribute write (the ProfileBook's StoredValue)."""


@dataclass
class Side(Generic[V]):
    """One side's attribute values: the one shown and the others kept."""

    shown: dict[str, V] = field(default_factory=dict)
    kept: dict[str, dict[RecordKey, V]] = field(default_factory=dict)


@dataclass
class SplitPlan(Generic[V]):
    identities: list[Identity]
    """What goes back to the split-off profile."""
    retired: list[Identity]
    stays: Side[V]
    leaves: Side[V]


def split_plan(
    *,
    identities: set[Identity],
    retired: Mapping[Identity, RecordKey],
    values: Mapping[str, list[V]],
    provenance: Callable[[V], RecordKey],
    leaving: set[RecordKey],
    asserters: Mapping[Identity, set[RecordKey]],
    wins: Callable[[str, V, V], bool],
) -> SplitPlan[V]:
    """``values`` are every kept write per attribute (shown and alternatives), each
    with its record by ``provenance``; ``leaving`` the records going back;
    ``retired`` the record that retired each retired identity."""
    moving: list[Identity] = []
    for identity in sorted(identities):
        record = record_of(identity)
        if record is not None:
            goes = record in leaving
        else:
            holders = asserters.get(identity, set())
            goes = bool(holders) and holders <= leaving
        if goes:
            moving.append(identity)
    stays: Side[V] = Side()
    leaves: Side[V] = Side()
    for name, writes in values.items():
        for side, mine in (
            (stays, [w for w in writes if provenance(w) not in leaving]),
            (leaves, [w for w in writes if provenance(w) in leaving]),
        ):
            shown: V | None = None
            for write in mine:
                if shown is None or wins(name, write, shown):
                    shown = write
            if shown is None:
                continue
            side.shown[name] = shown
            others = {provenance(w): w for w in mine if w is not shown}
            if others:
                side.kept[name] = others
    return SplitPlan(
        identities=moving,
        retired=sorted(i for i, record in retired.items() if record in leaving),
        stays=stays,
        leaves=leaves,
    )
