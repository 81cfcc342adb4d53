"""The mapper's log lines for a rejected change and a dropped value: written, with
where and why, and never the record's value (an email address, a phone number)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.contracts import ContactChange, FieldValue, Operation
from services.core.mapping_settings import FieldRule, FieldValueType, ProfileSettings
from services.core.sources.generic import GenericWebhookSource
from services.mapper.rejection_log import (
    Refused,
    log_dropped,
    log_rejection,
    rejected_reason,
)
from services.mapper.rules.consent import checkbox
from services.mapper.rules.errors import RuleError
from services.mapper.rules.expressions import ExpressionError, compile_expression
from services.mapper.rules.mapping import CompiledSource, map_change
from services.mapper.rules.transforms import apply_rule

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, tzinfo=UTC)
ORIGIN = ("crmsync.changes", 3, 1207)
EMAIL = "grace.hopper@example.com"
PHONE = "+45 20 12 34 56 78 90"
PROFILE = ProfileSettings.model_validate(
    {"subscriptions": {"newsletter": {"channel": "email", "source": "crm"}}}
)
LOGGER = "services.mapper.rejection_log"


def source(**overrides: Any) -> CompiledSource:
    values: dict[str, Any] = {
        "kind": "generic_webhook",
        "auth": {"kind": "none"},
        "mapping": {
            "fn": "first_name",
            "phone": {"attribute": "phone", "type": "phone"},
            "status": {"attribute": "lifecycle", "values": {"1": "lead"}},
            "born": {"attribute": "birth_date", "type": "date"},
        },
        "consent": [{"field": "newsletter", "subscription": "newsletter", "channel": "email"}],
        "default_region": "DK",
        **overrides,
    }
    return CompiledSource.of("crm", GenericWebhookSource.model_validate(values))


def change(fields: dict[str, Any]) -> ContactChange:
    return ContactChange(
        source="crm",
        record_id="42",
        operation=Operation.UPSERT,
        event_id="evt-7",
        source_modified_at=NOW,
        received_at=NOW,
        fields={"email": "ada@example.com", "fn": "Ada", **fields},
    )


# Each refused value, as personal as a CRM's values get.
REFUSED: dict[str, tuple[str, str, str]] = {
    "an email in a value map": ("status", EMAIL, "the value is not in the value map"),
    "an email as a date": ("born", EMAIL, "the value is not a date or time"),
    "a phone number as a checkbox": ("newsletter", PHONE, "the value is not a checkbox value"),
    "a phone number that is not one": ("phone", PHONE, "not a valid phone number"),
}


@pytest.mark.parametrize(("crm_field", "value", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_a_rejection_is_logged_once_without_the_value(
    caplog: pytest.LogCaptureFixture, crm_field: str, value: str, reason: str
) -> None:
    bad = change({crm_field: value})
    with pytest.raises(RuleError) as raised:
        map_change(bad, source=source(), profile=PROFILE)
    caplog.set_level(logging.INFO, logger=LOGGER)
    log_rejection(raised.value, change=bad, origin=ORIGIN)
    [line] = [r for r in caplog.records if r.name == LOGGER]
    assert line.levelno == logging.WARNING
    text = line.getMessage()
    for part in ("source=crm", "event_id=evt-7", "record_id=42", f"where={crm_field}", reason):
        assert part in text
    assert "topic=crmsync.changes partition=3 offset=1207" in text
    assert value not in text
    assert "@" not in text
    assert "20 12 34" not in text


@pytest.mark.parametrize(("crm_field", "value", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_a_dropped_value_is_logged_without_it(
    caplog: pytest.LogCaptureFixture, crm_field: str, value: str, reason: str
) -> None:
    bad = change({crm_field: value})
    mapped = map_change(bad, source=source(on_invalid="drop_field"), profile=PROFILE)
    caplog.set_level(logging.INFO, logger=LOGGER)
    [refused] = mapped.invalid
    log_dropped(bad, refused)
    [line] = [r for r in caplog.records if r.name == LOGGER]
    assert line.levelno == logging.INFO
    text = line.getMessage()
    for part in ("source=crm", "event_id=evt-7", "record_id=42", f"where={crm_field}", reason):
        assert part in text
    assert f"attribute={refused.attribute}" in text
    assert value not in text
    assert "20 12 34" not in text


def test_the_rejected_topic_keeps_the_full_reason() -> None:
    with pytest.raises(RuleError) as raised:
        map_change(change({"status": EMAIL}), source=source(), profile=PROFILE)
    assert rejected_reason(raised.value) == f"status: '{EMAIL}' is not in the value map"


def test_an_input_that_is_not_a_change_is_logged_by_its_origin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    refused = Refused(f"undecodable ContactChange: bad bytes {EMAIL}", summary="undecodable")
    log_rejection(refused, change=None, origin=ORIGIN)
    [line] = caplog.records
    text = line.getMessage()
    assert "source=- event_id=- record_id=- where=- reason=undecodable topic=" in text
    assert EMAIL not in text
    assert rejected_reason(refused) == f"undecodable ContactChange: bad bytes {EMAIL}"


def test_an_unexpected_error_is_named_by_its_type_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    error = KeyError(EMAIL)
    log_rejection(error, change=change({}), origin=ORIGIN)
    text = caplog.records[0].getMessage()
    assert "reason=KeyError" in text
    assert EMAIL not in text
    assert rejected_reason(error) == f"KeyError: '{EMAIL}'"


def test_a_computed_attribute_failing_on_a_value_is_logged_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = change({"score": EMAIL})
    computed = {"score2": {"expression": "num(score) * 2"}}
    with pytest.raises(RuleError) as raised:
        map_change(bad, source=source(computed=computed), profile=PROFILE)
    caplog.set_level(logging.INFO, logger=LOGGER)
    log_rejection(raised.value, change=bad, origin=ORIGIN)
    text = caplog.records[0].getMessage()
    assert "where=score2" in text
    assert "num() cannot read the value as a number" in text
    assert EMAIL not in text


# --- every refusal can be told without its value -------------------------------------

MARK = "§"  # in no reason's own words
TYPES: list[FieldValueType] = list(get_args(FieldValueType))
marked_text = st.text(max_size=60).map(lambda text: MARK + text)
marked_values: st.SearchStrategy[FieldValue] = st.one_of(
    marked_text, st.lists(marked_text, min_size=1, max_size=3)
)


@given(value=marked_values, kind=st.sampled_from(TYPES), value_map=st.booleans())
def test_no_rule_refusal_quotes_the_value_without_saying_so(
    value: FieldValue, kind: FieldValueType, value_map: bool
) -> None:
    rule = FieldRule(attribute="a", type=kind, values={"x": "y"} if value_map else None)
    try:
        apply_rule(value, rule, where="f", default_region="DK")
    except RuleError as error:
        assert MARK not in error.problem_without_value


@given(number=st.integers(min_value=10**25, max_value=10**40), kind=st.sampled_from(TYPES))
def test_no_refusal_of_a_number_quotes_it_without_saying_so(
    number: int, kind: FieldValueType
) -> None:
    try:
        apply_rule(number, FieldRule(attribute="a", type=kind), where="f", default_region=None)
    except RuleError as error:
        assert str(number)[:10] not in error.problem_without_value


@given(value=marked_text)
def test_no_checkbox_or_expression_refusal_quotes_the_value(value: str) -> None:
    try:
        checkbox(value, where="optin")
    except RuleError as error:
        assert MARK not in error.problem_without_value
        assert MARK in error.problem
    with pytest.raises(ExpressionError) as raised:
        compile_expression("num(x)").evaluate({"x": value + "z"})
    assert raised.value.value is not None
    assert MARK not in str(raised.value).replace(raised.value.value, "")
