"""One source record's memory: what each change becomes, given what came before."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.core.contracts import (
    ConsentStatus,
    ContactChange,
    FieldValue,
    Identity,
    Operation,
    UpdateOperation,
)
from services.core.mapping_settings import ProfileSettings
from services.core.sources.generic import GenericWebhookSource
from services.mapper.rules.mapping import CompiledSource
from services.mapper.rules.record import (
    AttributeChange,
    RecordState,
    Step,
    apply_change,
    version_of,
)
from services.mapper.rules.values import is_blank

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, tzinfo=UTC)
PROFILE = ProfileSettings()
EMAIL = Identity("email", "ada@example.com")
CRM_ID = Identity("crm", "crm:42")


def source(**overrides: Any) -> CompiledSource:
    values: dict[str, Any] = {
        "kind": "generic_webhook",
        "auth": {"kind": "none"},
        "mapping": {"fn": "first_name", "co.name": "company"},
        "mapping_version": 3,
    }
    values.update(overrides)
    return CompiledSource.of("crm", GenericWebhookSource.model_validate(values))


def change(
    fields: dict[str, Any],
    *,
    at: float = 0,
    sequence: int = 0,
    operation: Operation = Operation.UPSERT,
) -> ContactChange:
    """A change of record crm/42, modified ``at`` seconds after NOW."""
    return ContactChange(
        source="crm",
        record_id="42",
        operation=operation,
        event_id=f"e{at}.{sequence}",
        source_modified_at=NOW + timedelta(seconds=at),
        received_at=NOW,
        fields=fields,
        sequence=sequence,
    )


def delete(*, at: float, sequence: int = 0) -> ContactChange:
    return change({}, at=at, sequence=sequence, operation=Operation.DELETE)


def run(
    changes: Iterable[ContactChange],
    *,
    state: RecordState | None = None,
    src: CompiledSource | None = None,
    profile: ProfileSettings = PROFILE,
) -> tuple[list[Step], RecordState | None]:
    """Every change applied in turn, as the engine does: a step's state (None: unchanged)
    is what the next change sees."""
    compiled = src or source()
    steps = []
    for each in changes:
        step = apply_change(state, each, source=compiled, profile=profile)
        steps.append(step)
        if step.state is not None:
            state = step.state
    return steps, state


def last(
    changes: Iterable[ContactChange],
    *,
    src: CompiledSource | None = None,
    profile: ProfileSettings = PROFILE,
) -> tuple[Step, RecordState]:
    steps, state = run(changes, src=src, profile=profile)
    assert state is not None
    return steps[-1], state


def drops(step: Step) -> list[tuple[str, str]]:
    return [(d.attribute, d.code) for d in step.drops]


# --- versions ---------------------------------------------------------------------


def test_a_version_is_the_modification_time_in_microseconds_and_the_sequence() -> None:
    at = datetime(1970, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)
    assert version_of(
        ContactChange(
            source="crm",
            record_id="42",
            operation=Operation.UPSERT,
            event_id="e",
            source_modified_at=at,
            received_at=NOW,
            fields={},
            sequence=3,
        )
    ) == (1_500_000, 3)


def test_a_later_time_outranks_a_higher_sequence() -> None:
    assert version_of(change({}, at=1, sequence=0)) > version_of(change({}, at=0, sequence=9))


# --- change detection --------------------------------------------------------------


def test_the_first_change_emits_every_mapped_attribute_with_the_rule_behind_it() -> None:
    fields = {"email": "Ada@Example.com", "fn": "Ada", "co.name": "Acme", "other": 1}
    step, state = last([change(fields)])
    assert step.update is not None
    assert step.update.operation is UpdateOperation.UPSERT
    assert step.update.attributes == {
        "first_name": "Ada",
        "company": "Acme",
        "email": "ada@example.com",
    }
    assert step.update.identities == (EMAIL, CRM_ID)
    assert set(step.changes) == {
        AttributeChange("first_name", None, "Ada", "map fn (keep)"),
        AttributeChange("company", None, "Acme", "map co.name (keep)"),
        AttributeChange("email", None, "ada@example.com", "identity email"),
    }
    assert state.attributes == step.update.attributes
    assert state.identities == (EMAIL, CRM_ID)
    assert state.mapping_version == 3


def test_the_same_change_again_emits_nothing_and_leaves_the_state_as_it_was() -> None:
    first = change({"email": "ada@example.com", "fn": "Ada"})
    _, state = last([first])
    again = apply_change(state, first, source=source(), profile=PROFILE)
    assert again.update is None
    assert again.state is None  # None: the stored state stays as it is
    assert drops(again) == [("email", "stale"), ("fn", "stale")]


def test_a_partial_change_emits_only_the_attribute_it_changes() -> None:
    step, state = last(
        [
            change({"email": "ada@example.com", "fn": "Ada", "co.name": "Acme"}, at=0),
            change({"co.name": "Initech"}, at=1),
        ]
    )
    assert step.update is not None
    assert step.update.attributes == {"company": "Initech"}
    assert step.changes == (AttributeChange("company", "Acme", "Initech", "map co.name (keep)"),)
    # The rest of the record is remembered, so the profile is still found by its email.
    assert step.update.match_key == "email:ada@example.com"
    assert state.attributes == {
        "email": "ada@example.com",
        "first_name": "Ada",
        "company": "Initech",
    }


def test_a_newer_change_with_unchanged_values_emits_nothing_but_advances_versions() -> None:
    steps, state = run([change({"fn": "Ada"}, at=0), change({"fn": "Ada"}, at=1)])
    assert steps[-1].update is None
    assert steps[-1].changes == ()
    assert state is not None
    assert state.attributes == {"first_name": "Ada"}
    assert state.versions["fn"] == version_of(change({}, at=1))


def test_a_boolean_becoming_the_equal_number_is_a_change() -> None:
    step, _ = last([change({"fn": True}, at=0), change({"fn": 1}, at=1)])
    assert step.update is not None
    assert step.update.attributes == {"first_name": 1}


# --- stale versions ----------------------------------------------------------------


def test_an_older_field_is_stale_while_fields_never_seen_are_applied() -> None:
    step, state = last(
        [
            change({"fn": "Ada"}, at=10),
            change({"fn": "Old", "co.name": "Acme"}, at=5),
        ]
    )
    assert step.update is not None
    assert step.update.attributes == {"company": "Acme"}
    assert drops(step) == [("fn", "stale")]
    assert state.fields == {"fn": "Ada", "co.name": "Acme"}
    assert state.attributes == {"first_name": "Ada", "company": "Acme"}


def test_at_the_same_time_a_lower_sequence_is_stale() -> None:
    step, state = last(
        [change({"fn": "Ada"}, at=0, sequence=2), change({"fn": "Old"}, at=0, sequence=1)]
    )
    assert step.update is None
    assert step.state is None
    assert drops(step) == [("fn", "stale")]
    assert state.attributes == {"first_name": "Ada"}


def test_at_the_same_time_a_higher_sequence_wins() -> None:
    step, state = last(
        [change({"fn": "Ada"}, at=0, sequence=1), change({"fn": "Bea"}, at=0, sequence=2)]
    )
    assert step.update is not None
    assert step.update.attributes == {"first_name": "Bea"}
    assert state.attributes == {"first_name": "Bea"}


# --- deletion ----------------------------------------------------------------------


def test_a_deletion_detaches_the_record_by_every_identity_it_had() -> None:
    step, state = last([change({"email": "ada@example.com", "fn": "Ada"}, at=0), delete(at=1)])
    update = step.update
    assert update is not None
    assert update.operation is UpdateOperation.DELETE
    # The deletion carries no email; the record's known one comes along.
    assert set(update.identities) == {EMAIL, CRM_ID}
    assert update.attributes == {}
    assert set(step.changes) == {
        AttributeChange("first_name", "Ada", None, "delete"),
        AttributeChange("email", "ada@example.com", None, "delete"),
    }
    assert state.deleted == version_of(delete(at=1))
    assert (state.fields, state.attributes, state.identities) == ({}, {}, ())


def test_a_deletion_older_than_an_applied_change_is_stale() -> None:
    step, state = last([change({"fn": "Ada"}, at=5), delete(at=1)])
    assert step.update is None
    assert drops(step) == [("*", "stale")]
    assert state.attributes == {"first_name": "Ada"}
    # Remembered all the same: a field older than the deletion stays stale.
    assert step.state is not None
    assert step.state.deleted is not None


def test_an_upsert_older_than_the_deletion_is_stale() -> None:
    step, state = last([change({"fn": "Ada"}, at=0), delete(at=5), change({"co.name": "X"}, at=3)])
    assert step.update is None
    assert drops(step) == [("co.name", "stale")]
    assert state.attributes == {}


def test_an_upsert_newer_than_the_deletion_emits_its_attributes_again() -> None:
    step, state = last([change({"fn": "Ada"}, at=0), delete(at=1), change({"fn": "Ada"}, at=2)])
    assert step.update is not None
    assert step.update.operation is UpdateOperation.UPSERT
    assert step.update.attributes == {"first_name": "Ada"}
    assert state.attributes == {"first_name": "Ada"}
    assert state.identities == (CRM_ID,)


# --- blanks ------------------------------------------------------------------------


@pytest.mark.parametrize("blank", [None, "", "  ", []])
def test_a_blank_leaves_the_emitted_attribute_as_it_is(blank: Any) -> None:
    step, state = last([change({"fn": "Ada"}, at=0), change({"fn": blank}, at=1)])
    assert step.update is None
    assert drops(step) == [("first_name", "blank")]
    assert state.attributes == {"first_name": "Ada"}


@pytest.mark.parametrize("blank", [None, ""])
def test_a_blank_email_never_lets_go_of_the_record_s_email(blank: Any) -> None:
    src = source(mapping={"fn": "first_name", "email": "email"})
    step, state = last(
        [change({"email": "ada@example.com", "fn": "Ada"}, at=0), change({"email": blank}, at=1)],
        src=src,
    )
    assert step.update is None
    assert EMAIL in state.identities


def test_a_changed_email_is_the_only_one_the_record_asserts() -> None:
    src = source(mapping={"fn": "first_name", "email": "email"})
    step, state = last(
        [change({"email": "ada@example.com"}, at=0), change({"email": "ada@work.io"}, at=1)],
        src=src,
    )
    assert step.update is not None
    assert [i for i in step.update.identities if i.kind == "email"] == [
        Identity("email", "ada@work.io")
    ]
    assert step.update.match_key == "email:ada@work.io"
    assert EMAIL not in state.identities


def test_a_change_carries_the_version_of_its_emails() -> None:
    """The writer keeps a record's identities by their own version: a late change of
    another field carries the email of the record's newest email field, and its
    version; a record deleted and back has identities from just after the deletion."""
    src = source(mapping={"fn": "first_name", "email": "email"})
    steps, _ = run(
        [
            change({"email": "ada@example.com", "fn": "Ada"}, at=0),
            change({"email": "ada@work.io"}, at=5),
            change({"fn": "Ada L."}, at=3),
        ],
        src=src,
    )
    late = steps[2].update
    assert late is not None
    assert Identity("email", "ada@work.io") in late.identities
    assert late.identities_version == version_of(change({}, at=5))
    steps, _state = run([change({"fn": "A"}, at=0), delete(at=2), change({"fn": "B"}, at=3)])
    back = steps[2].update
    assert back is not None and back.identities_version is not None
    assert back.identities_version > version_of(delete(at=2))


def test_a_blank_email_of_a_source_that_clears_it_lets_go_of_the_email() -> None:
    src = source(mapping={"fn": "first_name", "email": "email"}, clears=["email"])
    profile = ProfileSettings.model_validate(
        {"attributes": {"email": {"policy": "owner_only", "owner": "crm"}}}
    )
    step, state = last(
        [change({"email": "ada@example.com"}, at=0), change({"email": None}, at=1)],
        src=src,
        profile=profile,
    )
    assert step.update is not None
    assert [i.kind for i in step.update.identities] == ["crm"]
    assert EMAIL not in state.identities


def test_an_owned_attribute_listed_in_clears_is_cleared_once() -> None:
    src = source(clears=["first_name"])
    steps, state = run(
        [change({"fn": "Ada"}, at=0), change({"fn": None}, at=1), change({"fn": ""}, at=2)],
        src=src,
    )
    cleared = steps[1]
    assert cleared.update is not None
    assert cleared.update.cleared == ("first_name",)
    assert cleared.update.attributes == {}
    assert cleared.changes == (AttributeChange("first_name", "Ada", None, "clear (map fn (keep))"),)
    assert steps[2].update is None
    assert state is not None
    assert state.attributes == {}


def test_clears_of_an_attribute_another_source_owns_is_an_ownership_drop() -> None:
    profile = ProfileSettings.model_validate(
        {"attributes": {"first_name": {"policy": "owner_only", "owner": "erp"}}}
    )
    step, _ = last(
        [change({"fn": "Ada"}, at=0), change({"fn": None}, at=1)],
        src=source(clears=["first_name"]),
        profile=profile,
    )
    assert step.update is None
    assert drops(step) == [("first_name", "ownership")]


def test_a_clear_of_an_attribute_never_emitted_is_not_sent() -> None:
    step, _ = last([change({"fn": None, "co.name": "Acme"})], src=source(clears=["first_name"]))
    assert step.update is not None
    assert step.update.cleared == ()
    assert step.update.attributes == {"company": "Acme"}


# --- ownership ---------------------------------------------------------------------


def test_ownership_drops_are_reported_only_for_attributes_this_change_feeds() -> None:
    profile = ProfileSettings.model_validate(
        {"attributes": {"company": {"policy": "owner_only", "owner": "erp"}}}
    )
    steps, state = run(
        [
            change({"fn": "Ada", "co.name": "Acme"}, at=0),
            change({"fn": "Bea"}, at=1),
            change({"co.name": "Initech"}, at=2),
        ],
        profile=profile,
    )
    assert drops(steps[0]) == [("company", "ownership")]
    # The record still holds co.name, but the first change already accounted for it.
    assert drops(steps[1]) == []
    assert drops(steps[2]) == [("company", "ownership")]
    assert steps[2].update is None
    assert state is not None
    assert state.attributes == {"first_name": "Bea"}


# --- consent -----------------------------------------------------------------------

CONSENT_PROFILE = ProfileSettings.model_validate(
    {"subscriptions": {"news": {"channel": "email", "source": "crm"}}}
)
CONSENT_RULES = [{"field": "optin", "subscription": "news", "channel": "email"}]


def test_a_checkbox_emits_its_consent_once_and_again_only_when_it_flips() -> None:
    steps, state = run(
        [
            change({"optin": True, "fn": "Ada"}, at=0),
            change({"optin": "yes"}, at=1),
            change({"fn": "Bea"}, at=2),
            change({"optin": False}, at=3),
        ],
        src=source(consent=CONSENT_RULES),
        profile=CONSENT_PROFILE,
    )
    first, same, other, flipped = steps
    assert first.update is not None
    assert [(c.subscription, c.status) for c in first.update.consents] == [
        ("news", ConsentStatus.OPT_IN)
    ]
    assert AttributeChange("consent:news", None, "OPT_IN", "consent optin (email)") in (
        first.changes
    )
    assert same.update is None
    assert other.update is not None
    assert other.update.consents == ()
    assert flipped.update is not None
    assert [(c.subscription, c.status) for c in flipped.update.consents] == [
        ("news", ConsentStatus.OPT_OUT)
    ]
    assert flipped.changes == (
        AttributeChange("consent:news", "OPT_IN", "OPT_OUT", "consent optin (email)"),
    )
    assert state is not None
    assert state.consents == {"news": "OPT_OUT"}


# --- sync conditions ---------------------------------------------------------------

TYPE_A = {"all": [{"field": "type", "op": "eq", "value": "A"}]}


def test_a_record_that_stops_matching_is_detached_once_when_unmatched_is_delete() -> None:
    src = source(sync_if=TYPE_A, when_unmatched="delete")
    steps, state = run(
        [
            change({"type": "A", "email": "ada@example.com", "fn": "Ada"}, at=0),
            change({"type": "B"}, at=1),
            change({"type": "C"}, at=2),
            change({"type": "A"}, at=3),
        ],
        src=src,
    )
    _, detached, still_unmatched, matching_again = steps
    assert detached.update is not None
    assert detached.update.operation is UpdateOperation.DELETE
    assert set(detached.update.identities) == {EMAIL, CRM_ID}
    assert detached.state is not None
    assert (detached.state.attributes, detached.state.identities) == ({}, ())
    assert still_unmatched.update is None
    # The record's fields were remembered while detached: matching again re-emits them.
    assert matching_again.update is not None
    assert matching_again.update.operation is UpdateOperation.UPSERT
    assert matching_again.update.attributes == {
        "email": "ada@example.com",
        "first_name": "Ada",
    }
    assert state is not None
    assert state.attributes == matching_again.update.attributes


def test_a_record_that_never_matched_is_not_detached() -> None:
    step, _ = last(
        [change({"type": "B", "fn": "Ada"})], src=source(sync_if=TYPE_A, when_unmatched="delete")
    )
    assert step.update is None


def test_by_default_a_record_that_stops_matching_is_left_alone() -> None:
    steps, state = run(
        [
            change({"type": "A", "fn": "Ada"}, at=0),
            change({"type": "B"}, at=1),
            change({"fn": "Bea"}, at=2),
        ],
        src=source(sync_if=TYPE_A),
    )
    _, unmatched, partial = steps
    assert unmatched.update is None
    assert drops(unmatched) == [("*", "unmatched")]
    # A partial change is judged by the whole record, which still does not match.
    assert partial.update is None
    assert drops(partial) == [("*", "unmatched")]
    assert state is not None
    assert state.attributes == {"first_name": "Ada"}
    assert state.fields == {"type": "B", "fn": "Bea"}


# --- stored state ------------------------------------------------------------------


def roundtrip(state: RecordState) -> RecordState:
    """Stored and read back, as the mapper's RocksDB and changelog hold it."""
    return RecordState.decode(state.encode())


def json_era(state: RecordState) -> bytes:
    """The state as an earlier version stored it (JSON)."""
    return json.dumps(state.to_json()).encode()


def test_the_state_survives_a_round_trip() -> None:
    _, state = run(
        [
            change(
                {"email": "ada@example.com", "fn": "Ada", "optin": True, "tags": ["a", "b"]},
                at=0,
                sequence=2,
            ),
            change({"co.name": "Acme", "n": 1.5, "ok": False}, at=1),
        ],
        src=source(
            consent=CONSENT_RULES, mapping={"fn": "first_name", "co.name": "company", "n": "n"}
        ),
        profile=CONSENT_PROFILE,
    )
    assert state is not None
    assert state.consents and state.identities and state.versions
    assert roundtrip(state) == state
    # A state stored as JSON by an earlier version reads the same.
    assert RecordState.decode(json_era(state)) == state


def test_a_deleted_state_survives_a_round_trip() -> None:
    _, state = run([change({"fn": "Ada"}, at=0), delete(at=1, sequence=4)])
    assert state is not None
    assert state.deleted is not None
    assert roundtrip(state) == state
    assert RecordState.decode(json_era(state)) == state


def test_an_empty_state_with_its_defaults_survives_a_round_trip() -> None:
    assert roundtrip(RecordState()) == RecordState()


def test_a_stored_state_in_no_known_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown record state format"):
        RecordState.decode(b"\x07whatever")
    with pytest.raises(ValueError, match="undecodable record state"):
        RecordState.decode(RecordState().encode()[:-1] + b"\xc1")


def test_a_state_in_an_unknown_format_is_refused() -> None:
    data = {**RecordState().to_json(), "v": 99}
    with pytest.raises(ValueError, match="unknown record state format 99"):
        RecordState.from_json(data)


# --- properties --------------------------------------------------------------------

PROPERTY_FIELDS = ("f0", "f1", "f2", "f3")
SOURCES = {
    count: source(mapping={name: f"a{name[1:]}" for name in PROPERTY_FIELDS[:count]})
    for count in (2, 3, 4)
}
VALUES = st.sampled_from(["x", "y", "z", "", None])
TIMES = st.integers(0, 4)
SEQUENCES = st.integers(0, 3)
PROPERTIES = settings(max_examples=200, deadline=None)


def attribute_of(field: str) -> str:
    return f"a{field[1:]}"


@st.composite
def upserts(
    draw: st.DrawFn, count: int, *, at: int | None = None, sequence: int | None = None
) -> ContactChange:
    fields = draw(st.dictionaries(st.sampled_from(PROPERTY_FIELDS[:count]), VALUES, min_size=1))
    return change(
        fields,
        at=draw(TIMES) if at is None else at,
        sequence=draw(SEQUENCES) if sequence is None else sequence,
    )


@st.composite
def any_change(draw: st.DrawFn, count: int) -> ContactChange:
    if draw(st.integers(0, 4)) == 0:
        return delete(at=draw(TIMES), sequence=draw(SEQUENCES))
    result: ContactChange = draw(upserts(count))
    return result


@st.composite
def histories(
    draw: st.DrawFn, *, deletes: bool = True
) -> tuple[CompiledSource, list[ContactChange]]:
    count = draw(st.sampled_from(sorted(SOURCES)))
    changes = any_change(count) if deletes else upserts(count)
    return SOURCES[count], draw(st.lists(changes, max_size=6))


@st.composite
def distinct_versions(draw: st.DrawFn) -> tuple[CompiledSource, list[ContactChange]]:
    """Upserts each with a version of its own."""
    count = draw(st.sampled_from(sorted(SOURCES)))
    versions = draw(st.lists(st.tuples(TIMES, SEQUENCES), unique=True, min_size=1, max_size=6))
    changes = [draw(upserts(count, at=t, sequence=s)) for t, s in versions]
    return SOURCES[count], changes


@PROPERTIES
@given(histories())
def test_applying_a_history_is_deterministic(
    history: tuple[CompiledSource, list[ContactChange]],
) -> None:
    src, changes = history
    assert run(changes, src=src) == run(list(changes), src=src)


@PROPERTIES
@given(histories(), st.data())
def test_a_change_applied_again_right_after_itself_changes_nothing(
    history: tuple[CompiledSource, list[ContactChange]], data: st.DataObject
) -> None:
    src, changes = history
    count = len(src.rules)
    repeated = data.draw(any_change(count))
    _, state = run([*changes, repeated], src=src)
    again = apply_change(state, repeated, source=src, profile=PROFILE)
    assert again.update is None
    assert again.state is None
    assert again.changes == ()


def newest_values(changes: Sequence[ContactChange]) -> dict[str, list[FieldValue]]:
    """Per field, its values from the newest version to the oldest."""
    by_version = sorted(changes, key=version_of, reverse=True)
    values: dict[str, list[FieldValue]] = {}
    for each in by_version:
        for name, value in each.fields.items():
            values.setdefault(name, []).append(value)
    return values


@PROPERTIES
@given(distinct_versions())
def test_in_version_order_each_attribute_holds_its_newest_non_blank_value(
    history: tuple[CompiledSource, list[ContactChange]],
) -> None:
    src, changes = history
    _, state = run(sorted(changes, key=version_of), src=src)
    assert state is not None
    expected = {
        attribute_of(name): next(v for v in values if not is_blank(v))
        for name, values in newest_values(changes).items()
        if any(not is_blank(v) for v in values)
    }
    assert state.attributes == expected


@PROPERTIES
@given(distinct_versions(), st.data())
def test_in_any_order_a_stale_value_never_replaces_a_newer_one(
    history: tuple[CompiledSource, list[ContactChange]], data: st.DataObject
) -> None:
    # The order of arrival does not matter: any order ends where version order ends,
    # blanks (which never clear) included.
    src, changes = history
    arrival = data.draw(st.permutations(changes))
    _, in_order = run(sorted(changes, key=version_of), src=src)
    _, state = run(arrival, src=src)
    assert state is not None and in_order is not None
    assert state.attributes == in_order.attributes


@PROPERTIES
@given(histories(deletes=False))
def test_without_clears_a_blank_never_takes_an_attribute_away(
    history: tuple[CompiledSource, list[ContactChange]],
) -> None:
    src, changes = history
    state: RecordState | None = None
    held: set[str] = set()
    for each in changes:
        step = apply_change(state, each, source=src, profile=PROFILE)
        state = step.state or state
        if step.update is not None:
            assert step.update.cleared == ()
        if state is not None:
            assert held <= set(state.attributes)
            assert not any(is_blank(v) for v in state.attributes.values())
            held = set(state.attributes)


@PROPERTIES
@given(histories(), st.data())
def test_a_stored_state_decides_the_next_change_as_the_live_one_does(
    history: tuple[CompiledSource, list[ContactChange]], data: st.DataObject
) -> None:
    src, changes = history
    _, state = run(changes, src=src)
    if state is None:
        return
    stored = roundtrip(state)
    assert stored == state
    following = data.draw(any_change(len(src.rules)))
    assert apply_change(stored, following, source=src, profile=PROFILE) == apply_change(
        state, following, source=src, profile=PROFILE
    )


# A source with every kind of rule a change's fields can feed: a field mapped to two
# attributes, a computed attribute made from two fields, a default, a clear, the email
# identity and a consent checkbox.
RICH_FIELDS = ("email", "fn", "ln", "full", "optin", "code")
RICH_SOURCE = source(
    mapping={
        "fn": "first_name",
        "ln": "last_name",
        "full": [
            {"attribute": "given_name", "split": "first"},
            {"attribute": "family_name", "split": "rest"},
        ],
        "code": {"attribute": "status", "values": {"1": "lead", "2": "customer"}},
    },
    computed={"greeting": {"template": "Dear {fn} {ln}"}},
    defaults={"country": "GB", "status": "prospect"},
    clears=["last_name"],
    consent=CONSENT_RULES,
)
RICH_VALUES: dict[str, st.SearchStrategy[FieldValue]] = {
    "email": st.sampled_from(["ada@example.com", "bea@example.com", "", None]),
    "fn": VALUES,
    "ln": VALUES,
    "full": st.sampled_from(["Ada King", "Bea", "", None]),
    "optin": st.sampled_from([True, False, "yes", None]),
    "code": st.sampled_from(["1", "2", None]),
}


@st.composite
def rich_changes(draw: st.DrawFn) -> ContactChange:
    if draw(st.integers(0, 6)) == 0:
        return delete(at=draw(TIMES), sequence=draw(SEQUENCES))
    names = draw(st.sets(st.sampled_from(RICH_FIELDS), min_size=1))
    return change(
        {name: draw(RICH_VALUES[name]) for name in sorted(names)},
        at=draw(TIMES),
        sequence=draw(SEQUENCES),
    )


@PROPERTIES
@given(st.lists(rich_changes(), max_size=8))
def test_mapping_only_what_a_change_touches_decides_as_mapping_the_whole_record(
    changes: list[ContactChange],
) -> None:
    incremental: RecordState | None = None
    whole: RecordState | None = None
    for each in changes:
        step = apply_change(incremental, each, source=RICH_SOURCE, profile=CONSENT_PROFILE)
        expected = apply_change(
            whole, each, source=RICH_SOURCE, profile=CONSENT_PROFILE, incremental=False
        )
        assert step == expected
        incremental = step.state or incremental
        whole = expected.state or whole


# --- mapping versions ----------------------------------------------------------------


def test_a_new_mapping_version_sends_every_attribute_once_under_it() -> None:
    _, state = run([change({"fn": "Ada", "co.name": "Acme"}, at=1)])
    remapped = source(mapping_version=4)
    steps, after = run([change({"fn": "Ada"}, at=2)], state=state, src=remapped)
    assert steps[0].update is not None
    assert steps[0].update.mapping_version == 4
    assert dict(steps[0].update.attributes) == {"first_name": "Ada", "company": "Acme"}
    steps, _ = run([change({"fn": "Ada"}, at=3)], state=after, src=remapped)
    assert steps[0].update is None


def test_detaching_by_sync_if_carries_every_identity_the_record_had() -> None:
    src = source(sync_if=TYPE_A, when_unmatched="delete")
    _, state = run([change({"fn": "Ada", "type": "A", "email": "old@example.com"}, at=1)], src=src)
    steps, _ = run([change({"type": "B", "email": "new@example.com"}, at=2)], state=state, src=src)
    update = steps[0].update
    assert update is not None and update.operation.value == "DELETE"
    assert Identity("email", "old@example.com") in update.identities
