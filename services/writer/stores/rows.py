"""Profile rows as the SQL stores hold them, both ways.

Both SQL stores have the same tables (see their schema modules): these turn a
ProfileBook's values into rows and the rows of one read back into Profiles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import orjson

from services.core.contracts import Identity
from services.writer.identity_claims import RetiredIdentity
from services.writer.profiles import Merge, Profile, StoredConsent, StoredValue

ATTRIBUTE_COLUMNS: Final = (
    "profile_id, name, value, source, source_record_id, source_modified_at, sequence, "
    "mapping_version, written_at"
)
CONSENT_COLUMNS: Final = "profile_id, subscription, channel, status, changed_at, source, written_at"
RETIRED_COLUMNS: Final = "profile_id, kind, value, retired_at, source, record_id"

Row = Sequence[Any]


def encode_value(value: object) -> str:
    """An attribute value as JSON text (orjson: one per attribute written, and the
    standard library's encoder was a tenth of a batch's time). Values reach the store
    checked by ``update_problem``: finite numbers within 64 bits, so orjson's null for
    NaN and its refusal of larger integers never arise."""
    return orjson.dumps(value).decode()


def identity_rows(rows: Iterable[Row]) -> list[tuple[int, Identity]]:
    """(profile_id, identity) from identity rows (profile_id, kind, value)."""
    return [(pid, Identity(kind, value)) for pid, kind, value in rows]


def attribute_row(
    profile_id: int, name: str, value: StoredValue, *, encoded: bool = True
) -> tuple[Any, ...]:
    """In ATTRIBUTE_COLUMNS order; the value as JSON text (or, not ``encoded``, as it
    is, for a row that travels inside JSON), None for a clear."""
    stored = value.value
    if encoded and stored is not None:
        stored = encode_value(stored)
    return (
        profile_id,
        name,
        stored,
        value.source,
        value.record_id,
        value.version[0],
        value.version[1],
        value.mapping_version,
        value.written_at,
    )


def consent_row(key: tuple[int, str, str], consent: StoredConsent) -> tuple[Any, ...]:
    """In CONSENT_COLUMNS order."""
    profile_id, subscription, channel = key
    return (
        profile_id,
        subscription,
        channel,
        consent.status,
        consent.changed_at,
        consent.source,
        consent.written_at,
    )


def merge_row(merge: Merge) -> tuple[Any, ...]:
    """(merged_id, into_id, event_id, records as JSON, merged_created_at)."""
    records = orjson.dumps([list(record) for record in merge.records]).decode()
    return (merge.merged_id, merge.into_id, merge.event_id, records, merge.created_at)


def merge_of(row: Row) -> Merge:
    """A merge record from the columns ``merge_row`` writes."""
    merged_id, into_id, event_id, records, created_at = row
    return Merge(
        int(merged_id),
        int(into_id),
        event_id,
        tuple((source, record_id) for source, record_id in orjson.loads(records)),
        int(created_at),
    )


def assemble_value(row: Row, decode_value: Callable[[Any], Any]) -> StoredValue:
    """A value from a row in ATTRIBUTE_COLUMNS order."""
    _pid, _name, value, source, record_id, modified, sequence, mapping, written = row
    decoded = None if value is None else decode_value(value)
    return StoredValue(decoded, source, record_id, (modified, sequence), mapping, written)


def assemble_profiles(
    profile_ids: Sequence[int],
    *,
    profiles: Iterable[Row],
    identities: Iterable[tuple[int, Identity]],
    attributes: Iterable[Row],
    consents: Iterable[Row],
    decode_value: Callable[[Any], Any],
    partial: bool = False,
    retired: Iterable[Row] = (),
    alternatives: Iterable[Row] = (),
) -> list[Profile]:
    """Profiles from the rows of one read, in ``profile_ids`` order.

    ``profiles`` rows are (id, created_at, updated_at), ``identities`` (profile_id,
    identity), the others rows in their COLUMNS order (``retired`` RETIRED_COLUMNS,
    ``alternatives`` ATTRIBUTE_COLUMNS).
    ``decode_value`` turns a stored attribute value (not None) into its FieldValue.
    Integer columns come as ints from both SQL drivers. Plain unpacking and positional
    arguments: this runs for every profile and attribute a batch touches, and takes
    2 µs a profile where keywords, int() calls and identities built again took 5.
    """
    found = {
        pid: Profile(pid, created, updated, partial=partial) for pid, created, updated in profiles
    }
    for pid, identity in identities:
        found[pid].identities.add(identity)
    for pid, name, value, source, record_id, modified, sequence, mapping, written in attributes:
        found[pid].attributes[name] = StoredValue(
            None if value is None else decode_value(value),
            source,
            record_id,
            (modified, sequence),
            mapping,
            written,
        )
    for row in alternatives:
        # Rare (a value two records of a profile wrote): readable beats fast here.
        kept = assemble_value(row, decode_value)
        found[row[0]].alternatives.setdefault(row[1], {})[(kept.source, kept.record_id)] = kept
    for pid, subscription, channel, status, changed_at, source, written_at in consents:
        found[pid].consents[(subscription, channel)] = StoredConsent(
            status, changed_at, source, written_at
        )
    for pid, kind, value, retired_at, source, record_id in retired:
        found[pid].retired[Identity(kind, value)] = RetiredIdentity(retired_at, source, record_id)
    return [found[pid] for pid in profile_ids if pid in found]
