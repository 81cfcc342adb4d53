"""Avro schema compatibility: the resolution rules, fastavro agreeing in practice, the CLI.

Each rule has a compatible and an incompatible case in ``CASES``. The same table is
replayed through fastavro with random data: a "compatible" verdict must hold for real
reads, and an incompatible pair must either make fastavro fail or be one of the cases
where fastavro silently misreads (which is why the checker has to catch them).
"""

from __future__ import annotations

import copy
import io
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.compatibility
import avro.schema
import fastavro
import pytest
from fastavro.read import SchemaResolutionError
from fastavro.utils import generate_many

from services.core.codecs import schemas_dir
from tools.schema_compat import (
    Direction,
    Incompatibility,
    SchemaError,
    full_incompatibilities,
    incompatibilities,
)
from tools.schemas_check import main

pytestmark = pytest.mark.unit

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = 60

# --- Schema builders ------------------------------------------------------------------


def record(name: str, *fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields), **extra}


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def wrap(type_: Any, **extra: Any) -> dict[str, Any]:
    """A one-field record around ``type_``, so problems get a readable path: R.fields.f."""
    return record("R", field("f", type_, **extra))


def enum(name: str, *symbols: str, **extra: Any) -> dict[str, Any]:
    return {"type": "enum", "name": name, "symbols": list(symbols), **extra}


def fixed(name: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"type": "fixed", "name": name, "size": size, **extra}


def decimal(precision: int, scale: int, base: str = "bytes", **extra: Any) -> dict[str, Any]:
    return {"type": base, "logicalType": "decimal", "precision": precision, "scale": scale, **extra}


def linked_list(value_type: str) -> dict[str, Any]:
    return record("Node", field("value", value_type), field("next", ["null", "Node"]))


POINT = record("Point", field("x", "int"), field("y", "int"))
POINT_WIDE = record("Point", field("x", "long"), field("y", "int"))
POINT_TEXT = record("Point", field("x", "string"), field("y", "int"))


@dataclass(frozen=True)
class Case:
    """A reader/writer pair and what the checker must say about it.

    ``problems`` holds (path, part of the reason) for every expected problem; empty means
    compatible. ``fastavro_fails`` says whether fastavro raises when it reads random data
    of the writer with the reader; False marks incompatibilities fastavro reads silently.
    ``values_match_reader`` is False where fastavro hands back values shaped by the
    writer's logical type, which the reader schema's logical type does not accept.
    """

    id: str
    reader: Any
    writer: Any
    problems: tuple[tuple[str, str], ...] = ()
    fastavro_fails: bool = True
    values_match_reader: bool = True

    @property
    def compatible(self) -> bool:
        return not self.problems


def ok(id_: str, reader: Any, writer: Any, *, values_match_reader: bool = True) -> Case:
    return Case(id_, reader, writer, values_match_reader=values_match_reader)


def bad(
    id_: str, reader: Any, writer: Any, *problems: tuple[str, str], fastavro_fails: bool = True
) -> Case:
    return Case(id_, reader, writer, problems, fastavro_fails)


PRIMITIVE_CASES = [
    ok("same primitive", wrap("string"), wrap("string")),
    ok("int promotes to long", wrap("long"), wrap("int")),
    ok("int promotes to float", wrap("float"), wrap("int")),
    ok("int promotes to double", wrap("double"), wrap("int")),
    ok("long promotes to float", wrap("float"), wrap("long")),
    ok("long promotes to double", wrap("double"), wrap("long")),
    ok("float promotes to double", wrap("double"), wrap("float")),
    ok("string promotes to bytes", wrap("bytes"), wrap("string")),
    ok("bytes promotes to string", wrap("string"), wrap("bytes")),
    bad(
        "long does not narrow to int",
        wrap("int"),
        wrap("long"),
        ("R.fields.f", "writer type long cannot be promoted to reader type int"),
    ),
    bad(
        "double does not narrow to float",
        wrap("float"),
        wrap("double"),
        ("R.fields.f", "writer type double cannot be promoted to reader type float"),
    ),
    bad(
        "string does not promote to long",
        wrap("long"),
        wrap("string"),
        ("R.fields.f", "writer type string cannot be promoted to reader type long"),
    ),
    bad(
        "boolean does not promote to int",
        wrap("int"),
        wrap("boolean"),
        ("R.fields.f", "writer type boolean cannot be promoted to reader type int"),
    ),
    bad(
        "primitive is not a record",
        wrap(POINT),
        wrap("string"),
        ("R.fields.f", "writer type string cannot be read as reader type record Point"),
    ),
]

RECORD_CASES = [
    ok(
        "field order may differ",
        record("R", field("b", "int"), field("a", "string")),
        record("R", field("a", "string"), field("b", "int")),
    ),
    ok(
        "writer-only field is skipped",
        record("R", field("a", "int")),
        record("R", field("a", "int"), field("extra", "string")),
    ),
    ok(
        "reader-only field with a default",
        record("R", field("a", "int"), field("b", "string", default="")),
        record("R", field("a", "int")),
    ),
    ok(
        "reader-only field with a null default",
        record("R", field("a", "int"), field("b", ["null", "string"], default=None)),
        record("R", field("a", "int")),
    ),
    bad(
        "reader-only field without a default",
        record("R", field("a", "int"), field("b", "string")),
        record("R", field("a", "int")),
        ("R.fields.b", "reader field 'b' has no default and is missing from the writer"),
    ),
    ok(
        "field renamed with a reader alias",
        record("R", field("new", "int", aliases=["old"])),
        record("R", field("old", "int")),
    ),
    bad(
        "field renamed without an alias",
        record("R", field("new", "int")),
        record("R", field("old", "int")),
        ("R.fields.new", "reader field 'new' has no default and is missing from the writer"),
    ),
    ok(
        "record renamed with a reader alias",
        wrap(record("New", field("a", "int"), aliases=["Old"])),
        wrap(record("Old", field("a", "int"))),
    ),
    ok(
        "record alias naming the writer's full name",
        wrap(record("New", field("a", "int"), namespace="n", aliases=["o.Old"])),
        wrap(record("Old", field("a", "int"), namespace="o")),
    ),
    bad(
        "record renamed without an alias",
        wrap(record("New", field("a", "int"))),
        wrap(record("Old", field("a", "int"))),
        ("R.fields.f", "writer record Old does not match reader record New by name or alias"),
    ),
    ok(
        # The specification compares unqualified names, like the Java and fastavro readers.
        "namespace change alone",
        wrap(record("Inner", field("a", "int"), namespace="new.ns")),
        wrap(record("Inner", field("a", "int"), namespace="old.ns")),
    ),
    ok(
        "nested field promoted",
        wrap(record("Inner", field("x", "double"))),
        wrap(record("Inner", field("x", "float"))),
    ),
    bad(
        "nested field incompatible",
        wrap(record("Inner", field("x", "int"))),
        wrap(record("Inner", field("x", "string"))),
        ("R.fields.f.fields.x", "writer type string cannot be promoted to reader type int"),
    ),
    bad(
        "record is not an enum",
        wrap(enum("Inner", "A")),
        wrap(record("Inner", field("x", "int"))),
        ("R.fields.f", "writer type record Inner cannot be read as reader type enum Inner"),
    ),
]

ENUM_CASES = [
    ok("reader enum has more symbols", wrap(enum("E", "A", "B", "C")), wrap(enum("E", "A", "B"))),
    ok("same symbols in another order", wrap(enum("E", "B", "A")), wrap(enum("E", "A", "B"))),
    bad(
        "writer symbol unknown to a reader without default",
        wrap(enum("E", "A", "B")),
        wrap(enum("E", "A", "B", "MERGE")),
        ("R.fields.f", "writer enum symbol 'MERGE' unknown to reader enum E which has no default"),
    ),
    ok(
        "writer symbol unknown to a reader with a default",
        wrap(enum("E", "A", "B", default="A")),
        wrap(enum("E", "A", "B", "MERGE")),
    ),
    ok(
        "enum renamed with a reader alias",
        wrap(enum("New", "A", aliases=["Old"])),
        wrap(enum("Old", "A")),
    ),
    bad(
        "enum renamed without an alias",
        wrap(enum("New", "A")),
        wrap(enum("Old", "A")),
        ("R.fields.f", "writer enum Old does not match reader enum New by name or alias"),
    ),
]

COLLECTION_CASES = [
    ok(
        "array items promoted",
        wrap({"type": "array", "items": "long"}),
        wrap({"type": "array", "items": "int"}),
    ),
    bad(
        "array items incompatible",
        wrap({"type": "array", "items": "long"}),
        wrap({"type": "array", "items": "string"}),
        ("R.fields.f.items", "writer type string cannot be promoted to reader type long"),
    ),
    bad(
        "map is not an array",
        wrap({"type": "array", "items": "string"}),
        wrap({"type": "map", "values": "string"}),
        ("R.fields.f", "writer type map cannot be read as reader type array"),
    ),
    ok(
        "map values promoted",
        wrap({"type": "map", "values": "double"}),
        wrap({"type": "map", "values": "float"}),
    ),
    bad(
        "map values incompatible",
        wrap({"type": "map", "values": "int"}),
        wrap({"type": "map", "values": "long"}),
        ("R.fields.f.values", "writer type long cannot be promoted to reader type int"),
    ),
    ok(
        "array of records with a new defaulted field",
        wrap(
            {
                "type": "array",
                "items": record("Item", field("a", "int"), field("b", "int", default=0)),
            }
        ),
        wrap({"type": "array", "items": record("Item", field("a", "int"))}),
    ),
]

FIXED_CASES = [
    ok("same fixed", wrap(fixed("F", 4)), wrap(fixed("F", 4))),
    bad(
        "fixed size differs",
        wrap(fixed("F", 4)),
        wrap(fixed("F", 8)),
        ("R.fields.f", "writer fixed F has size 8 but reader fixed F has size 4"),
    ),
    bad(
        "fixed name differs",
        wrap(fixed("G", 4)),
        wrap(fixed("F", 4)),
        ("R.fields.f", "writer fixed F does not match reader fixed G by name or alias"),
    ),
    ok("fixed renamed with an alias", wrap(fixed("G", 4, aliases=["F"])), wrap(fixed("F", 4))),
    bad(
        "bytes is not fixed",
        wrap(fixed("F", 4)),
        wrap("bytes"),
        ("R.fields.f", "writer type bytes cannot be read as reader type fixed F"),
    ),
]

UNION_CASES = [
    ok(
        "writer union within the reader union",
        wrap(["null", "string", "long"]),
        wrap(["null", "string"]),
    ),
    bad(
        "writer union branch missing from the reader union",
        wrap(["null", "string"]),
        wrap(["null", "string", "long"]),
        ("R.fields.f[long]", "writer type long matches no branch of reader union [null, string]"),
    ),
    ok("reader union holds the writer type", wrap(["null", "string"]), wrap("string")),
    ok("reader union branch promotes the writer type", wrap(["null", "long"]), wrap("int")),
    bad(
        "reader union lacks the writer type",
        wrap(["null", "string"]),
        wrap("boolean"),
        ("R.fields.f", "writer type boolean matches no branch of reader union [null, string]"),
    ),
    ok("every writer branch promotes to the reader", wrap("double"), wrap(["int", "long"])),
    bad(
        "writer union branch the reader cannot take",
        wrap("string"),
        wrap(["null", "string"]),
        ("R.fields.f[null]", "writer type null cannot be promoted to reader type string"),
    ),
    bad(
        "problem inside the chosen reader branch",
        wrap(["null", record("Inner", field("a", "int"), field("b", "int"))]),
        wrap(record("Inner", field("a", "int"))),
        ("R.fields.f[Inner].fields.b", "reader field 'b' has no default"),
    ),
    bad(
        # The first matching branch (by alias) decides, although the second would fit.
        "first matching reader branch decides",
        wrap(
            [
                record("First", field("a", "int"), field("b", "int"), aliases=["W"]),
                record("W", field("a", "int")),
            ]
        ),
        wrap(record("W", field("a", "int"))),
        ("R.fields.f[First].fields.b", "reader field 'b' has no default"),
    ),
]

NAMED_CASES = [
    ok(
        "named type defined once, used twice",
        record("R", field("a", POINT_WIDE), field("b", "Point")),
        record("R", field("a", POINT), field("b", "Point")),
    ),
    bad(
        # Reported once, where the pair is first resolved.
        "named type change reaches every use",
        record("R", field("a", POINT_TEXT), field("b", "Point")),
        record("R", field("a", POINT), field("b", "Point")),
        ("R.fields.a.fields.x", "writer type int cannot be promoted to reader type string"),
    ),
    ok(
        "references by short and full name in a namespace",
        record("R", field("a", fixed("F", 4)), field("b", "F"), field("c", "ns.F"), namespace="ns"),
        record("R", field("a", fixed("F", 4)), field("b", "ns.F"), field("c", "F"), namespace="ns"),
    ),
    ok("recursive type promoted", linked_list("long"), linked_list("int")),
    bad(
        "recursive type incompatible",
        linked_list("string"),
        linked_list("int"),
        ("Node.fields.value", "writer type int cannot be promoted to reader type string"),
    ),
]

LOGICAL_CASES = [
    ok(
        "logical type on one side is ignored",
        wrap({"type": "long", "logicalType": "timestamp-millis"}),
        wrap("long"),
    ),
    ok(
        # Compatible by the underlying types; fastavro returns the writer's date.
        "different logical types over promotable types",
        wrap({"type": "long", "logicalType": "timestamp-micros"}),
        wrap({"type": "int", "logicalType": "date"}),
        values_match_reader=False,
    ),
    bad(
        "logical type does not hide the underlying type",
        wrap({"type": "int", "logicalType": "date"}),
        wrap({"type": "long", "logicalType": "timestamp-millis"}),
        ("R.fields.f", "writer type long cannot be promoted to reader type int"),
    ),
    ok("same decimal", wrap(decimal(10, 2)), wrap(decimal(10, 2))),
    bad(
        "decimal scale differs",
        wrap(decimal(10, 3)),
        wrap(decimal(10, 2)),
        ("R.fields.f", "writer decimal(10, 2) differs from reader decimal(10, 3)"),
        fastavro_fails=False,
    ),
    bad(
        "decimal precision differs",
        wrap(decimal(12, 2)),
        wrap(decimal(10, 2)),
        ("R.fields.f", "writer decimal(10, 2) differs from reader decimal(12, 2)"),
        fastavro_fails=False,
    ),
    ok(
        "same fixed decimal",
        wrap(decimal(9, 2, "fixed", name="Money", size=8)),
        wrap(decimal(9, 2, "fixed", name="Money", size=8)),
    ),
    bad(
        "fixed decimal scale differs",
        wrap(decimal(9, 3, "fixed", name="Money", size=8)),
        wrap(decimal(9, 2, "fixed", name="Money", size=8)),
        ("R.fields.f", "writer decimal(9, 2) differs from reader decimal(9, 3)"),
        fastavro_fails=False,
    ),
]

CASES = (
    PRIMITIVE_CASES
    + RECORD_CASES
    + ENUM_CASES
    + COLLECTION_CASES
    + FIXED_CASES
    + UNION_CASES
    + NAMED_CASES
    + LOGICAL_CASES
)


def params(cases: list[Case]) -> list[Any]:
    return [pytest.param(case, id=case.id) for case in cases]


def assert_verdict(found: list[Incompatibility], case: Case) -> None:
    assert len(found) == len(case.problems), found
    for problem, (path, reason) in zip(found, case.problems, strict=True):
        assert problem.path == path
        assert reason in problem.reason
        assert problem.direction is None


# --- The rules --------------------------------------------------------------------------


def test_every_rule_has_a_compatible_and_an_incompatible_case() -> None:
    groups = [
        PRIMITIVE_CASES,
        RECORD_CASES,
        ENUM_CASES,
        COLLECTION_CASES,
        FIXED_CASES,
        UNION_CASES,
        NAMED_CASES,
        LOGICAL_CASES,
    ]
    for group in groups:
        assert {case.compatible for case in group} == {True, False}


@pytest.mark.parametrize("case", params(CASES))
def test_checker_verdict(case: Case) -> None:
    assert_verdict(incompatibilities(reader=case.reader, writer=case.writer), case)


@pytest.mark.parametrize("case", params(CASES))
def test_fastavro_parsed_schemas_get_the_same_verdict(case: Case) -> None:
    reader = fastavro.parse_schema(copy.deepcopy(case.reader))
    writer = fastavro.parse_schema(copy.deepcopy(case.writer))
    assert_verdict(incompatibilities(reader=reader, writer=writer), case)


def test_mutually_recursive_types_terminate() -> None:
    def tree(leaf: str) -> dict[str, Any]:
        branch = record("Branch", field("left", ["null", "Tree"]), field("right", ["null", "Tree"]))
        return record("Tree", field("leaf", leaf), field("branch", ["null", branch]))

    assert incompatibilities(reader=tree("long"), writer=tree("int")) == []
    assert [p.path for p in incompatibilities(reader=tree("int"), writer=tree("long"))] == [
        "Tree.fields.leaf"
    ]


def test_writer_enum_default_outside_its_symbols_is_no_default() -> None:
    found = incompatibilities(
        reader=wrap(enum("E", "A", default="GONE")), writer=wrap(enum("E", "A", "B"))
    )
    assert [p.reason for p in found] == [
        "writer enum symbol 'B' unknown to reader enum E which has no default"
    ]


def test_top_level_primitives_and_unions() -> None:
    assert incompatibilities(reader="double", writer="int") == []
    assert incompatibilities(reader=["null", "string"], writer="string") == []
    found = incompatibilities(reader="string", writer=["null", "string"])
    assert [(p.path, p.reason) for p in found] == [
        ("string[null]", "writer type null cannot be promoted to reader type string")
    ]


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param(wrap("Missing"), id="unknown type name"),
        pytest.param(
            record("R", field("a", fixed("F", 4)), field("b", fixed("F", 4))), id="defined twice"
        ),
        pytest.param(5, id="not a schema"),
        pytest.param({"type": "record", "name": "R"}, id="record without fields"),
        pytest.param({"name": "R"}, id="no type"),
    ],
)
def test_malformed_schema_raises(schema: Any) -> None:
    with pytest.raises(SchemaError):
        incompatibilities(reader=schema, writer=wrap("int"))


# --- Full compatibility: both directions --------------------------------------------------

BASE = record("Contact", field("id", "string"), field("age", "int"), namespace="crmsync")


def evolve(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    new = copy.deepcopy(BASE)
    change(new)
    return new


def add_field(**spec: Any) -> Callable[[dict[str, Any]], None]:
    return lambda schema: schema["fields"].append(spec)


def drop_field(name: str) -> Callable[[dict[str, Any]], None]:
    def change(schema: dict[str, Any]) -> None:
        schema["fields"] = [f for f in schema["fields"] if f["name"] != name]

    return change


def set_field(target: str, /, **spec: Any) -> Callable[[dict[str, Any]], None]:
    def change(schema: dict[str, Any]) -> None:
        for f in schema["fields"]:
            if f["name"] == target:
                f.update(spec)

    return change


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        pytest.param(
            evolve(add_field(name="email", type="string", default="")), [], id="add with default"
        ),
        pytest.param(
            evolve(add_field(name="email", type="string")),
            [(Direction.BACKWARD, "Contact.fields.email")],
            id="add without default",
        ),
        pytest.param(
            evolve(drop_field("age")),
            [(Direction.FORWARD, "Contact.fields.age")],
            id="drop a field the old reader needs",
        ),
        pytest.param(
            evolve(set_field("age", type="long")),
            [(Direction.FORWARD, "Contact.fields.age")],
            id="widen int to long",
        ),
        pytest.param(
            evolve(set_field("id", type=["null", "string"])),
            [(Direction.FORWARD, "Contact.fields.id[null]")],
            id="make a field nullable",
        ),
        pytest.param(
            evolve(set_field("age", name="years", aliases=["age"])),
            [(Direction.FORWARD, "Contact.fields.age")],
            id="rename with alias but no default",
        ),
    ],
)
def test_full_compatibility_reports_each_failing_direction(
    new: dict[str, Any], expected: list[tuple[Direction, str]]
) -> None:
    found = full_incompatibilities(BASE, new)
    assert [(p.direction, p.path) for p in found] == expected


def test_directions_read_as_plain_english() -> None:
    assert str(Direction.BACKWARD) == "new reader, old writer"
    assert str(Direction.FORWARD) == "old reader, new writer"


def project_schemas() -> list[Any]:
    return [
        pytest.param(json.loads(path.read_text(encoding="utf-8")), id=path.name)
        for path in sorted(schemas_dir().glob("*.avsc"))
    ]


@pytest.mark.parametrize("schema", project_schemas())
def test_project_schemas_are_compatible_with_themselves(schema: dict[str, Any]) -> None:
    assert full_incompatibilities(schema, schema) == []
    assert full_incompatibilities(fastavro.parse_schema(copy.deepcopy(schema)), schema) == []


def test_new_contact_change_operation_is_compatible_thanks_to_the_enum_default() -> None:
    old = json.loads((schemas_dir() / "contact_change.avsc").read_text(encoding="utf-8"))
    new = copy.deepcopy(old)
    operation = next(f for f in new["fields"] if f["name"] == "operation")
    operation["type"]["symbols"].append("MERGE")
    assert full_incompatibilities(old, new) == []
    del old["fields"][2]["type"]["default"]
    assert [(p.direction, p.path, p.reason) for p in full_incompatibilities(old, new)] == [
        (
            Direction.FORWARD,
            "ContactChange.fields.operation",
            "writer enum symbol 'MERGE' unknown to reader enum Operation which has no default",
        )
    ]


# --- Empirical cross-check with fastavro --------------------------------------------------


def ascii_bytes(datum: Any) -> Any:
    """``datum`` with every bytes value made ASCII, keeping its length.

    The bytes -> string promotion assumes the bytes hold UTF-8, which no schema can
    state; generate_many's random bytes do not, so they are made into text here.
    """
    if isinstance(datum, bytes):
        return bytes(byte % 128 for byte in datum)
    if isinstance(datum, dict):
        return {key: ascii_bytes(value) for key, value in datum.items()}
    if isinstance(datum, list):
        return [ascii_bytes(value) for value in datum]
    return datum


def read_back(case: Case, seed: int) -> list[Any]:
    """Writes random writer data and reads it with the reader; raises what fastavro raises."""
    random.seed(seed)
    writer = fastavro.parse_schema(copy.deepcopy(case.writer))
    reader = fastavro.parse_schema(copy.deepcopy(case.reader))
    results = []
    for datum in generate_many(writer, SAMPLES):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, writer, ascii_bytes(datum))
        buffer.seek(0)
        results.append(fastavro.schemaless_reader(buffer, writer, reader))
        assert buffer.tell() == len(buffer.getvalue()), "reader left bytes unread"
    return results


@pytest.mark.parametrize("case", params([c for c in CASES if c.compatible]))
def test_compatible_verdict_holds_for_real_reads(case: Case) -> None:
    values = read_back(case, seed=len(case.id))
    assert len(values) == SAMPLES
    if case.values_match_reader:
        reader = fastavro.parse_schema(copy.deepcopy(case.reader))
        for value in values:
            assert fastavro.validation.validate(value, reader)


# What fastavro raises when resolution fails while reading: SchemaResolutionError, or a
# KeyError where it reads a writer record as a reader enum without checking the kinds.
READ_ERRORS = (SchemaResolutionError, KeyError)


@pytest.mark.parametrize("case", params([c for c in CASES if not c.compatible]))
def test_incompatible_verdict_shows_in_real_reads(case: Case) -> None:
    if case.fastavro_fails:
        with pytest.raises(READ_ERRORS):
            read_back(case, seed=len(case.id))
    else:
        # fastavro reads these without complaint because it decodes with the writer's
        # logical type; the specification calls them a mismatch and readers that apply
        # the reader's decimal scale get the values wrong, so the checker must flag them.
        read_back(case, seed=len(case.id))
        assert incompatibilities(reader=case.reader, writer=case.writer)


# --- Why not Apache Avro's own checker ----------------------------------------------------

# The cases where avro.compatibility (Apache Avro's Python port of Java's
# SchemaCompatibility, the checker Schema Registries run) says "compatible" and this
# module does not: a reader union whose first matching branch cannot read the writer
# (fastavro fails on the data), and decimals whose precision or scale differ (fastavro
# reads them silently with the writer's scale; a reader applying its own gets the values
# wrong). crmsync reads with fastavro, so it keeps the stricter checker.
AVRO_PASSES_WRONGLY = {
    "first matching reader branch decides",
    "decimal scale differs",
    "decimal precision differs",
    "fixed decimal scale differs",
}


def avro_says_compatible(case: Case) -> bool:
    checker = avro.compatibility.ReaderWriterCompatibilityChecker()
    result = checker.get_compatibility(
        avro.schema.parse(json.dumps(case.reader)), avro.schema.parse(json.dumps(case.writer))
    )
    return result.compatibility is avro.compatibility.SchemaCompatibilityType.compatible


def test_apache_avros_checker_agrees_except_where_fastavro_would_misread() -> None:
    differing = {case.id for case in CASES if avro_says_compatible(case) != case.compatible}
    # Should a release of avro agree on every case, it can replace schema_compat.
    assert differing == AVRO_PASSES_WRONGLY
    assert all(not case.compatible for case in CASES if case.id in differing)


# --- schemas_check against a real git repository ------------------------------------------

SCHEMA_V1 = record("Thing", field("id", "string"), namespace="demo")
SCHEMA_V2 = record(
    "Thing",
    field("id", "string"),
    field("note", ["null", "string"], default=None),
    namespace="demo",
)
SCHEMA_BREAKING = record("Thing", field("id", "string"), field("size", "long"), namespace="demo")


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Keep the developer's git config (hooks, signing, templates) out of the test.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    git(tmp_path, "init", "-q")
    (tmp_path / "schemas").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=crmsync tests", "-c", "user.email=tests@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def write(repo: Path, name: str, schema: Any) -> None:
    (repo / "schemas" / name).write_text(json.dumps(schema, indent=2), encoding="utf-8")


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def run_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    code = exit_info.value.code
    assert isinstance(code, int)
    return code, capsys.readouterr().out


def test_check_passes_before_the_first_commit(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(repo, "thing.avsc", SCHEMA_V1)
    code, out = run_check(capsys)
    assert code == 0, out
    assert "OK" in out


def test_check_passes_a_compatible_change(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo, "thing.avsc", SCHEMA_V1)
    commit(repo, "v1")
    write(repo, "thing.avsc", SCHEMA_V2)
    code, out = run_check(capsys)
    assert code == 0, out
    assert "against 1 earlier version" in out


def test_check_fails_an_incompatible_change(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo, "thing.avsc", SCHEMA_V1)
    commit(repo, "v1")
    write(repo, "thing.avsc", SCHEMA_BREAKING)
    code, out = run_check(capsys)
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert lines[0].startswith("schemas/thing.avsc@")
    assert (
        "[new reader, old writer] Thing.fields.size: reader field 'size' has no default" in lines[0]
    )
    assert lines[1].startswith("schemas-check: 1 problem(s)")


def test_check_compares_with_every_earlier_version(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    breaking_from_v1 = record("Thing", field("id", "string"), field("note", ["null", "string"]))
    write(repo, "thing.avsc", SCHEMA_V1)
    commit(repo, "v1")
    write(repo, "thing.avsc", SCHEMA_V2)
    commit(repo, "v2")
    write(repo, "thing.avsc", breaking_from_v1)
    code, out = run_check(capsys)
    assert code == 1
    assert "Thing.fields.note: reader field 'note' has no default" in out
    # Against the latest revision alone, the same file is fine.
    code, out = run_check(capsys, "--against", "HEAD")
    assert code == 0, out


def test_check_follows_renames_into_history(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo, "old_name.avsc", SCHEMA_V1)
    commit(repo, "v1")
    git(repo, "mv", "schemas/old_name.avsc", "schemas/thing.avsc")
    commit(repo, "rename")
    write(repo, "thing.avsc", SCHEMA_BREAKING)
    code, out = run_check(capsys)
    assert code == 1
    assert "schemas/thing.avsc@" in out
    assert "Thing.fields.size" in out


def test_check_fails_a_deleted_schema(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(repo, "thing.avsc", SCHEMA_V1)
    write(repo, "other.avsc", record("Other", field("a", "int")))
    commit(repo, "v1")
    (repo / "schemas" / "thing.avsc").unlink()
    code, out = run_check(capsys)
    assert code == 1
    assert "schemas/thing.avsc@" in out
    assert "deleted or renamed away" in out


def test_check_fails_a_schema_fastavro_rejects(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(repo, "thing.avsc", record("Thing", field("id", "NoSuchType")))
    code, out = run_check(capsys)
    assert code == 1
    assert "schemas/thing.avsc: invalid schema" in out


def test_check_runs_as_a_module(repo: Path) -> None:
    write(repo, "thing.avsc", SCHEMA_V1)
    commit(repo, "v1")
    write(repo, "thing.avsc", SCHEMA_BREAKING)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "tools.schemas_check", "--schemas-dir", "schemas"]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "Thing.fields.size" in done.stdout
