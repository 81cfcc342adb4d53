"""Plain field mapping, identities and the blank-never-clears rule."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.contracts import ContactChange, Identity, Operation, UpdateOperation
from services.core.sources import GenericWebhookSource, NoAuth
from services.mapper.rules.identity import normalise_email
from services.mapper.rules.mapping import map_change

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def source(**overrides: Any) -> GenericWebhookSource:
    values: dict[str, Any] = {
        "kind": "generic_webhook",
        "auth": NoAuth(kind="none"),
        "mapping": {"email": "email", "fn": "first_name", "co.name": "company"},
        "mapping_version": 3,
    }
    values.update(overrides)
    return GenericWebhookSource(**values)


def change(fields: dict[str, Any], operation: Operation = Operation.UPSERT) -> ContactChange:
    return ContactChange(
        source="demo",
        record_id="42",
        operation=operation,
        event_id="e",
        source_modified_at=NOW,
        received_at=NOW,
        fields=fields,
    )


def test_mapped_fields_become_attributes_and_others_are_ignored() -> None:
    update = map_change(
        change({"email": " Ada@Example.COM ", "fn": "Ada", "co.name": "Acme", "secret": "x"}),
        source(),
    )
    assert update.attributes == {
        "email": " Ada@Example.COM ",
        "first_name": "Ada",
        "company": "Acme",
    }
    assert update.match_key == "email:ada@example.com"
    assert update.identities == (Identity("email", "ada@example.com"), Identity("crm", "demo:42"))
    assert update.mapping_version == 3
    assert update.operation is UpdateOperation.UPSERT


@pytest.mark.parametrize("blank", [None, "", []])
def test_blank_values_never_become_clears(blank: Any) -> None:
    update = map_change(change({"email": "a@b.co", "fn": blank}), source())
    assert "first_name" not in update.attributes
    assert update.cleared == ()


def test_without_email_the_crm_id_is_the_match_key() -> None:
    update = map_change(change({"fn": "Ada"}), source())
    assert update.match_key == "crm:demo:42"
    assert update.identities == (Identity("crm", "demo:42"),)


def test_crm_id_match_key_when_configured() -> None:
    update = map_change(change({"email": "a@b.co"}), source(match_key="crm_id"))
    assert update.match_key == "crm:demo:42"


def test_delete_carries_identities_but_no_attributes() -> None:
    update = map_change(change({"email": "a@b.co", "fn": "Ada"}, Operation.DELETE), source())
    assert update.operation is UpdateOperation.DELETE
    assert update.attributes == {}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ada@Example.com", "ada@example.com"),
        ("  x@y.org ", "x@y.org"),
        ("no-at-sign", None),
        ("a@localhost", None),
        ("a b@c.de", None),
        (42, None),
        (None, None),
    ],
)
def test_email_normalisation(raw: Any, expected: str | None) -> None:
    assert normalise_email(raw) == expected


field_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(), st.lists(st.text(), max_size=3)
)


@given(st.dictionaries(st.sampled_from(["email", "fn", "co.name", "other"]), field_values))
def test_mapping_is_deterministic_and_never_emits_blanks(fields: dict[str, Any]) -> None:
    first = map_change(change(fields), source())
    assert first == map_change(change(dict(fields)), source())
    assert all(v not in (None, "", []) for v in first.attributes.values())
    assert set(first.attributes) <= {"email", "first_name", "company"}
