"""Avro single-object encoding: the one converter between crmsync's records and Kafka bytes.

Every message value is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of
the writer's schema + the Avro binary body (the Avro specification's "single object
encoding"). The fingerprint lets a reader find the exact schema the data was written
with and resolve it against its own reader schema, so producers and consumers can be
upgraded independently as long as schema changes stay compatible (``make schemas-check``).

Writer schemas a reader does not bundle itself are found through the catalog's
resolvers (the compacted schemas topic, see ``schema_topic``). Data whose schema
cannot be found or whose bytes do not decode raises ``DecodeError``: the caller treats
that as poison and sends the message to the rejected topic.
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

# A resolver turns an unknown fingerprint into the writer schema's JSON text, or None.
SchemaResolver = Callable[[bytes], str | None]


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
        self._resolvers: list[SchemaResolver] = []
        self._lock = threading.Lock()

    def register(self, schema: RegisteredSchema) -> RegisteredSchema:
        with self._lock:
            return self._by_fingerprint.setdefault(schema.fingerprint, schema)

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
        self._header = SINGLE_OBJECT_MAGIC + self.schema.fingerprint

    def encode(self, record: Mapping[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self._header)
        fastavro.schemaless_writer(buffer, self.schema.parsed, record)
        return buffer.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        writer = self._writer_schema(data)
        buffer = io.BytesIO(data)
        buffer.seek(HEADER_SIZE)
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

    def _writer_schema(self, data: bytes) -> RegisteredSchema:
        if len(data) < HEADER_SIZE or not data.startswith(SINGLE_OBJECT_MAGIC):
            raise DecodeError("not Avro single-object encoded (missing C3 01 header)")
        schema_fingerprint = data[len(SINGLE_OBJECT_MAGIC) : HEADER_SIZE]
        if schema_fingerprint == self.schema.fingerprint:
            return self.schema
        writer = self._catalog.lookup(schema_fingerprint)
        if writer is None:
            raise DecodeError(f"unknown writer schema fingerprint {schema_fingerprint.hex()}")
        return writer


def load_schema_file(path: Path) -> RegisteredSchema:
    return schema_from_json(path.read_text(encoding="utf-8"))
