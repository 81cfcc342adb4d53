"""Sync conditions: which records of a source sync."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.contracts import FieldValue
from services.core.mapping_settings import Clause, Condition, ScalarSetting
from services.mapper.rules.conditions import clause_holds, equal, matches

pytestmark = pytest.mark.unit


def holds(op: str, value: FieldValue, setting: Any = None) -> bool:
    return clause_holds(Clause(field="f", op=op, value=setting), value)


CLAUSES: list[tuple[str, FieldValue, Any, bool]] = [
    # exists / missing
    ("exists", "x", None, True),
    ("exists", 0, None, True),
    ("exists", False, None, True),
    ("exists", None, None, False),
    ("exists", "  ", None, False),
    ("exists", [], None, False),
    ("missing", None, None, True),
    ("missing", "", None, True),
    ("missing", "x", None, False),
    # eq: text, numbers, booleans in the spellings CRMs use
    ("eq", "A", "A", True),
    ("eq", " A ", "A", True),
    ("eq", "a", "A", False),  # case-sensitive
    ("eq", "1", 1, True),
    ("eq", 1, "1", True),
    ("eq", "1.0", 1, True),
    ("eq", 1.0, 1, True),
    ("eq", "01", 1, True),
    ("eq", "1,0", 1, False),
    ("eq", "true", True, True),
    ("eq", "TRUE", True, True),
    ("eq", "yes", True, True),
    ("eq", "1", True, True),
    ("eq", 1, True, True),
    ("eq", "0", False, True),
    ("eq", "false", True, False),
    ("eq", "maybe", True, False),
    ("eq", 2, True, False),
    ("eq", True, "true", True),
    ("eq", True, "yes", True),
    ("eq", False, "true", False),
    ("eq", None, "A", False),
    ("eq", "", "", False),  # blank equals nothing: use exists/missing
    ("eq", ["x", "A"], "A", True),
    ("eq", ["x", "y"], "A", False),
    ("eq", ["1", "2"], 2, True),
    # ne is not eq
    ("ne", "B", "A", True),
    ("ne", "A", "A", False),
    ("ne", None, "A", True),
    ("ne", ["x", "A"], "A", False),
    ("ne", "1", 1, False),
    # in / not_in
    ("in", "A", ["A", "B"], True),
    ("in", "C", ["A", "B"], False),
    ("in", "2", [1, 2], True),
    ("in", "yes", [True], True),
    ("in", ["x", "B"], ["A", "B"], True),
    ("in", None, ["A"], False),
    ("not_in", "C", ["A", "B"], True),
    ("not_in", "A", ["A", "B"], False),
    ("not_in", None, ["A"], True),
    ("not_in", ["C", "A"], ["A"], False),
    # ordering: numbers
    ("gt", 5, 3, True),
    ("gt", "5", 3, True),
    ("gt", "10", "9", True),  # numerically, not by text
    ("ge", 3, 3, True),
    ("lt", "2.5", 3, True),
    ("le", 3.0, "3", True),
    ("gt", 3, 3, False),
    # ordering: times
    ("gt", "2024-02-01", "2024-01-31", True),
    ("lt", "2024-01-31T10:00:00+02:00", "2024-01-31T09:00:00Z", True),
    ("ge", "2024-01-31T00:00:00Z", "2024-01-31", True),
    ("le", "2024-01-31 10:00", "2024-01-31T10:00:00Z", True),
    # ordering that cannot be made: false, never an error
    ("gt", "abc", 3, False),
    ("lt", "abc", "abd", False),  # text is not ordered
    ("gt", "2024-01-31", 3, False),
    ("gt", True, 0, False),
    ("gt", None, 3, False),
    ("lt", None, 3, False),
    ("gt", "", 3, False),
    ("gt", ["5"], 3, False),
    ("gt", float("nan"), 3, False),
    ("gt", 5, True, False),
]


@pytest.mark.parametrize(("op", "value", "setting", "expected"), CLAUSES)
def test_clause(op: str, value: FieldValue, setting: Any, expected: bool) -> None:
    assert holds(op, value, setting) is expected


def condition(**parts: Any) -> Condition:
    return Condition.model_validate(parts)


NESTED = condition(
    all=[
        {"field": "lifecycle", "op": "in", "value": ["customer", "lead"]},
        {
            "any": [
                {"field": "country", "op": "eq", "value": "DE"},
                {"field": "vip", "op": "eq", "value": True},
            ]
        },
        {"field": "deleted", "op": "missing"},
    ]
)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"lifecycle": "customer", "country": "DE"}, True),
        ({"lifecycle": "lead", "country": "FR", "vip": "true"}, True),
        ({"lifecycle": "lead", "country": "FR", "vip": "false"}, False),
        ({"lifecycle": "lead", "country": "FR"}, False),
        ({"lifecycle": "other", "country": "DE"}, False),
        ({"lifecycle": "customer", "country": "DE", "deleted": "2024-01-01"}, False),
        ({}, False),
    ],
)
def test_nested_conditions(fields: dict[str, FieldValue], expected: bool) -> None:
    assert matches(NESTED, fields) is expected


def test_any_and_all_of_one_clause() -> None:
    clause = {"field": "x", "op": "exists"}
    assert matches(condition(any=[clause]), {"x": 1})
    assert not matches(condition(all=[clause]), {})


# --- properties -----------------------------------------------------------------------

FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["1", "1.0", "true", "yes", "0", "2024-01-31", "2024-01-31T10:00:00Z"]),
    st.lists(st.sampled_from(["a", "1", "true", ""]), max_size=3),
)
SETTINGS: st.SearchStrategy[ScalarSetting] = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(min_size=1, max_size=12),
    st.sampled_from(["1", "a", "true", "2024-01-31"]),
)


@given(FIELD_VALUES, SETTINGS)
def test_negations_are_exact(value: FieldValue, setting: ScalarSetting) -> None:
    assert holds("ne", value, setting) is not holds("eq", value, setting)
    assert holds("not_in", value, [setting]) is not holds("in", value, [setting])
    assert holds("in", value, [setting]) is holds("eq", value, setting)
    assert holds("missing", value) is not holds("exists", value)


@given(FIELD_VALUES, SETTINGS, st.sampled_from(["gt", "ge", "lt", "le"]))
def test_ordering_never_raises_and_blank_never_compares(
    value: FieldValue, setting: ScalarSetting, op: str
) -> None:
    result = holds(op, value, setting)
    if holds("missing", value):
        assert result is False


@given(st.lists(st.text(max_size=5), max_size=4), SETTINGS)
def test_a_list_field_equals_when_any_item_does(items: list[str], setting: ScalarSetting) -> None:
    assert holds("eq", items, setting) is any(equal(item, setting) for item in items)


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_numbers_equal_their_text(number: int) -> None:
    assert holds("eq", str(number), number)
    assert holds("eq", number, str(number))
    assert holds("eq", f"{number}.0", number)
    assert holds("ge", str(number), number)
    assert not holds("gt", str(number), number)


@given(
    st.dictionaries(st.sampled_from(["a", "b"]), FIELD_VALUES),
    st.sampled_from(["eq", "ne", "gt", "exists"]),
    SETTINGS,
)
def test_all_and_any_combine_like_python(
    fields: dict[str, FieldValue], op: str, setting: ScalarSetting
) -> None:
    value = None if op == "exists" else setting
    clauses = [{"field": name, "op": op, "value": value} for name in ("a", "b")]
    each = [holds(op, fields.get(name), value) for name in ("a", "b")]
    assert matches(condition(all=clauses), fields) is all(each)
    assert matches(condition(any=clauses), fields) is any(each)
