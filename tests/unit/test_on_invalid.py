"""``on_invalid`` per rule: a refused value rejects the whole change, or is dropped
while the rest of the change applies, the stored value kept and the drop audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import pytest
from pydantic import ValidationError

from services.core.codecs import load_contracts
from services.core.contracts import (
    Channel,
    ConsentStatus,
    ContactChange,
    FieldDrop,
    Identity,
    Operation,
    audit_record,
)
from services.core.mapping_settings import ProfileSettings
from services.core.sources.generic import GenericWebhookSource
from services.mapper.rules.errors import RuleError
from services.mapper.rules.mapping import CompiledSource, Drop, map_change
from services.mapper.rules.record import RecordState, Step, apply_change

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, tzinfo=UTC)
PROFILE = ProfileSettings.model_validate(
    {
        "subscriptions": {
            "newsletter": {"channel": "email", "source": "crm"},
            "offers": {"channel": "sms", "source": "crm"},
        }
    }
)
MAPPING: dict[str, Any] = {
    "fn": "first_name",
    "phone": {"attribute": "phone", "type": "phone"},
    "status": {"attribute": "lifecycle", "values": {"1": "lead", "2": "customer"}},
    "born": {"attribute": "birth_date", "type": "date"},
}
CONSENT: list[dict[str, Any]] = [
    {"field": "newsletter", "subscription": "newsletter", "channel": "email"},
    {"field": "sms_ok", "subscription": "offers", "channel": "sms"},
]
VALID: dict[str, Any] = {
    "email": "Ada@Example.com",
    "fn": "Ada",
    "phone": "+45 32 12 34 56",
    "status": "2",
    "born": "1815-12-10",
    "newsletter": "yes",
    "sms_ok": "no",
}
EXPECTED: dict[str, Any] = {
    "email": "ada@example.com",
    "first_name": "Ada",
    "phone": "+4532123456",
    "lifecycle": "customer",
    "birth_date": "1815-12-10",
}


class Case(NamedTuple):
    crm_field: str
    bad: Any
    attribute: str
    problem: str


CASES = {
    "invalid phone": Case("phone", "12", "phone", "not a valid phone number"),
    "unmapped value": Case("status", "9", "lifecycle", "'9' is not in the value map"),
    "uncoercible date": Case("born", "31.02.1815", "birth_date", "is not a date or time"),
    "unclear checkbox": Case(
        "newsletter", "maybe", "consent:newsletter", "'maybe' is not a checkbox value"
    ),
}


def source(
    *,
    on_invalid: str | None = None,
    rule_on_invalid: dict[str, str] | None = None,
    **overrides: Any,
) -> CompiledSource:
    """The crm source; ``rule_on_invalid`` sets on_invalid on the rule of a CRM field
    (a mapping or consent rule)."""
    mapping = {
        field: dict(rule) if isinstance(rule, dict) else rule for field, rule in MAPPING.items()
    }
    consent = [dict(rule) for rule in CONSENT]
    for crm_field, policy in (rule_on_invalid or {}).items():
        if crm_field in mapping:
            rule = mapping[crm_field]
            mapping[crm_field] = {**(rule if isinstance(rule, dict) else {"attribute": rule})}
            mapping[crm_field]["on_invalid"] = policy
        for rule in consent:
            if rule["field"] == crm_field:
                rule["on_invalid"] = policy
    values: dict[str, Any] = {
        "kind": "generic_webhook",
        "auth": {"kind": "none"},
        "mapping": mapping,
        "consent": consent,
        "default_region": "DK",
        **({"on_invalid": on_invalid} if on_invalid is not None else {}),
        **overrides,
    }
    return CompiledSource.of("crm", GenericWebhookSource.model_validate(values))


def change(fields: dict[str, Any], *, at: float = 0) -> ContactChange:
    return ContactChange(
        source="crm",
        record_id="42",
        operation=Operation.UPSERT,
        event_id=f"e{at}",
        source_modified_at=NOW + timedelta(seconds=at),
        received_at=NOW,
        fields=fields,
    )


def rejection(case: Case) -> RuleError:
    """The refusal of ``case``'s value when its rule rejects (the default)."""
    with pytest.raises(RuleError) as raised:
        map_change(change({**VALID, case.crm_field: case.bad}), source=source(), profile=PROFILE)
    return raised.value


# --- reject: the default, today's behaviour -----------------------------------------


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("policy", [None, "reject"])
def test_reject_refuses_the_whole_change_naming_the_field(case: Case, policy: str | None) -> None:
    rules = {case.crm_field: policy} if policy is not None else None
    with pytest.raises(RuleError) as raised:
        map_change(
            change({**VALID, case.crm_field: case.bad}),
            source=source(rule_on_invalid=rules),
            profile=PROFILE,
        )
    assert raised.value.where == case.crm_field
    assert case.problem in raised.value.problem


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_rule_saying_reject_rejects_under_a_source_that_drops(case: Case) -> None:
    with pytest.raises(RuleError):
        map_change(
            change({**VALID, case.crm_field: case.bad}),
            source=source(on_invalid="drop_field", rule_on_invalid={case.crm_field: "reject"}),
            profile=PROFILE,
        )


# --- drop_field: the value left out, the rest applied --------------------------------


def dropping(case: Case, how: str) -> CompiledSource:
    if how == "rule":
        return source(rule_on_invalid={case.crm_field: "drop_field"})
    return source(on_invalid="drop_field")


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("how", ["rule", "source default"])
def test_drop_field_leaves_the_value_out_and_applies_the_rest(case: Case, how: str) -> None:
    mapped = map_change(
        change({**VALID, case.crm_field: case.bad}), source=dropping(case, how), profile=PROFILE
    )
    update = mapped.update
    assert update is not None
    # The rest of the change: identity, attributes, consents.
    assert update.match_key == "email:ada@example.com"
    assert Identity("email", "ada@example.com") in update.identities
    assert update.attributes == {k: v for k, v in EXPECTED.items() if k != case.attribute}
    assert update.cleared == ()
    consents = {(c.subscription, c.channel, c.status) for c in update.consents}
    expected_consents = {
        ("newsletter", Channel.EMAIL, ConsentStatus.OPT_IN),
        ("offers", Channel.SMS, ConsentStatus.OPT_OUT),
    }
    if case.attribute == "consent:newsletter":
        expected_consents.remove(("newsletter", Channel.EMAIL, ConsentStatus.OPT_IN))
    assert consents == expected_consents
    # The drop, with the reason the rejection would have carried.
    assert [d for d in mapped.drops if d.code == "invalid"] == [
        Drop(case.attribute, "invalid", str(rejection(case)))
    ]
    [refused] = mapped.invalid
    assert (refused.attribute, refused.error.where) == (case.attribute, case.crm_field)


def test_a_computed_attribute_that_fails_on_the_record_is_dropped_or_rejects() -> None:
    computed = {"score2": {"expression": "num(score) * 2", "type": "integer"}}
    fields = {**VALID, "score": "lots"}
    with pytest.raises(RuleError) as raised:
        map_change(change(fields), source=source(computed=computed), profile=PROFILE)
    assert raised.value.where == "score2"
    assert "num() cannot read 'lots'" in raised.value.problem
    computed["score2"]["on_invalid"] = "drop_field"
    mapped = map_change(change(fields), source=source(computed=computed), profile=PROFILE)
    assert mapped.update is not None
    assert "score2" not in mapped.update.attributes
    assert mapped.update.attributes["first_name"] == "Ada"
    assert mapped.drops == (Drop("score2", "invalid", str(raised.value)),)
    fine = map_change(
        change({**VALID, "score": "21"}), source=source(computed=computed), profile=PROFILE
    )
    assert fine.update is not None
    assert fine.update.attributes["score2"] == 42


def test_several_invalid_values_are_each_dropped() -> None:
    bad = {case.crm_field: case.bad for case in CASES.values()}
    mapped = map_change(
        change({**VALID, **bad}), source=source(on_invalid="drop_field"), profile=PROFILE
    )
    assert mapped.update is not None
    assert mapped.update.attributes == {"email": "ada@example.com", "first_name": "Ada"}
    assert sorted(d.attribute for d in mapped.drops if d.code == "invalid") == sorted(
        case.attribute for case in CASES.values()
    )


def test_the_audit_event_records_the_drop_with_code_invalid() -> None:
    case = CASES["invalid phone"]
    step = apply_change(
        None,
        change({**VALID, case.crm_field: case.bad}),
        source=dropping(case, "rule"),
        profile=PROFILE,
    )
    assert step.update is not None
    # As the mapper's engine builds the audit event from a step, through the schema.
    codec = load_contracts().audit_event
    record = audit_record(
        match_key=step.update.match_key,
        source="crm",
        record_id="42",
        event_id="e0",
        decided_at=NOW,
        mapping_version=1,
        changes=step.changes,
        dropped=step.drops,
    )
    event = codec.decode(codec.converter.encode(record))
    assert event.dropped == (FieldDrop("phone", "invalid", str(rejection(case))),)
    assert "phone" not in {c.field for c in event.changes}
    assert {"first_name", "email", "consent:newsletter"} <= {c.field for c in event.changes}


# --- the email field, the match key, is never dropped -------------------------------


@pytest.mark.parametrize("email_rule", [None, {"attribute": "email", "type": "email"}])
def test_an_invalid_match_key_rejects_whatever_on_invalid_says(email_rule: Any) -> None:
    extra = {"email": email_rule} if email_rule is not None else {}
    src = source(on_invalid="drop_field", mapping={**MAPPING, **extra})
    with pytest.raises(RuleError) as raised:
        map_change(change({**VALID, "email": "ada@@example"}), source=src, profile=PROFILE)
    assert raised.value.where == "email"


@pytest.mark.parametrize("email_field", ["email", "mail"])
def test_config_refuses_drop_field_on_the_email_field(email_field: str) -> None:
    mapping = {
        **MAPPING,
        email_field: {"attribute": "email", "type": "email", "on_invalid": "drop_field"},
    }
    with pytest.raises(ValidationError, match=f"mapping.{email_field}: on_invalid: drop_field"):
        source(mapping=mapping, email_field=email_field)
    # Another field's rule may drop, also into the email attribute.
    other = "work_email" if email_field == "email" else "email"
    source(
        mapping={
            **MAPPING,
            other: {"attribute": "email", "type": "email", "on_invalid": "drop_field"},
        },
        email_field=email_field,
    )


# --- a dropped value never clears the stored one ------------------------------------


def applied(
    changes: list[ContactChange], src: CompiledSource, *, incremental: bool = True
) -> tuple[list[Step], RecordState]:
    state: RecordState | None = None
    steps = []
    for each in changes:
        step = apply_change(state, each, source=src, profile=PROFILE, incremental=incremental)
        steps.append(step)
        state = step.state or state
    assert state is not None
    return steps, state


@pytest.mark.parametrize("incremental", [True, False])
def test_a_dropped_value_keeps_the_stored_one_even_where_blanks_clear(incremental: bool) -> None:
    # phone in clears: a blank from this source would clear it; an invalid value must
    # not. lifecycle has a default: a dropped value must not put the default in.
    src = source(
        on_invalid="drop_field",
        clears=["phone", "lifecycle"],
        defaults={"lifecycle": "unknown"},
    )
    steps, state = applied(
        [
            change(VALID, at=0),
            change({"phone": "12", "status": "9", "fn": "Grace"}, at=1),
            change({"newsletter": "maybe"}, at=2),
        ],
        src,
        incremental=incremental,
    )
    _first, bad_values, bad_checkbox = steps
    assert bad_values.update is not None
    assert bad_values.update.attributes == {"first_name": "Grace"}
    assert bad_values.update.cleared == ()
    assert sorted((d.attribute, d.code) for d in bad_values.drops) == [
        ("lifecycle", "invalid"),
        ("phone", "invalid"),
    ]
    # Nothing to apply: the checkbox's consent stands as it was.
    assert bad_checkbox.update is None
    assert [(d.attribute, d.code) for d in bad_checkbox.drops] == [
        ("consent:newsletter", "invalid")
    ]
    assert state.attributes["phone"] == "+4532123456"
    assert state.attributes["lifecycle"] == "customer"
    assert state.consents["newsletter"] == ConsentStatus.OPT_IN.value


def test_a_dropped_value_is_reported_by_the_change_that_brought_it_only() -> None:
    # sync_if maps the whole record on every change: the invalid phone, still the
    # record's field, is left out again but not reported again.
    src = source(on_invalid="drop_field", sync_if={"all": [{"field": "fn", "op": "exists"}]})
    steps, state = applied(
        [change(VALID, at=0), change({"phone": "12"}, at=1), change({"fn": "Grace"}, at=2)], src
    )
    assert [(d.attribute, d.code) for d in steps[1].drops] == [("phone", "invalid")]
    assert [r.attribute for r in steps[1].invalid] == ["phone"]
    assert steps[2].drops == () and steps[2].invalid == ()
    assert steps[2].update is not None
    assert steps[2].update.attributes == {"first_name": "Grace"}
    assert steps[2].update.cleared == ()
    assert state.attributes["phone"] == "+4532123456"


def test_a_valid_value_after_a_dropped_one_applies() -> None:
    src = source(on_invalid="drop_field")
    steps, state = applied(
        [
            change(VALID, at=0),
            change({"phone": "12"}, at=1),
            change({"phone": "+4540404040"}, at=2),
        ],
        src,
    )
    assert steps[2].update is not None
    assert steps[2].update.attributes == {"phone": "+4540404040"}
    assert state.attributes["phone"] == "+4540404040"
