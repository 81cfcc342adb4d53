"""The dataclasses mirror the Avro schemas exactly, and every contract round-trips."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from services.core.codecs import SCHEMA_FILES, Codec, load_contracts, schemas_dir
from services.core.contracts import (
    AuditEvent,
    Channel,
    ConsentChange,
    ConsentStatus,
    ContactChange,
    ControlKind,
    FieldChange,
    FieldDrop,
    Identity,
    PartitionOffset,
    ProfileUpdate,
    RejectedEvent,
    SyncControl,
    UpdateOperation,
)
from services.core.profile_changed import (
    AttributeChange,
    ConsentStatusChange,
    ProfileChanged,
    ProfileChangeKind,
)
from services.core.serde import DecodeError

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

CLASSES = {
    "contact_change": ContactChange,
    "profile_update": ProfileUpdate,
    "sync_control": SyncControl,
    "rejected_event": RejectedEvent,
    "audit_event": AuditEvent,
    "profile_changed": ProfileChanged,
}


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_dataclass_fields_are_the_schema_fields(name: str) -> None:
    schema = json.loads((schemas_dir() / SCHEMA_FILES[name]).read_text())
    schema_fields = {f["name"] for f in schema["fields"]}
    kind = CLASSES[name]
    names = kind._fields if issubclass(kind, tuple) else [f.name for f in dataclasses.fields(kind)]
    class_fields = set(names)
    assert class_fields == schema_fields


def full_update() -> ProfileUpdate:
    return ProfileUpdate(
        match_key="email:ada@example.com",
        source="demo",
        record_id="1",
        event_id="e1",
        operation=UpdateOperation.UPSERT,
        source_modified_at=NOW,
        received_at=NOW,
        identities=(Identity("email", "ada@example.com"), Identity("crm", "demo:1")),
        attributes={"first_name": "Ada", "age": 36, "tags": ["x"]},
        sequence=3,
        mapping_version=2,
        cleared=("phone",),
        consents=(ConsentChange("news", Channel.EMAIL, ConsentStatus.OPT_IN, NOW),),
    )


def test_profile_update_round_trip() -> None:
    codec = load_contracts().profile_update
    update = full_update()
    assert codec.decode(codec.encode(update)) == update


def test_a_narrowed_update_keeps_all_but_what_it_narrows() -> None:
    update = full_update()
    narrowed = update.narrowed({"age": 37}, (), ())
    assert narrowed == update._replace(attributes={"age": 37}, cleared=(), consents=())


def test_a_record_that_does_not_fit_its_type_is_a_decode_error() -> None:
    """Avro accepts the bytes, the typed value refuses the record (say, an enum symbol it
    does not know): the reader gets DecodeError, which sends the message to rejected,
    not an exception that stops its stream."""
    contracts = load_contracts()

    def refuse(record: Mapping[str, Any]) -> ProfileUpdate:
        return ProfileUpdate.from_record({**record, "operation": "MERGE"})

    strict = Codec(
        converter=contracts.profile_update.converter,
        to_record=ProfileUpdate.to_record,
        from_record=refuse,
    )
    update = full_update()
    with pytest.raises(DecodeError, match=r"ProfileUpdate record does not fit its type.*MERGE"):
        strict.decode(contracts.profile_update.encode(update))


def test_audit_event_round_trip() -> None:
    codec = load_contracts().audit_event
    event = AuditEvent(
        match_key="email:ada@example.com",
        source="demo",
        record_id="1",
        event_id="e1",
        decided_at=NOW,
        mapping_version=2,
        changes=(
            FieldChange("first_name", None, "Ada", "map firstname (string)"),
            FieldChange("age", 35, 36, "map age (number)"),
            FieldChange("vip", 1, True, "map vip (boolean)"),
            FieldChange("tags", ["a"], ["a", "b"], "map tags (multi)"),
        ),
        dropped=(FieldDrop("salary", "ownership", "demo does not own it"),),
    )
    decoded = codec.decode(codec.encode(event))
    assert decoded == event
    assert decoded.changes[2].old_value == 1
    assert type(decoded.changes[2].new_value) is bool


def full_profile_change() -> ProfileChanged:
    return ProfileChanged(
        event_id="e1:7",
        profile_id=7,
        kind=ProfileChangeKind.UPDATED,
        committed_at=NOW,
        source="demo",
        record_id="1",
        source_event_id="e1",
        source_modified_at=NOW,
        mapping_version=2,
        identities=(Identity("crm", "demo:1:with:colons"), Identity("email", "ada@example.com")),
        identities_added=(Identity("email", "ada@example.com"),),
        identities_removed=(Identity("email", "old@example.com"),),
        attributes=(
            AttributeChange("first_name", None, "Ada"),
            AttributeChange("age", 35, 36),
            AttributeChange("vip", 1, True),
            AttributeChange("tags", ["a"], ["a", "b"]),
            AttributeChange("city", "London", None),
        ),
        consents=(ConsentStatusChange("news", "EMAIL", None, "OPT_IN", NOW),),
        merged_profile_ids=(3,),
    )


def test_profile_changed_round_trip() -> None:
    codec = load_contracts().profile_changed
    change = full_profile_change()
    decoded = codec.decode(codec.encode(change))
    assert decoded == change
    assert type(decoded.attributes[2].new_value) is bool
    assert decoded.attributes[2].old_value == 1
    assert decoded.key == b"7"


def test_sync_control_round_trip() -> None:
    codec = load_contracts().sync_control
    control = SyncControl(
        source="demo",
        sync_id="s1",
        kind=ControlKind.COMPLETED,
        at=NOW,
        mapping_version=4,
        records_total=10,
        fullsync_end_offsets=(PartitionOffset(0, 5), PartitionOffset(1, 7)),
    )
    assert codec.decode(codec.encode(control)) == control


def test_rejected_event_round_trip_keeps_raw_bytes() -> None:
    codec = load_contracts().rejected_event
    event = RejectedEvent(
        stage="ingest",
        reason="body[0].id: missing",
        rejected_at=NOW,
        source="demo",
        key=b"demo",
        value=b"\xff\x00not json",
        attributes={"path": "/webhooks/demo"},
    )
    assert codec.decode(codec.encode(event)) == event
