"""Field mapping end to end over the pure rules: attributes, blanks, ownership, consent."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.contracts import (
    Channel,
    ConsentStatus,
    ContactChange,
    Identity,
    Operation,
    UpdateOperation,
)
from services.core.mapping_settings import ProfileSettings
from services.core.sources.generic import GenericWebhookSource
from services.mapper.rules.errors import RuleError
from services.mapper.rules.mapping import CompiledSource, Mapped, map_change

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def source(**overrides: Any) -> CompiledSource:
    values: dict[str, Any] = {
        "kind": "generic_webhook",
        "auth": {"kind": "none"},
        "mapping": {"fn": "first_name", "co.name": "company"},
        "mapping_version": 3,
    }
    values.update(overrides)
    return CompiledSource.of("crm", GenericWebhookSource.model_validate(values))


def change(fields: dict[str, Any], operation: Operation = Operation.UPSERT) -> ContactChange:
    return ContactChange(
        source="crm",
        record_id="42",
        operation=operation,
        event_id="e",
        source_modified_at=NOW,
        received_at=NOW,
        fields=fields,
    )


def mapped(
    fields: dict[str, Any], *, profile: ProfileSettings | None = None, **overrides: Any
) -> Mapped:
    return map_change(change(fields), source=source(**overrides), profile=profile or PROFILE)


PROFILE = ProfileSettings()


def test_mapped_fields_become_attributes_and_unmapped_ones_are_ignored() -> None:
    result = mapped({"email": " Ada@Example.COM ", "fn": "Ada", "co.name": "Acme", "x": 1})
    assert result.update is not None
    assert result.update.attributes == {
        "email": "ada@example.com",
        "first_name": "Ada",
        "company": "Acme",
    }
    assert result.update.match_key == "email:ada@example.com"
    assert result.update.identities == (
        Identity("email", "ada@example.com"),
        Identity("crm", "crm:42"),
    )
    assert result.update.mapping_version == 3


def test_an_invalid_email_rejects_the_change_naming_the_field() -> None:
    with pytest.raises(RuleError, match=r"^email: "):
        mapped({"email": "not-an-email", "fn": "Ada"})


def test_without_email_the_crm_id_is_the_match_key() -> None:
    result = mapped({"fn": "Ada"})
    assert result.update is not None
    assert result.update.match_key == "crm:crm:42"


@pytest.mark.parametrize("blank", [None, "", "   ", []])
def test_a_blank_never_clears(blank: Any) -> None:
    result = mapped({"email": "a@b.co", "fn": blank})
    assert result.update is not None
    assert "first_name" not in result.update.attributes
    assert result.update.cleared == ()
    assert [(d.attribute, d.code) for d in result.drops] == [("first_name", "blank")]


def test_an_owned_attribute_listed_in_clears_is_cleared_explicitly() -> None:
    result = mapped({"fn": None}, clears=["first_name"])
    assert result.update is not None
    assert result.update.cleared == ("first_name",)


def test_attributes_the_source_does_not_own_are_dropped() -> None:
    profile = ProfileSettings.model_validate(
        {"attributes": {"company": {"policy": "owner_only", "owner": "erp"}}}
    )
    result = mapped({"fn": "Ada", "co.name": "Acme"}, profile=profile)
    assert result.update is not None
    assert result.update.attributes == {"first_name": "Ada"}
    assert [(d.attribute, d.code) for d in result.drops] == [("company", "ownership")]


def test_transformations_computed_attributes_and_defaults() -> None:
    result = mapped(
        {"full": "Ada King Lovelace", "status": "2", "born": "10.12.1815", "fn": "Ada"},
        mapping={
            "fn": "first_name",
            "full": [
                {"attribute": "given_name", "split": "first"},
                {"attribute": "family_name", "split": "rest"},
            ],
            "status": {"attribute": "status", "values": {"1": "lead", "2": "customer"}},
            "born": {"attribute": "birth_date", "type": "date", "formats": ["%d.%m.%Y"]},
        },
        computed={"greeting": {"template": "Dear {fn}"}},
        defaults={"country": "GB"},
    )
    assert result.update is not None
    assert result.update.attributes == {
        "first_name": "Ada",
        "given_name": "Ada",
        "family_name": "King Lovelace",
        "status": "customer",
        "birth_date": "1815-12-10",
        "greeting": "Dear Ada",
        "country": "GB",
    }


def test_a_value_the_map_does_not_know_rejects_the_change() -> None:
    with pytest.raises(RuleError, match="status"):
        mapped({"status": "9"}, mapping={"status": {"attribute": "status", "values": {"1": "x"}}})


def test_sync_conditions_leave_unmatched_records_alone_or_detach_them() -> None:
    condition = {"all": [{"field": "type", "op": "eq", "value": "A"}]}
    assert mapped({"type": "A", "fn": "Ada"}, sync_if=condition).update is not None
    left = mapped({"type": "B", "fn": "Ada"}, sync_if=condition)
    assert left.update is None
    assert [d.code for d in left.drops] == ["unmatched"]
    detached = mapped({"type": "B"}, sync_if=condition, when_unmatched="delete")
    assert detached.update is not None
    assert detached.update.operation is UpdateOperation.DELETE


def test_a_deletion_detaches_the_record_with_its_identities() -> None:
    update = map_change(
        change({"email": "a@b.co", "fn": "Ada"}, Operation.DELETE), source=source(), profile=PROFILE
    ).update
    assert update is not None
    assert update.operation is UpdateOperation.DELETE
    assert update.attributes == {}
    assert Identity("crm", "crm:42") in update.identities


CONSENT_PROFILE = ProfileSettings.model_validate(
    {"subscriptions": {"news": {"channel": "email", "source": "crm"}}}
)


@pytest.mark.parametrize(
    ("value", "checked_means", "status"),
    [
        (True, "opt_in", ConsentStatus.OPT_IN),
        ("yes", "opt_in", ConsentStatus.OPT_IN),
        ("0", "opt_in", ConsentStatus.OPT_OUT),
        (True, "opt_out", ConsentStatus.OPT_OUT),
        ("false", "opt_out", ConsentStatus.OPT_IN),
    ],
)
def test_checkboxes_become_consent(value: Any, checked_means: str, status: ConsentStatus) -> None:
    rules = [{"field": "optin", "subscription": "news", "channel": "email"}]
    rules[0]["checked_means"] = checked_means
    result = mapped({"optin": value}, profile=CONSENT_PROFILE, consent=rules)
    assert result.update is not None
    [consent] = result.update.consents
    assert (consent.subscription, consent.channel, consent.status) == (
        "news",
        Channel.EMAIL,
        status,
    )
    assert consent.changed_at == NOW


@pytest.mark.parametrize("value", ["maybe", 2, ["yes"]])
def test_unclear_consent_is_rejected_not_guessed(value: Any) -> None:
    rules = [{"field": "optin", "subscription": "news", "channel": "email"}]
    with pytest.raises(RuleError, match="optin"):
        mapped({"optin": value}, profile=CONSENT_PROFILE, consent=rules)


def test_consent_from_a_source_that_is_not_its_consent_source_is_rejected() -> None:
    other = ProfileSettings.model_validate(
        {"subscriptions": {"news": {"channel": "email", "source": "hubspot"}}}
    )
    rules = [{"field": "optin", "subscription": "news", "channel": "email"}]
    with pytest.raises(RuleError, match="not the consent source"):
        mapped({"optin": True}, profile=other, consent=rules)


def test_a_blank_checkbox_changes_no_consent() -> None:
    rules = [{"field": "optin", "subscription": "news", "channel": "email"}]
    result = mapped({"optin": "", "fn": "Ada"}, profile=CONSENT_PROFILE, consent=rules)
    assert result.update is not None
    assert result.update.consents == ()


field_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(), st.lists(st.text(), max_size=3)
)


@given(st.dictionaries(st.sampled_from(["fn", "co.name", "other"]), field_values))
def test_mapping_is_deterministic_and_never_emits_blanks(fields: dict[str, Any]) -> None:
    first = mapped(fields)
    assert first == mapped(dict(fields))
    assert first.update is not None
    assert all(v not in (None, "", []) for v in first.update.attributes.values())
    assert set(first.update.attributes) <= {"first_name", "company"}
