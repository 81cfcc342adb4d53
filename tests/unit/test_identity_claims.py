"""The identity claims and limits, as the ProfileBook asks them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.core.contracts import Identity
from services.core.mapping_settings import IdentitySettings
from services.writer.identity_claims import (
    Claims,
    IdentityRules,
    RecordClaim,
    claim_key,
    claimed,
    letting_go,
)

pytestmark = pytest.mark.unit

A, B, C = (Identity("email", f"{n}@x.io") for n in "abc")
CRM1, CRM2 = Identity("crm", "hubspot:1"), Identity("crm", "hubspot:2")
R1, R2 = ("hubspot", "1"), ("hubspot", "2")


def claim(version: int, *identities: Identity) -> RecordClaim:
    return RecordClaim((version, 0), claim_key(identities))


def test_a_claim_key_is_the_same_for_the_same_set_in_any_order() -> None:
    assert claim_key([A, CRM1]) == claim_key([CRM1, A])
    assert claimed(claim(1, CRM1, A)) == {A, CRM1}
    assert claim_key([A]) != claim_key([B])


def test_an_identity_is_orphaned_only_when_its_last_asserter_lets_go() -> None:
    claims = Claims.loaded({R1: claim(1, A, CRM1), R2: claim(1, A, CRM2)}, {A: {R1, R2}})
    assert claims.claim(R1, claim(2, B, CRM1), frozenset({B, CRM1})) == (True, True, [])
    assert claims.claim(R2, claim(2, CRM2), frozenset({CRM2})) == (True, True, [A])
    # A record's own id is asserted by nobody else: deleting the record orphans it.
    assert claims.claim(R1, claim(3), frozenset()) == (True, True, [CRM1, B])


def test_the_same_set_again_changes_nothing_not_even_the_version() -> None:
    """The set has a version of its own, like a field: the change that last set it."""
    claims = Claims.loaded({R1: claim(1, A, CRM1)}, {})
    assert claims.claim(R1, claim(2, A, CRM1), frozenset({A, CRM1})) == (False, False, [])
    assert claims.of(R1) == claim(1, A, CRM1)
    # The same set spelt another way (a migrated store): kept anew, nothing let go.
    respelt = RecordClaim((3, 0), '[["email", "a@x.io"], ["crm", "hubspot:1"]]')
    assert claims.claim(R1, respelt, frozenset({A, CRM1})) == (True, False, [])


def test_letting_go_names_what_a_batch_s_records_may_stop_asserting() -> None:
    held = {R1: claim(1, A, CRM1)}
    same = [(frozenset({A, CRM1}), claim_key([A, CRM1]))]
    assert letting_go(held, {R1: same}) == set()
    moved = [(frozenset({B, CRM1}), claim_key([B, CRM1])), *same]
    assert letting_go(held, {R1: moved}) == {A, B}
    assert letting_go({}, {R2: [(frozenset({C, CRM2}), claim_key([C, CRM2]))]}) == set()


def test_a_limit_is_breached_only_past_what_the_profiles_already_held() -> None:
    rules = IdentityRules(IdentitySettings.model_validate({"limits": {"email": {"max": 2}}}))
    assert rules.breaches([{A, B}], {A, B}) == []
    assert [b.describe() for b in rules.breaches([{A, B}], {A, B, C})] == [
        "3 email identities (limit 2)"
    ]
    # Already past it (the limit was lowered): it keeps what it has, takes no more.
    assert rules.breaches([{A, B, C}], {A, B, C}) == []
    assert rules.breaches([{A}, {B, C}], {A, B, C}) != []


def test_max_per_source_counts_the_crm_ids_of_one_source() -> None:
    rules = IdentityRules(
        IdentitySettings.model_validate({"limits": {"crm": {"max_per_source": 1}}})
    )
    other = Identity("crm", "sfdc:9")
    assert rules.breaches([{CRM1}], {CRM1, other}) == []
    assert [b.scope for b in rules.breaches([{CRM1}], {CRM1, CRM2})] == ["crm of hubspot"]


def test_keep_matching_keeps_emails_but_never_crm_ids() -> None:
    keep = IdentityRules(IdentitySettings(retired="keep_matching"))
    assert not keep.retires(A)
    assert keep.retires(CRM1)
    assert IdentityRules().retires(A)


def test_max_per_source_is_for_crm_identities_only() -> None:
    with pytest.raises(ValidationError, match="crm identities only"):
        IdentitySettings.model_validate({"limits": {"email": {"max_per_source": 1}}})


def test_the_defaults_are_five_emails_and_twenty_five_records() -> None:
    limits = IdentitySettings().limits
    assert (limits["email"].max, limits["email"].at_limit) == (5, "review")
    assert limits["crm"].max == 25
