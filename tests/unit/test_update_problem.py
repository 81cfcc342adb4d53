"""What no store can hold: ``update_problem`` refuses it before any store is asked."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.contracts import FieldValue, Identity
from services.writer.profiles import MAX_TEXT, update_problem
from tests.stores.changes import update

pytestmark = pytest.mark.unit


def with_attribute(name: str, value: FieldValue) -> str | None:
    return update_problem(update("hubspot", "1", t=1, attributes={name: value}))


@pytest.mark.parametrize(
    "value",
    ["Ada", "", "x" * 300, 7, -(2**63) + 1, 2**63 - 1, 1.5, True, ["a", "b"], []],
)
def test_storable_values_pass(value: FieldValue) -> None:
    assert with_attribute("city", value) is None


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("score", math.nan, "finite"),
        ("score", math.inf, "finite"),
        ("score", 2**63, "64-bit"),
        ("score", -(2**63), "64-bit"),
        ("city", "nul\x00byte", "NUL"),
        ("city", "x" * (MAX_TEXT + 1), "64 KiB"),
        ("tags", ["ok", "nul\x00"], "list item"),
        ("ci\x00ty", "Paris", "name"),
        ("ci\x00ty", 7, "name"),
        ("c" * (MAX_TEXT + 1), "Paris", "name"),
    ],
)
def test_unstorable_values_and_names_say_why(name: str, value: FieldValue, reason: str) -> None:
    problem = with_attribute(name, value)
    assert problem is not None and reason in problem


def test_an_identity_no_store_can_hold_is_refused() -> None:
    empty = update("hubspot", "1", t=1)
    empty = empty._replace(identities=(*empty.identities, Identity("email", "")))
    assert update_problem(empty) == "empty identity email:"
    nul = update("hubspot", "1", t=1, email="a\x00@example.com")
    assert update_problem(nul) == "identity of kind email is not storable text"


def _detailed(name: str, value: FieldValue) -> bool:
    """Storable, by the rules alone (no shortcut)."""
    if "\x00" in name or len(name) > MAX_TEXT:
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) < value < 2**63
    texts = value if isinstance(value, list) else [value] if isinstance(value, str) else []
    return all("\x00" not in text and len(text) <= MAX_TEXT for text in texts)


names = st.text(max_size=300) | st.sampled_from(["city", "x" * 255, "x" * 256, "a\x00b"])
values = (
    st.text(max_size=300)
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.sampled_from([2**53, -(2**53), 2**63 - 1, 2**63, -(2**63)])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.lists(st.text(max_size=20), max_size=3)
)


@given(name=names, value=values)
def test_the_shortcuts_agree_with_the_rules(name: str, value: FieldValue) -> None:
    assert (with_attribute(name, value) is None) == _detailed(name, value)
