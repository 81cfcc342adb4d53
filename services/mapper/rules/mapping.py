"""Field mapping: a source's CRM fields become profile attributes by its config.

``map_change`` is a transformation in the Kafka Connect sense: it never mutates its
input and returns a new ProfileUpdate. Unmapped fields are ignored. A blank value
(missing, null or empty) is left out rather than sent as a clear, so a source never
wipes data another system set (guarantee 6).
"""

from __future__ import annotations

from collections.abc import Mapping

from services.core.contracts import (
    ContactChange,
    FieldValue,
    Operation,
    ProfileUpdate,
    UpdateOperation,
)
from services.core.sources import SourceBase
from services.mapper.rules.identity import identities_of, match_key


def is_blank(value: FieldValue) -> bool:
    return value is None or value in ("", [])


def mapped_attributes(
    fields: Mapping[str, FieldValue], mapping: Mapping[str, str]
) -> dict[str, FieldValue]:
    return {
        attribute: fields[crm_field]
        for crm_field, attribute in mapping.items()
        if crm_field in fields and not is_blank(fields[crm_field])
    }


def map_change(change: ContactChange, source: SourceBase) -> ProfileUpdate:
    identities = identities_of(
        source=change.source,
        record_id=change.record_id,
        fields=change.fields,
        email_field=source.email_field,
    )
    deleting = change.operation is Operation.DELETE
    return ProfileUpdate(
        match_key=match_key(identities, prefer=source.match_key),
        source=change.source,
        record_id=change.record_id,
        event_id=change.event_id,
        operation=UpdateOperation.DELETE if deleting else UpdateOperation.UPSERT,
        source_modified_at=change.source_modified_at,
        sequence=change.sequence,
        received_at=change.received_at,
        mapping_version=source.mapping_version,
        identities=identities,
        attributes={} if deleting else mapped_attributes(change.fields, source.mapping),
    )
