"""Field transformations: value maps, splits and coercions of one CRM value."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from services.core.contracts import FieldValue
from services.core.mapping_settings import FieldRule, FieldValueType
from services.mapper.rules.errors import RuleError
from services.mapper.rules.transforms import MILLISECONDS_FROM, apply_rule

pytestmark = pytest.mark.unit

TYPES: list[FieldValueType] = list(get_args(FieldValueType))
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]


def rule(**settings: Any) -> FieldRule:
    return FieldRule(attribute="attr", **settings)


def apply(value: FieldValue, region: str | None = "DE", **settings: Any) -> FieldValue:
    return apply_rule(value, rule(**settings), where="crm_field", default_region=region)


COERCIONS: list[tuple[FieldValue, dict[str, Any], FieldValue]] = [
    # keep
    (" As Is ", {}, " As Is "),
    (["a", "b"], {}, ["a", "b"]),
    (12.5, {"type": "keep"}, 12.5),
    # string
    ("  text  ", {"type": "string"}, "text"),
    (12, {"type": "string"}, "12"),
    (12.0, {"type": "string"}, "12"),
    (-0.5, {"type": "string"}, "-0.5"),
    (True, {"type": "string"}, "true"),
    (["a", " b ", ""], {"type": "string"}, "a;b"),
    (["a", "b"], {"type": "string", "separator": " | "}, "a | b"),
    # number
    ("1234.5", {"type": "number"}, 1234.5),
    (" -12 ", {"type": "number"}, -12),
    ("+1e3", {"type": "number"}, 1000.0),
    (".5", {"type": "number"}, 0.5),
    (7, {"type": "number"}, 7),
    (7.25, {"type": "number"}, 7.25),
    # integer
    ("12", {"type": "integer"}, 12),
    ("12.0", {"type": "integer"}, 12),
    ("1e3", {"type": "integer"}, 1000),
    (12.0, {"type": "integer"}, 12),
    (-3, {"type": "integer"}, -3),
    # boolean
    (True, {"type": "boolean"}, True),
    (0, {"type": "boolean"}, False),
    (1.0, {"type": "boolean"}, True),
    *[(text, {"type": "boolean"}, True) for text in ["true", "YES", " y ", "1", "On", "TRUE"]],
    *[(text, {"type": "boolean"}, False) for text in ["false", "No", "n", "0", "OFF"]],
    # date
    ("2024-01-31", {"type": "date"}, "2024-01-31"),
    ("20240131", {"type": "date"}, "2024-01-31"),
    ("2024-01-31T23:30:00Z", {"type": "date"}, "2024-01-31"),
    ("2024-01-31T23:30:00-05:00", {"type": "date"}, "2024-02-01"),
    ("2024-01-31T23:30:00-05:00", {"type": "date", "timezone": "America/New_York"}, "2024-01-31"),
    ("2024-01-31T23:30:00Z", {"type": "date", "timezone": "Europe/Berlin"}, "2024-02-01"),
    ("2024-01-31T23:30", {"type": "date", "timezone": "Asia/Kolkata"}, "2024-01-31"),
    ("31.01.2024", {"type": "date", "formats": ["%d.%m.%Y"]}, "2024-01-31"),
    ("01/31/2024", {"type": "date", "formats": ["%d.%m.%Y", "%m/%d/%Y"]}, "2024-01-31"),
    (1706659200, {"type": "date"}, "2024-01-31"),
    (1706659200000, {"type": "date"}, "2024-01-31"),
    ("1706659200000", {"type": "date"}, "2024-01-31"),
    (-315619200000, {"type": "date"}, "1960-01-01"),
    (-315619200, {"type": "date"}, "1960-01-01"),
    (0, {"type": "date"}, "1970-01-01"),
    # datetime
    ("2024-01-31T10:00:00Z", {"type": "datetime"}, "2024-01-31T10:00:00Z"),
    ("2024-01-31T10:00:00+02:00", {"type": "datetime"}, "2024-01-31T08:00:00Z"),
    ("2024-01-31 10:00", {"type": "datetime", "timezone": "Europe/Berlin"}, "2024-01-31T09:00:00Z"),
    ("2024-07-31 10:00", {"type": "datetime", "timezone": "Europe/Berlin"}, "2024-07-31T08:00:00Z"),
    ("2024-01-31", {"type": "datetime", "timezone": "Europe/Berlin"}, "2024-01-30T23:00:00Z"),
    ("2024-01-31T10:00:00.250Z", {"type": "datetime"}, "2024-01-31T10:00:00.250000Z"),
    # a local time the clocks skip, and one they pass twice: the offset before the change
    ("2024-03-31 02:30", {"type": "datetime", "timezone": "Europe/Berlin"}, "2024-03-31T01:30:00Z"),
    ("2024-10-27 02:30", {"type": "datetime", "timezone": "Europe/Berlin"}, "2024-10-27T00:30:00Z"),
    (
        "31.01.2024 10:00",
        {"type": "datetime", "formats": ["%d.%m.%Y %H:%M"], "timezone": "America/New_York"},
        "2024-01-31T15:00:00Z",
    ),
    (
        "31.01.2024 10:00 +0100",
        {"type": "datetime", "formats": ["%d.%m.%Y %H:%M %z"]},
        "2024-01-31T09:00:00Z",
    ),
    (1706695200, {"type": "datetime"}, "2024-01-31T10:00:00Z"),
    (1706695200123, {"type": "datetime"}, "2024-01-31T10:00:00.123000Z"),
    (1706695200.5, {"type": "datetime"}, "2024-01-31T10:00:00.500000Z"),
    # multi
    ("a; b;;c ", {"type": "multi"}, ["a", "b", "c"]),
    ("a|b", {"type": "multi", "separator": "|"}, ["a", "b"]),
    (["a ", " ", "b", "a"], {"type": "multi"}, ["a", "b", "a"]),
    ("single", {"type": "multi"}, ["single"]),
    (5, {"type": "multi"}, ["5"]),
    (True, {"type": "multi"}, ["true"]),
    # email, phone, currency
    (" Ada@Example.COM ", {"type": "email"}, "ada@example.com"),
    ("030 1234567", {"type": "phone"}, "+49301234567"),
    (4930123456, {"type": "phone"}, "+4930123456"),
    ("eur", {"type": "currency"}, "EUR"),
    (978, {"type": "currency"}, "EUR"),
]


@pytest.mark.parametrize(("value", "settings", "expected"), COERCIONS)
def test_coerces(value: FieldValue, settings: dict[str, Any], expected: FieldValue) -> None:
    result = apply(value, **settings)
    assert result == expected
    assert type(result) is type(expected)


REFUSALS: list[tuple[FieldValue, dict[str, Any], str]] = [
    ("1,234.5", {"type": "number"}, "not a number"),
    ("12,5", {"type": "number"}, "plain decimal notation"),
    ("1 000", {"type": "number"}, "not a number"),
    ("nan", {"type": "number"}, "not a number"),
    ("twelve", {"type": "number"}, "not a number"),
    (True, {"type": "number"}, "boolean is not a number"),
    (["1"], {"type": "number"}, "not a number"),
    (float("inf"), {"type": "number"}, "finite"),
    (2**63, {"type": "number"}, "64-bit"),
    ("9" * 25, {"type": "number"}, "64-bit"),
    ("12.5", {"type": "integer"}, "not a whole number"),
    (12.5, {"type": "integer"}, "not a whole number"),
    (1e30, {"type": "integer"}, "64-bit"),
    ("maybe", {"type": "boolean"}, "not a boolean"),
    (2, {"type": "boolean"}, "not a boolean"),
    (["true"], {"type": "boolean"}, "not a boolean"),
    ("tomorrow", {"type": "date"}, "not a date"),
    ("31.01.2024", {"type": "date"}, "not a date"),
    ("31.01.2024", {"type": "date", "formats": ["%m/%d/%Y"]}, "not a date"),
    ("2024-02-30", {"type": "date"}, "not a date"),
    ("2024", {"type": "date"}, "not a date"),  # a year is not read as a Unix time
    ("12345678", {"type": "datetime"}, "not a date"),
    (True, {"type": "date"}, "not a date"),
    (float("nan"), {"type": "datetime"}, "finite"),
    (10**20, {"type": "datetime"}, "out of range"),
    ("2024-01-31T10:00", {"type": "datetime", "timezone": "Mars/Olympus"}, "unknown timezone"),
    ("0001-01-01T00:00", {"type": "datetime", "timezone": "Asia/Tokyo"}, "out of range"),
    ("not an email", {"type": "email"}, "not an email address"),
    ("030 1234567", {"type": "phone", "_region": None}, "no default_region"),
    ("EURO", {"type": "currency"}, "not an ISO 4217"),
    ("C", {"values": {"A": "Gold", "B": "Silver"}}, "'C' is not in the value map"),
    (["A", "C"], {"values": {"A": "Gold"}}, "'C' is not in the value map"),
    (5, {"split": "first"}, "split takes text"),
]


@pytest.mark.parametrize(("value", "settings", "reason"), REFUSALS)
def test_refusals_name_the_field_and_reason(
    value: FieldValue, settings: dict[str, Any], reason: str
) -> None:
    region = settings.pop("_region", "DE")
    with pytest.raises(RuleError) as raised:
        apply(value, region=region, **settings)
    assert raised.value.where == "crm_field"
    assert reason in raised.value.problem


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("blank", [None, "", "   ", "\n\t", []])
def test_blank_input_is_none_for_every_type(kind: FieldValueType, blank: FieldValue) -> None:
    assert apply(blank, type=kind) is None
    assert apply(blank, type=kind, values={"x": "y"}, split="first") is None


VALUE_MAPS: list[tuple[FieldValue, dict[str, Any], FieldValue]] = [
    ("A", {"values": {"A": "Gold", "B": "Silver"}}, "Gold"),
    (" A ", {"values": {"A": "Gold"}}, "Gold"),
    (1, {"values": {"1": "Gold"}}, "Gold"),
    (1.0, {"values": {"1": "Gold"}}, "Gold"),
    (True, {"values": {"true": "yes"}}, "yes"),
    ("C", {"values": {"A": "Gold"}, "unmapped": "keep"}, "C"),
    ("C", {"values": {"A": "Gold"}, "unmapped": "blank"}, None),
    ("1", {"values": {"1": 100}, "type": "integer"}, 100),
    ("y", {"values": {"y": True}, "type": "boolean"}, True),
    (["A", "B"], {"values": {"A": "Gold", "B": "Silver"}}, ["Gold", "Silver"]),
    (["A", "C"], {"values": {"A": "Gold"}, "unmapped": "keep"}, ["Gold", "C"]),
    (["A", "C"], {"values": {"A": "Gold"}, "unmapped": "blank"}, ["Gold"]),
    (["C"], {"values": {"A": "Gold"}, "unmapped": "blank"}, None),
    (["1", "2"], {"values": {"1": 10, "2": True}, "type": "multi"}, ["10", "true"]),
    ("A;B", {"values": {"A;B": "both"}, "type": "multi"}, ["both"]),
    ("x", {"values": {"x": ""}}, None),
]


@pytest.mark.parametrize(("value", "settings", "expected"), VALUE_MAPS)
def test_value_maps(value: FieldValue, settings: dict[str, Any], expected: FieldValue) -> None:
    assert apply(value, **settings) == expected


@pytest.mark.parametrize(
    ("value", "part", "expected"),
    [
        ("Ada King Lovelace", "first", "Ada"),
        ("Ada King Lovelace", "rest", "King Lovelace"),
        ("Ada King Lovelace", "last", "Lovelace"),
        ("  Ada   Lovelace ", "rest", "Lovelace"),
        ("Ada", "first", "Ada"),
        ("Ada", "last", "Ada"),
        ("Ada", "rest", None),
    ],
)
def test_split(value: str, part: str, expected: str | None) -> None:
    assert apply(value, split=part) == expected


def test_value_map_applies_before_split_and_split_before_coercion() -> None:
    assert apply("VIP", values={"VIP": "Very Important 1"}, split="last", type="integer") == 1


# --- properties -----------------------------------------------------------------------

FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.lists(st.text(max_size=8), max_size=4),
)
INSTANTS = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
# Values likely to pass each type, so the properties are not all about refusals.
LIKELY = st.one_of(
    FIELD_VALUES,
    st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["yes", "No", "on", "0", "EUR", "chf", "840", "Ada@Example.com"]),
    st.sampled_from(["030 1234567", "+1 201 555 0123", "0151 23456789"]),
    INSTANTS.map(datetime.isoformat),
    INSTANTS.map(lambda moment: moment.replace(tzinfo=None).isoformat(sep=" ")),
    INSTANTS.map(lambda moment: moment.date().isoformat()),
    INSTANTS.map(lambda moment: int(moment.timestamp() * 1000)),
    st.lists(st.sampled_from(["a", " b", "", "c;d"]), max_size=4).map(";".join),
)
RULES = st.builds(
    lambda kind, zone, separator: rule(type=kind, timezone=zone, separator=separator),
    st.sampled_from(TYPES),
    st.sampled_from(ZONES),
    st.sampled_from([";", ",", " | "]),
)


@given(LIKELY, RULES, st.sampled_from([None, "DE", "US"]))
def test_coercion_is_deterministic_and_idempotent(
    value: FieldValue, field_rule: FieldRule, region: str | None
) -> None:
    try:
        first = apply_rule(value, field_rule, where="f", default_region=region)
    except RuleError as refused:
        with pytest.raises(RuleError) as again:
            apply_rule(value, field_rule, where="f", default_region=region)
        assert str(again.value) == str(refused)
        return
    assert repr(apply_rule(value, field_rule, where="f", default_region=region)) == repr(first)
    coerced_again = apply_rule(first, field_rule, where="f", default_region=region)
    assert repr(coerced_again) == repr(first)


@given(FIELD_VALUES, RULES, st.sampled_from([None, "DE"]))
def test_any_value_is_coerced_or_refused_with_a_rule_error(
    value: FieldValue, field_rule: FieldRule, region: str | None
) -> None:
    try:
        result = apply_rule(value, field_rule, where="f", default_region=region)
    except RuleError:
        return
    if field_rule.type in ("string", "date", "datetime", "email", "phone", "currency"):
        assert result is None or isinstance(result, str)
    if field_rule.type == "multi":
        assert result is None or (isinstance(result, list) and all(result))


@given(INSTANTS, st.sampled_from(ZONES))
def test_datetime_keeps_the_instant(moment: datetime, zone: str) -> None:
    result = apply(moment.astimezone(UTC).isoformat(), type="datetime", timezone=zone)
    assert isinstance(result, str)
    assert result.endswith("Z")
    assert datetime.fromisoformat(result) == moment


@given(INSTANTS)
def test_unix_millis_and_iso_text_agree(moment: datetime) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    millis = round(moment.timestamp() * 1000)
    # Within 10**10 ms (about 115 days) of 1970-01-01 a number is read as seconds.
    assume(abs(millis) >= MILLISECONDS_FROM)
    assert apply(millis, type="datetime") == apply(moment.isoformat(), type="datetime")


def test_unix_time_under_ten_to_the_ten_is_seconds() -> None:
    assert apply(9_999_999_999, type="date") == "2286-11-20"
    assert apply(10_000_000_000, type="date") == "1970-04-26"


@given(st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1))
def test_integer_text_round_trips(number: int) -> None:
    assert apply(str(number), type="integer") == number
    assert apply(str(number), type="number") == number
    assert apply(number, type="string") == str(number)
