"""Avro single-object encoding: round trips, schema resolution, and poison input."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from services.core.codecs import SCHEMA_FILES, load_contracts, schemas_dir
from services.core.contracts import ContactChange, Operation, Origin
from services.core.serde import (
    HEADER_SIZE,
    SINGLE_OBJECT_MAGIC,
    Converter,
    DecodeError,
    SchemaCatalog,
    schema_from_json,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 8, 30, 1, 123456, tzinfo=UTC)


def change(**overrides: Any) -> ContactChange:
    values: dict[str, Any] = {
        "source": "demo",
        "record_id": "1001",
        "operation": Operation.UPSERT,
        "event_id": "evt-1",
        "source_modified_at": NOW,
        "received_at": NOW,
        "fields": {
            "email": "ada@example.com",
            "age": 36,
            "score": 0.5,
            "vip": True,
            "note": None,
            "tags": ["a", "b"],
        },
        "origin": Origin.WEBHOOK,
    }
    values.update(overrides)
    return ContactChange(**values)


def contact_change_schema() -> dict[str, Any]:
    return json.loads((schemas_dir() / "contact_change.avsc").read_text())


def test_contact_change_round_trip_keeps_every_value() -> None:
    codec = load_contracts().contact_change
    original = change()
    assert codec.decode(codec.encode(original)) == original


def test_encoding_is_single_object_with_the_schema_fingerprint() -> None:
    contracts = load_contracts()
    data = contracts.contact_change.encode(change())
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == contracts.contact_change.converter.schema.fingerprint


def test_fingerprint_matches_the_avro_specification_for_a_known_schema() -> None:
    # CRC-64-AVRO of the canonical form "null" is 0x63dd24e7cc258f8a (Avro spec test
    # vector), written little-endian.
    assert schema_from_json('"null"').fingerprint == bytes.fromhex("8a8f25cce724dd63")


def test_every_contract_schema_parses_and_has_a_distinct_fingerprint() -> None:
    contracts = load_contracts()
    fingerprints = {s.fingerprint for s in contracts.catalog.schemas()}
    assert len(fingerprints) == len(SCHEMA_FILES)


def test_old_writer_new_reader_fills_the_new_field_from_its_default() -> None:
    old = contact_change_schema()
    old["fields"] = [f for f in old["fields"] if f["name"] != "sync_id"]
    catalog = SchemaCatalog()
    old_writer = Converter(schema=schema_from_json(old), catalog=catalog)
    new_reader = load_contracts(catalog=catalog).contact_change
    record = change().to_record()
    del record["sync_id"]
    decoded = new_reader.decode(old_writer.encode(record))
    assert decoded.sync_id is None
    assert decoded.fields == change().fields


def test_new_writer_old_reader_ignores_the_field_it_does_not_know() -> None:
    new = contact_change_schema()
    new["fields"].append({"name": "campaign", "type": ["null", "string"], "default": None})
    catalog = SchemaCatalog()
    new_writer = Converter(schema=schema_from_json(new), catalog=catalog)
    old_reader = load_contracts(catalog=catalog).contact_change
    record = {**change().to_record(), "campaign": "spring"}
    assert old_reader.decode(new_writer.encode(record)) == change()


def test_new_enum_symbol_reads_as_the_readers_default() -> None:
    new = contact_change_schema()
    for field in new["fields"]:
        if field["name"] == "origin":
            field["type"]["symbols"].append("MIGRATION")
    catalog = SchemaCatalog()
    new_writer = Converter(schema=schema_from_json(new), catalog=catalog)
    old_reader = load_contracts(catalog=catalog).contact_change
    record = {**change().to_record(), "origin": "MIGRATION"}
    assert old_reader.decode(new_writer.encode(record)).origin is Origin.WEBHOOK


def test_unknown_writer_schema_is_found_through_a_resolver() -> None:
    new = contact_change_schema()
    new["fields"].append({"name": "campaign", "type": "string", "default": ""})
    writer_schema = schema_from_json(new)
    data = Converter(schema=writer_schema, catalog=SchemaCatalog()).encode(
        {**change().to_record(), "campaign": "x"}
    )
    reader = load_contracts()
    with pytest.raises(DecodeError, match="unknown writer schema"):
        reader.contact_change.decode(data)
    reader.catalog.add_resolver(
        lambda fp: writer_schema.schema_json if fp == writer_schema.fingerprint else None
    )
    assert reader.contact_change.decode(data) == change()


def test_resolver_answering_with_the_wrong_schema_is_refused() -> None:
    other = schema_from_json('"string"')
    data = SINGLE_OBJECT_MAGIC + b"\x01" * 8 + b"\x00"
    reader = load_contracts()
    reader.catalog.add_resolver(lambda _fp: other.schema_json)
    with pytest.raises(DecodeError, match="resolver returned fingerprint"):
        reader.contact_change.decode(data)


def test_incompatible_writer_is_a_decode_error_not_a_crash() -> None:
    bad = copy.deepcopy(contact_change_schema())
    for field in bad["fields"]:
        if field["name"] == "record_id":
            field["type"] = "long"
    catalog = SchemaCatalog()
    writer = Converter(schema=schema_from_json(bad), catalog=catalog)
    reader = load_contracts(catalog=catalog).contact_change
    data = writer.encode({**change().to_record(), "record_id": 7})
    with pytest.raises(DecodeError):
        reader.decode(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "nor in the Confluent wire format"),
        (b"{}", "nor in the Confluent wire format"),
        (SINGLE_OBJECT_MAGIC + b"\x00" * 8, "unknown writer schema"),
        (b"\x00\x00\x00\x00\x07 body", "unknown schema registry id 7"),
    ],
)
def test_garbage_is_a_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        load_contracts().contact_change.decode(data)


def test_truncated_and_padded_bodies_are_decode_errors() -> None:
    codec = load_contracts().contact_change
    data = codec.encode(change())
    with pytest.raises(DecodeError):
        codec.decode(data[:-3])
    with pytest.raises(DecodeError, match="trailing bytes"):
        codec.decode(data + b"\x00")


def test_with_registry_ids_records_are_written_in_the_confluent_wire_format() -> None:
    contracts = load_contracts()
    codec = contracts.contact_change
    single = codec.encode(change())
    fingerprint = codec.converter.schema.fingerprint
    contracts.catalog.use_registry({fingerprint: 42}, lambda _id: None)
    framed = codec.encode(change())
    assert framed[:5] == b"\x00\x00\x00\x00\x2a"
    assert framed[5:] == single[HEADER_SIZE:]
    # Both framings decode: a topic may hold data written before the registry.
    assert codec.decode(framed) == codec.decode(single) == change()


def test_an_unknown_registry_id_is_looked_up_once_and_resolved_as_a_writer() -> None:
    writer_schema = json.loads((schemas_dir() / "contact_change.avsc").read_text())
    writer_schema["fields"].append({"name": "campaign", "type": "string", "default": ""})
    writer = Converter(schema=schema_from_json(writer_schema), catalog=SchemaCatalog())
    data = (
        b"\x00"
        + (1001).to_bytes(4, "big")
        + writer.encode({**change().to_record(), "campaign": "winter"})[HEADER_SIZE:]
    )
    asked: list[int] = []

    def lookup(schema_id: int) -> str | None:
        asked.append(schema_id)
        return json.dumps(writer_schema) if schema_id == 1001 else None

    reader = load_contracts()
    reader.catalog.use_registry({}, lookup)
    assert reader.contact_change.decode(data) == change()
    assert reader.contact_change.decode(data) == change()
    assert asked == [1001]
