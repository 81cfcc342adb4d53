"""Avro schema compatibility: which readers can decode which writers' data.

Input is two Avro schemas as parsed JSON (``json.load`` of an ``.avsc`` file: dicts,
lists and strings), or the same schemas after ``fastavro.parse_schema``, whose full
names and named references this module understands too. Output is a list of
``Incompatibility`` values, empty when the reader can decode everything the writer can
write. ``schemas_check`` feeds it every earlier version of each ``schemas/*.avsc`` and
prints what comes back; nothing here reads files or talks to git.

The rules are the "Schema Resolution" section of the Avro specification (1.11/1.12):

* primitives must be equal or promotable (int -> long, float, double; long -> float,
  double; float -> double; string <-> bytes, where bytes read as a string must hold
  UTF-8, which no schema can promise);
* records, enums and fixed match when their unqualified names are equal or a reader
  alias names the writer type; records resolve field by field (by name or reader
  field alias), reader-only fields need a default, writer-only fields are skipped;
* an enum symbol the reader lacks is an error unless the reader enum has a default;
* fixed sizes must be equal; arrays and maps resolve their items and values;
* every branch of a writer union must resolve; a non-union writer resolves against
  the first branch of a reader union it matches;
* logical types are ignored (the underlying type decides), except that two decimals
  must agree on precision and scale; so timestamp-millis -> timestamp-micros passes,
  although a reader that converts with its own logical type would misread it.

``full_incompatibilities`` checks both directions, which is what lets producers and
consumers of a topic be upgraded in any order.

Why crmsync has its own checker (and why this module is longer than 400 lines: the
rules above, one resolver): Apache Avro's Python package ships one
(``avro.compatibility``, a port of Java's ``SchemaCompatibility``, which Schema
Registries run), and it agrees on every case of ``tests/unit/test_schema_compat.py``
except four, which it passes although crmsync's decoder, fastavro, fails on the data
or misreads it: a reader union whose first matching branch cannot read the writer,
and decimals whose precision or scale differ. The test pins that list, so a release
that closes it shows up as a failing test, and this module can go.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeGuard

__all__ = [
    "Direction",
    "Incompatibility",
    "SchemaError",
    "full_incompatibilities",
    "incompatibilities",
]

PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)

# The writer types each primitive reader type can decode besides its own.
PROMOTIONS: Final[Mapping[str, frozenset[str]]] = {
    "long": frozenset({"int"}),
    "float": frozenset({"int", "long"}),
    "double": frozenset({"int", "long", "float"}),
    "bytes": frozenset({"string"}),
    "string": frozenset({"bytes"}),
}

# "error" is a record declared in a protocol; it resolves exactly like one.
RECORD_TYPES: Final = frozenset({"record", "error"})


class SchemaError(ValueError):
    """The input is not an Avro schema this module can read (e.g. an unknown type name)."""


class Direction(StrEnum):
    """Which way a full-compatibility check failed."""

    BACKWARD = "new reader, old writer"
    FORWARD = "old reader, new writer"


@dataclass(frozen=True)
class Incompatibility:
    """One reason a reader cannot decode a writer's data.

    ``path`` walks the reader schema from its root: ``Rec.fields.f`` for a field,
    ``.items`` / ``.values`` for array items and map values, ``[branch]`` for a union
    branch (the writer's branch when the writer is a union).
    """

    path: str
    reason: str
    direction: Direction | None = None


# --- The schema model: raw JSON turned into typed nodes. ---------------------------


@dataclass(frozen=True)
class _Decimal:
    precision: int
    scale: int


@dataclass(frozen=True)
class _Primitive:
    type: str
    decimal: _Decimal | None = None


@dataclass(frozen=True)
class _Array:
    items: _Node


@dataclass(frozen=True)
class _Map:
    values: _Node


@dataclass(frozen=True)
class _Union:
    branches: tuple[_Node, ...]


@dataclass(frozen=True)
class _Ref:
    """A use of a named type by name; the schema's registry holds its definition."""

    full_name: str


@dataclass(frozen=True)
class _Field:
    name: str
    type: _Node
    aliases: frozenset[str]
    has_default: bool


@dataclass(frozen=True)
class _Record:
    full_name: str
    aliases: frozenset[str]
    fields: tuple[_Field, ...]


@dataclass(frozen=True)
class _Enum:
    full_name: str
    aliases: frozenset[str]
    symbols: tuple[str, ...]
    default: str | None


@dataclass(frozen=True)
class _Fixed:
    full_name: str
    aliases: frozenset[str]
    size: int
    decimal: _Decimal | None = None


_Named = _Record | _Enum | _Fixed
_Node = _Primitive | _Array | _Map | _Union | _Ref | _Named


@dataclass(frozen=True)
class _Schema:
    root: _Node
    named: Mapping[str, _Named]

    def deref(self, node: _Node) -> _Node:
        if isinstance(node, _Ref):
            return self.named[node.full_name]
        return node


def _load(schema: object) -> _Schema:
    named: dict[str, _Named] = {}
    root = _Loader(named).node(schema, namespace="")
    return _Schema(root=root, named=named)


class _Loader:
    """Turns one schema's JSON into nodes, registering named types as it meets them."""

    def __init__(self, named: dict[str, _Named]) -> None:
        self._named = named
        # Every name declared so far, set before the type's body is read so that a
        # record can refer to itself; ``named`` only gets the finished definition.
        self._declared: set[str] = set()

    def node(self, schema: object, *, namespace: str) -> _Node:
        if isinstance(schema, str):
            return self._reference(schema, namespace=namespace)
        if isinstance(schema, list):
            return _Union(tuple(self.node(branch, namespace=namespace) for branch in schema))
        if isinstance(schema, Mapping):
            return self._complex(schema, namespace=namespace)
        raise SchemaError(f"not an Avro schema: {schema!r}")

    def _reference(self, name: str, *, namespace: str) -> _Node:
        if name in PRIMITIVES:
            return _Primitive(name)
        full_name = _qualify(name, namespace)
        # Like the Java parser, fall back to the null namespace for unqualified names.
        for candidate in (full_name, name):
            if candidate in self._declared:
                return _Ref(candidate)
        raise SchemaError(f"unknown type name {name!r}")

    def _complex(self, schema: Mapping[object, object], *, namespace: str) -> _Node:
        kind = schema.get("type")
        if isinstance(kind, list | Mapping):
            # {"type": {...}} or {"type": [...]}: a wrapped schema, not a new type.
            return self.node(kind, namespace=namespace)
        if not isinstance(kind, str):
            raise SchemaError(f"schema without a type: {schema!r}")
        if kind in PRIMITIVES:
            # The specification allows decimal on bytes and fixed only.
            return _Primitive(kind, _decimal(schema) if kind == "bytes" else None)
        if kind == "array":
            return _Array(self.node(_required(schema, "items"), namespace=namespace))
        if kind == "map":
            return _Map(self.node(_required(schema, "values"), namespace=namespace))
        if kind in RECORD_TYPES or kind in ("enum", "fixed"):
            return self._named_type(kind, schema, namespace=namespace)
        # {"type": "SomeName"} refers to a named type defined earlier.
        return self._reference(kind, namespace=namespace)

    def _named_type(self, kind: str, schema: Mapping[object, object], *, namespace: str) -> _Ref:
        full_name = _full_name(schema, namespace)
        if full_name in self._declared:
            raise SchemaError(f"type {full_name} is defined twice")
        self._declared.add(full_name)
        own_namespace = _namespace_of(full_name)
        aliases = frozenset(_qualify(alias, own_namespace) for alias in _strings(schema, "aliases"))
        definition: _Named
        if kind == "enum":
            definition = _enum(schema, full_name=full_name, aliases=aliases)
        elif kind == "fixed":
            definition = _fixed(schema, full_name=full_name, aliases=aliases)
        else:
            fields = tuple(
                self._field(field, namespace=own_namespace) for field in _sequence(schema, "fields")
            )
            definition = _Record(full_name=full_name, aliases=aliases, fields=fields)
        self._named[full_name] = definition
        return _Ref(full_name)

    def _field(self, field: object, *, namespace: str) -> _Field:
        if not isinstance(field, Mapping):
            raise SchemaError(f"record field is not an object: {field!r}")
        name = _required(field, "name")
        if not isinstance(name, str):
            raise SchemaError(f"record field name is not a string: {name!r}")
        return _Field(
            name=name,
            type=self.node(_required(field, "type"), namespace=namespace),
            aliases=frozenset(_strings(field, "aliases")),
            # Presence is what counts: "default": null is a default.
            has_default="default" in field,
        )


def _enum(schema: Mapping[object, object], *, full_name: str, aliases: frozenset[str]) -> _Enum:
    symbols = tuple(_strings(schema, "symbols"))
    default = schema.get("default")
    # A default that is not one of the reader's symbols cannot stand in for anything.
    usable_default = default if isinstance(default, str) and default in symbols else None
    return _Enum(full_name=full_name, aliases=aliases, symbols=symbols, default=usable_default)


def _fixed(schema: Mapping[object, object], *, full_name: str, aliases: frozenset[str]) -> _Fixed:
    size = _required(schema, "size")
    if not isinstance(size, int) or isinstance(size, bool):
        raise SchemaError(f"fixed {full_name} has a non-integer size: {size!r}")
    return _Fixed(full_name=full_name, aliases=aliases, size=size, decimal=_decimal(schema))


def _decimal(schema: Mapping[object, object]) -> _Decimal | None:
    """The decimal a schema declares, or None when it declares none or an invalid one.

    The specification says an invalid logical type is ignored and the underlying type
    used, so an invalid decimal behaves like plain bytes or fixed.
    """
    if schema.get("logicalType") != "decimal":
        return None
    precision = schema.get("precision")
    scale = schema.get("scale", 0)
    if _is_int(precision) and _is_int(scale) and 0 <= scale <= precision and precision > 0:
        return _Decimal(precision=precision, scale=scale)
    return None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _required(schema: Mapping[object, object], key: str) -> object:
    if key not in schema:
        raise SchemaError(f"{key!r} missing from {schema!r}")
    return schema[key]


def _sequence(schema: Mapping[object, object], key: str) -> Sequence[object]:
    value = _required(schema, key)
    if not isinstance(value, list):
        raise SchemaError(f"{key!r} is not a list in {schema!r}")
    return value


def _strings(schema: Mapping[object, object], key: str) -> list[str]:
    value = schema.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SchemaError(f"{key!r} is not a list of strings in {schema!r}")
    return [str(item) for item in value]


def _full_name(schema: Mapping[object, object], enclosing_namespace: str) -> str:
    name = _required(schema, "name")
    if not isinstance(name, str) or not name:
        raise SchemaError(f"named type without a name: {schema!r}")
    namespace = schema.get("namespace", enclosing_namespace)
    if not isinstance(namespace, str):
        namespace = enclosing_namespace
    return _qualify(name, namespace)


def _qualify(name: str, namespace: str) -> str:
    # A dotted name is already full; fastavro's parsed form uses only full names.
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _namespace_of(full_name: str) -> str:
    return full_name.rpartition(".")[0]


def _short_name(full_name: str) -> str:
    return full_name.rpartition(".")[2]


# --- Resolution: walking reader and writer together. --------------------------------


def incompatibilities(*, reader: object, writer: object) -> list[Incompatibility]:
    """Every reason data written with ``writer`` cannot be read with ``reader``.

    Raises ``SchemaError`` when either input is not a schema.
    """
    reader_schema = _load(reader)
    writer_schema = _load(writer)
    resolver = _Resolver(reader=reader_schema, writer=writer_schema)
    root = reader_schema.deref(reader_schema.root)
    resolver.resolve(reader_schema.root, writer_schema.root, path=_label(root))
    return resolver.problems


def full_incompatibilities(old: object, new: object) -> list[Incompatibility]:
    """Both directions: new reading old data (backward) and old reading new data (forward)."""
    backward = incompatibilities(reader=new, writer=old)
    forward = incompatibilities(reader=old, writer=new)
    return [_directed(problem, Direction.BACKWARD) for problem in backward] + [
        _directed(problem, Direction.FORWARD) for problem in forward
    ]


def _directed(problem: Incompatibility, direction: Direction) -> Incompatibility:
    return Incompatibility(path=problem.path, reason=problem.reason, direction=direction)


class _Resolver:
    def __init__(self, *, reader: _Schema, writer: _Schema) -> None:
        self._reader = reader
        self._writer = writer
        # (reader name, writer name) pairs already resolved or being resolved: stops
        # recursive types from recursing forever and reports each pair's problems once.
        self._seen: set[tuple[str, str]] = set()
        self.problems: list[Incompatibility] = []

    def _report(self, path: str, reason: str) -> None:
        self.problems.append(Incompatibility(path=path, reason=reason))

    def resolve(self, reader: _Node, writer: _Node, *, path: str) -> None:
        reader = self._reader.deref(reader)
        writer = self._writer.deref(writer)
        if isinstance(writer, _Union):
            self._writer_union(reader, writer, path=path)
        elif isinstance(reader, _Union):
            self._reader_union(reader, writer, path=path)
        elif not _matches(reader, writer):
            self._report(path, _mismatch(reader, writer))
        else:
            self._matched(reader, writer, path=path)

    def _matched(self, reader: _Node, writer: _Node, *, path: str) -> None:
        """Resolves the insides of two schemas already known to match at the top."""
        if isinstance(reader, _Array) and isinstance(writer, _Array):
            self.resolve(reader.items, writer.items, path=f"{path}.items")
        elif isinstance(reader, _Map) and isinstance(writer, _Map):
            self.resolve(reader.values, writer.values, path=f"{path}.values")
        elif isinstance(reader, _Primitive) and isinstance(writer, _Primitive):
            self._decimals(reader.decimal, writer.decimal, path=path)
        elif isinstance(reader, _Record | _Enum | _Fixed) and isinstance(
            writer, _Record | _Enum | _Fixed
        ):
            self._named(reader, writer, path=path)

    def _named(self, reader: _Named, writer: _Named, *, path: str) -> None:
        pair = (reader.full_name, writer.full_name)
        if pair in self._seen:
            return
        self._seen.add(pair)
        if isinstance(reader, _Record) and isinstance(writer, _Record):
            self._record(reader, writer, path=path)
        elif isinstance(reader, _Enum) and isinstance(writer, _Enum):
            self._enum(reader, writer, path=path)
        elif isinstance(reader, _Fixed) and isinstance(writer, _Fixed):
            self._fixed(reader, writer, path=path)

    def _writer_union(self, reader: _Node, writer: _Union, *, path: str) -> None:
        # The writer may have picked any branch, so every branch has to resolve.
        for branch in writer.branches:
            branch_node = self._writer.deref(branch)
            branch_path = f"{path}[{_label(branch_node)}]"
            if isinstance(reader, _Union):
                self._reader_union(reader, branch_node, path=branch_path, label=False)
            else:
                self.resolve(reader, branch_node, path=branch_path)

    def _reader_union(
        self, reader: _Union, writer: _Node, *, path: str, label: bool = True
    ) -> None:
        branches = [self._reader.deref(branch) for branch in reader.branches]
        # The specification resolves against the first branch that matches, even when a
        # later one would resolve more cleanly; so must the check.
        chosen = next((branch for branch in branches if _matches(branch, writer)), None)
        if chosen is None:
            self._report(
                path,
                f"writer type {_describe(writer)} matches no branch of reader union "
                f"{_describe_union(branches)}",
            )
            return
        branch_path = f"{path}[{_label(chosen)}]" if label else path
        self.resolve(chosen, writer, path=branch_path)

    def _record(self, reader: _Record, writer: _Record, *, path: str) -> None:
        writer_fields = {field.name: field for field in writer.fields}
        for field in reader.fields:
            field_path = f"{path}.fields.{field.name}"
            source = _writer_field_for(field, writer_fields)
            if source is not None:
                self.resolve(field.type, source.type, path=field_path)
            elif not field.has_default:
                self._report(
                    field_path,
                    f"reader field '{field.name}' has no default and is missing from the writer",
                )
        # Fields only the writer has are skipped by readers: nothing to check.

    def _enum(self, reader: _Enum, writer: _Enum, *, path: str) -> None:
        if reader.default is not None:
            return
        reader_symbols = set(reader.symbols)
        for symbol in writer.symbols:
            if symbol not in reader_symbols:
                self._report(
                    path,
                    f"writer enum symbol '{symbol}' unknown to reader enum "
                    f"{_short_name(reader.full_name)} which has no default",
                )

    def _fixed(self, reader: _Fixed, writer: _Fixed, *, path: str) -> None:
        if reader.size != writer.size:
            self._report(
                path,
                f"writer fixed {_short_name(writer.full_name)} has size {writer.size} but "
                f"reader fixed {_short_name(reader.full_name)} has size {reader.size}",
            )
        self._decimals(reader.decimal, writer.decimal, path=path)

    def _decimals(self, reader: _Decimal | None, writer: _Decimal | None, *, path: str) -> None:
        # Only two decimals are compared: a logical type on one side alone is ignored and
        # the underlying types (already matched) decide.
        if reader is None or writer is None or reader == writer:
            return
        self._report(
            path,
            f"writer decimal({writer.precision}, {writer.scale}) differs from reader "
            f"decimal({reader.precision}, {reader.scale}) in precision or scale",
        )


def _writer_field_for(field: _Field, writer_fields: Mapping[str, _Field]) -> _Field | None:
    if field.name in writer_fields:
        return writer_fields[field.name]
    # A reader field alias names the field as an earlier writer called it.
    for alias in sorted(field.aliases):
        if alias in writer_fields:
            return writer_fields[alias]
    return None


def _matches(reader: _Node, writer: _Node) -> bool:
    """The specification's "match": the top level agrees, insides are resolved later."""
    if isinstance(reader, _Primitive) and isinstance(writer, _Primitive):
        return reader.type == writer.type or writer.type in PROMOTIONS.get(reader.type, ())
    if isinstance(reader, _Array) and isinstance(writer, _Array):
        return True
    if isinstance(reader, _Map) and isinstance(writer, _Map):
        return True
    if isinstance(reader, _Union) or isinstance(writer, _Union):
        return True
    if isinstance(reader, _Record | _Enum | _Fixed) and isinstance(
        writer, _Record | _Enum | _Fixed
    ):
        return type(reader) is type(writer) and _names_match(reader, writer.full_name)
    return False


def _names_match(reader: _Named, writer_full_name: str) -> bool:
    # The specification compares unqualified names (so a namespace change alone is
    # compatible, as in the Java and fastavro readers); reader aliases rename.
    writer_short = _short_name(writer_full_name)
    if _short_name(reader.full_name) == writer_short:
        return True
    return any(
        alias == writer_full_name or _short_name(alias) == writer_short for alias in reader.aliases
    )


def _mismatch(reader: _Node, writer: _Node) -> str:
    if isinstance(reader, _Primitive) and isinstance(writer, _Primitive):
        return f"writer type {writer.type} cannot be promoted to reader type {reader.type}"
    if isinstance(reader, _Named) and type(reader) is type(writer):
        return (
            f"writer {_describe(writer)} does not match reader {_describe(reader)} by name or alias"
        )
    return f"writer type {_describe(writer)} cannot be read as reader type {_describe(reader)}"


def _kind(node: _Node) -> str:
    if isinstance(node, _Primitive):
        return node.type
    if isinstance(node, _Array):
        return "array"
    if isinstance(node, _Map):
        return "map"
    if isinstance(node, _Union):
        return "union"
    if isinstance(node, _Record):
        return "record"
    if isinstance(node, _Enum):
        return "enum"
    if isinstance(node, _Fixed):
        return "fixed"
    return "reference"


def _describe(node: _Node) -> str:
    if isinstance(node, _Named):
        return f"{_kind(node)} {node.full_name}"
    if isinstance(node, _Union):
        return f"union {_describe_union(list(node.branches))}"
    return _kind(node)


def _describe_union(branches: Sequence[_Node]) -> str:
    return "[" + ", ".join(_label(branch) for branch in branches) + "]"


def _label(node: _Node) -> str:
    """A branch's name in paths: unique within a union, as the specification requires."""
    if isinstance(node, _Named):
        return _short_name(node.full_name)
    if isinstance(node, _Ref):
        return _short_name(node.full_name)
    return _kind(node)
