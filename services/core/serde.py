"""The one converter between crmsync's records and Kafka bytes, in either of two framings.

By default every message value is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO
fingerprint of the writer's schema + the Avro binary body (the Avro specification's
"single object encoding"). With a Schema Registry configured it is the Confluent wire
format instead: ``00`` + the schema's 4-byte big-endian registry id + the same body,
which Kafka Connect, ksqlDB and any Schema Registry-aware consumer read. Either way the
header lets a reader find the exact schema the data was written with and resolve it
against its own reader schema, so producers and consumers can be upgraded
independently as long as schema changes stay compatible (``make schemas-check``). A
reader decodes both framings, so a deployment can move to a registry with data of the
other framing still on its topics.

Writer schemas a reader does not bundle itself are found through the catalog's
resolvers (the compacted schemas topic, see ``schema_topic``) or the registry (see
``schema_registry``). Data whose schema cannot be found or whose bytes do not decode
raises ``DecodeError``: the caller treats that as poison and sends the message to the
rejected topic.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

SINGLE_OBJECT_MAGIC: Final = b"\xc3\x01"
FINGERPRINT_SIZE: Final = 8
HEADER_SIZE: Final = len(SINGLE_OBJECT_MAGIC) + FINGERPRINT_SIZE
CONFLUENT_MAGIC: Final = b"\x00"
CONFLUENT_HEADER_SIZE: Final = len(CONFLUENT_MAGIC) + 4

# A resolver turns an unknown fingerprint into the writer schema's JSON text, or None.
SchemaResolver = Callable[[bytes], str | None]
# The registry's side: a schema id into the schema's JSON text, or None when unknown.
RegistryLookup = Callable[[int], str | None]


def confluent_header(schema_id: int) -> bytes:
    return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")


class DecodeError(ValueError):
    """The bytes are not a decodable single-object-encoded record for this reader."""


@dataclass(frozen=True)
class RegisteredSchema:
    """A parsed schema with the identity it travels under."""

    full_name: str
    fingerprint: bytes
    canonical_form: str
    schema_json: str
    parsed: Any


def schema_from_json(schema_json: str | Mapping[str, Any]) -> RegisteredSchema:
    raw = json.loads(schema_json) if isinstance(schema_json, str) else dict(schema_json)
    # Parsed with fastavro's hint, which marks the schema as parsed: without it
    # fastavro parses the schema again on every record it reads or writes.
    parsed = fastavro.parse_schema(raw)
    canonical = to_parsing_canonical_form(fastavro.parse_schema(raw, _write_hint=False))
    # fastavro renders the 64-bit Rabin fingerprint little-endian, which is the byte
    # order single-object encoding puts on the wire.
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    name = parsed["name"] if isinstance(parsed, dict) else str(parsed)
    return RegisteredSchema(
        full_name=name,
        fingerprint=fp,
        canonical_form=canonical,
        # The whole schema, not just its canonical form: readers need the writer's
        # logical types, which the canonical form strips.
        schema_json=json.dumps(raw, separators=(",", ":"), sort_keys=True),
        parsed=parsed,
    )


class SchemaCatalog:
    """Every schema this process can decode data written with, by fingerprint.

    Thread-safe: the writer decodes on its consumer thread while health checks run
    on the event loop.
    """

    def __init__(self) -> None:
        self._by_fingerprint: dict[bytes, RegisteredSchema] = {}
        # The header each schema is written with: single-object until registry ids are
        # given (a plain dict: encoders read it without the lock).
        self.headers: dict[bytes, bytes] = {}
        self._by_registry_id: dict[int, RegisteredSchema] = {}
        self._registry: RegistryLookup | None = None
        self._resolvers: list[SchemaResolver] = []
        self._lock = threading.Lock()

    def register(self, schema: RegisteredSchema) -> RegisteredSchema:
        with self._lock:
            known = self._by_fingerprint.setdefault(schema.fingerprint, schema)
            self.headers.setdefault(known.fingerprint, SINGLE_OBJECT_MAGIC + known.fingerprint)
            return known

    def use_registry(self, ids: Mapping[bytes, int], lookup: RegistryLookup) -> None:
        """Write each schema of ``ids`` (by fingerprint) in the Confluent wire format
        with its registry id from now on; find unknown ids with ``lookup``."""
        with self._lock:
            self._registry = lookup
            for schema_fingerprint, schema_id in ids.items():
                self._by_registry_id[schema_id] = self._by_fingerprint[schema_fingerprint]
                self.headers[schema_fingerprint] = confluent_header(schema_id)

    def lookup_registry_id(self, schema_id: int) -> RegisteredSchema | None:
        with self._lock:
            known = self._by_registry_id.get(schema_id)
            registry = self._registry
        if known is not None or registry is None:
            return known
        text = registry(schema_id)
        if text is None:
            return None
        found = self.register(schema_from_json(text))
        with self._lock:
            self._by_registry_id[schema_id] = found
        return found

    def add_resolver(self, resolver: SchemaResolver) -> None:
        with self._lock:
            self._resolvers.append(resolver)

    def schemas(self) -> list[RegisteredSchema]:
        with self._lock:
            return list(self._by_fingerprint.values())

    def lookup(self, schema_fingerprint: bytes) -> RegisteredSchema | None:
        with self._lock:
            known = self._by_fingerprint.get(schema_fingerprint)
            resolvers = list(self._resolvers)
        if known is not None:
            return known
        for resolve in resolvers:
            text = resolve(schema_fingerprint)
            if text is None:
                continue
            found = schema_from_json(text)
            if found.fingerprint != schema_fingerprint:
                # A resolver answering with another schema is a bug in the resolver or
                # a corrupted schemas topic; refusing is safer than misreading data.
                raise DecodeError(
                    f"schema resolver returned fingerprint {found.fingerprint.hex()} "
                    f"for {schema_fingerprint.hex()}"
                )
            return self.register(found)
        return None


class Converter:
    """Encodes records with one writer schema; decodes any compatible writer's records."""

    def __init__(self, *, schema: RegisteredSchema, catalog: SchemaCatalog) -> None:
        self.schema = catalog.register(schema)
        self._catalog = catalog
        self._headers = catalog.headers

    def encode(self, record: Mapping[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self._headers[self.schema.fingerprint])
        fastavro.schemaless_writer(buffer, self.schema.parsed, record)
        return buffer.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        writer, body_at = self._writer_schema(data)
        buffer = io.BytesIO(data)
        buffer.seek(body_at)
        reader = None if writer is self.schema else self.schema.parsed
        try:
            record = fastavro.schemaless_reader(buffer, writer.parsed, reader)
        except (EOFError, ValueError, TypeError, KeyError, IndexError) as exc:
            raise DecodeError(f"undecodable {writer.full_name} body: {exc}") from exc
        except fastavro.read.SchemaResolutionError as exc:
            raise DecodeError(
                f"writer schema {writer.full_name} ({writer.fingerprint.hex()}) cannot be "
                f"read as {self.schema.full_name}: {exc}"
            ) from exc
        if buffer.tell() != len(data):
            raise DecodeError(
                f"{len(data) - buffer.tell()} trailing bytes after a {writer.full_name} record"
            )
        if not isinstance(record, dict):
            raise DecodeError(f"expected a record, got {type(record).__name__}")
        return record

    def _writer_schema(self, data: bytes) -> tuple[RegisteredSchema, int]:
        """The schema ``data`` was written with, and where its body starts."""
        if data.startswith(SINGLE_OBJECT_MAGIC) and len(data) >= HEADER_SIZE:
            schema_fingerprint = data[len(SINGLE_OBJECT_MAGIC) : HEADER_SIZE]
            if schema_fingerprint == self.schema.fingerprint:
                return self.schema, HEADER_SIZE
            writer = self._catalog.lookup(schema_fingerprint)
            if writer is None:
                raise DecodeError(f"unknown writer schema fingerprint {schema_fingerprint.hex()}")
            return writer, HEADER_SIZE
        if data.startswith(CONFLUENT_MAGIC) and len(data) >= CONFLUENT_HEADER_SIZE:
            schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")
            found = self._catalog.lookup_registry_id(schema_id)
            if found is None:
                raise DecodeError(f"unknown schema registry id {schema_id}")
            return found, CONFLUENT_HEADER_SIZE
        raise DecodeError(
            "not Avro single-object encoded (C3 01) nor in the Confluent wire format (00)"
        )


def load_schema_file(path: Path) -> RegisteredSchema:
    return schema_from_json(path.read_text(encoding="utf-8"))
