"""Identities asserted by source records, retired ones, and the limits (every store)."""

from __future__ import annotations

from typing import Any

from services.core.contracts import Identity, UpdateOperation
from services.core.mapping_settings import ProfileSettings
from services.core.versions import to_micros
from tests.stores.changes import apply, at, erase, profile, snapshot, split, update, values
from tests.stores.conftest import StoreFactory


def settings(**values: Any) -> ProfileSettings:
    return ProfileSettings.model_validate(values)


def emails(found: Any) -> set[str]:
    assert found is not None
    return {i.value for i in found.identities if i.kind == "email"}


def retired(found: Any) -> set[str]:
    assert found is not None
    return {r.identity.value for r in found.retired}


def test_a_changed_email_stops_matching_and_a_stranger_with_it_gets_their_own_profile(
    open_store: StoreFactory,
) -> None:
    """The four steps of the README's identity section, in the store."""
    store = open_store(settings())
    apply(store, [update("demo", "m1", t=1, email="old@x.io", attributes={"first_name": "Mo"})])
    apply(store, [update("demo", "m1", t=2, email="new@x.io")])
    assert profile(store, "email", "old@x.io") is None
    mo = profile(store, "email", "new@x.io")
    assert emails(mo) == {"new@x.io"}
    assert retired(mo) == {"old@x.io"}
    apply(
        store, [update("other", "o1", t=3, email="old@x.io", attributes={"first_name": "Someone"})]
    )
    someone = profile(store, "email", "old@x.io")
    assert someone is not None and mo is not None
    assert someone.profile_id != mo.profile_id
    assert values(someone) == {"first_name": "Someone"}
    assert values(profile(store, "email", "new@x.io")) == {"first_name": "Mo"}


def test_keep_matching_lets_a_retired_email_find_its_profile(open_store: StoreFactory) -> None:
    store = open_store(settings(identities={"retired": "keep_matching"}))
    apply(store, [update("demo", "m1", t=1, email="old@x.io", attributes={"first_name": "Mo"})])
    apply(store, [update("demo", "m1", t=2, email="new@x.io")])
    assert emails(profile(store, "email", "old@x.io")) == {"old@x.io", "new@x.io"}
    apply(
        store, [update("other", "o1", t=3, email="old@x.io", attributes={"first_name": "Someone"})]
    )
    assert values(profile(store, "email", "new@x.io")) == {"first_name": "Someone"}
    # A CRM id is never kept: the deleted record's id finds nothing.
    apply(store, [update("other", "o1", t=4, operation=UpdateOperation.DELETE)])
    assert profile(store, "crm", "other:o1") is None
    assert profile(store, "email", "old@x.io") is not None


def test_an_email_another_record_still_asserts_keeps_matching(open_store: StoreFactory) -> None:
    store = open_store(settings())
    apply(
        store,
        [
            update("hubspot", "1", t=1, email="ada@x.io"),
            update("sfdc", "A", t=1, email="ada@x.io"),
        ],
    )
    apply(store, [update("hubspot", "1", t=2, email="ada@work.io")])
    found = profile(store, "email", "ada@x.io")
    assert emails(found) == {"ada@x.io", "ada@work.io"}
    assert retired(found) == set()
    apply(store, [update("sfdc", "A", t=3, email="ada@work.io")])
    assert profile(store, "email", "ada@x.io") is None
    assert retired(profile(store, "email", "ada@work.io")) == {"ada@x.io"}


def test_a_late_or_replayed_change_never_asserts_an_email_again(open_store: StoreFactory) -> None:
    store = open_store(settings())
    first = update("demo", "m1", t=1, email="old@x.io", attributes={"city": "Oslo"})
    apply(store, [first, update("demo", "m1", t=3, email="new@x.io")])
    before = snapshot(store)
    apply(store, [first], now=5)
    assert snapshot(store) == before
    # A late change of another field still writes its value to the record's profile.
    apply(store, [update("demo", "m1", t=2, email="old@x.io", attributes={"score": 4})], now=6)
    assert profile(store, "email", "old@x.io") is None
    assert values(profile(store, "email", "new@x.io")) == {"city": "Oslo", "score": 4}


def test_a_deleted_record_lets_go_of_its_email_and_a_late_change_of_it_is_dropped(
    open_store: StoreFactory,
) -> None:
    store = open_store(settings())
    created = update("sfdc", "1", t=1, email="a@x.io", attributes={"n": 1})
    apply(store, [created, update("sfdc", "2", t=1, email="b@x.io")])
    apply(store, [update("sfdc", "1", t=2, email="a@x.io", operation=UpdateOperation.DELETE)])
    assert profile(store, "crm", "sfdc:1") is None
    assert profile(store, "email", "a@x.io") is None
    report = apply(store, [update("sfdc", "1", t=1.5, email="a@x.io", attributes={"n": 2})])
    if store.keeps_offsets:
        assert report.dropped_updates == [(0, "stale")]
    assert profile(store, "email", "a@x.io") is None
    apply(store, [update("sfdc", "1", t=4, email="a@x.io")])
    assert profile(store, "crm", "sfdc:1") is not None
    assert emails(profile(store, "crm", "sfdc:1")) == {"a@x.io"}


def test_asserting_a_retired_email_again_makes_it_match_again(open_store: StoreFactory) -> None:
    store = open_store(settings())
    apply(store, [update("demo", "m1", t=1, email="old@x.io")])
    apply(store, [update("demo", "m1", t=2, email="new@x.io")])
    apply(store, [update("demo", "m1", t=3, email="old@x.io")])
    found = profile(store, "email", "old@x.io")
    assert emails(found) == {"old@x.io"}
    assert retired(found) == {"new@x.io"}


def test_erasing_a_retired_email_erases_the_profile_that_kept_it(open_store: StoreFactory) -> None:
    store = open_store(settings())
    apply(store, [update("demo", "m1", t=1, email="old@x.io", attributes={"first_name": "Mo"})])
    apply(store, [update("demo", "m1", t=2, email="new@x.io")])
    apply(store, [erase("old@x.io", t=3)])
    assert profile(store, "email", "new@x.io") is None
    assert snapshot(store) == []
    # Tombstoned, the retired one too: a late change naming it is dropped.
    apply(store, [update("demo", "m1", t=2.5, email="old@x.io")])
    assert snapshot(store) == []


def test_a_record_past_the_email_limit_goes_to_review(open_store: StoreFactory) -> None:
    store = open_store(settings(identities={"limits": {"email": {"max": 2}}}))
    change = update("demo", "m1", t=1, email="a@x.io")
    many = change._replace(
        identities=(*change.identities, Identity("email", "b@x.io"), Identity("email", "c@x.io"))
    )
    report = apply(store, [many])
    assert len(report.rejections) == 1
    assert "3 email identities (limit 2)" in report.rejections[0].reason
    assert snapshot(store) == []


def test_keep_oldest_leaves_the_extra_emails_out(open_store: StoreFactory) -> None:
    store = open_store(
        settings(identities={"limits": {"email": {"max": 2, "at_limit": "keep_oldest"}}})
    )
    apply(store, [update("demo", "m1", t=1, email="a@x.io")])
    change = update("demo", "m1", t=2, email="a@x.io", attributes={"n": 1})
    more = change._replace(
        identities=(*change.identities, Identity("email", "b@x.io"), Identity("email", "c@x.io"))
    )
    report = apply(store, [more])
    assert report.rejections == []
    found = profile(store, "email", "a@x.io")
    assert emails(found) == {"a@x.io", "b@x.io"}
    assert values(found) == {"n": 1}
    if store.keeps_offsets:
        assert report.drops == [
            (0, "identity:email", "limit reached: the profile keeps its oldest")
        ]


def test_a_merge_past_a_limit_goes_to_review_naming_both_profiles(
    open_store: StoreFactory,
) -> None:
    store = open_store(settings(identities={"limits": {"crm": {"max_per_source": 1}}}))
    apply(
        store,
        [
            update("hubspot", "1", t=1, email="info@acme.io"),
            update("hubspot", "2", t=1, email="sales@acme.io"),
        ],
    )
    first = profile(store, "crm", "hubspot:1")
    second = profile(store, "crm", "hubspot:2")
    assert first is not None and second is not None
    joining = update("hubspot", "2", t=2, email="sales@acme.io")
    joining = joining._replace(identities=(*joining.identities, Identity("email", "info@acme.io")))
    report = apply(store, [joining])
    assert len(report.rejections) == 1
    reason = report.rejections[0].reason
    assert "review: merging profiles" in reason
    assert str(first.profile_id) in reason and str(second.profile_id) in reason
    assert "2 crm of hubspot identities (limit 1)" in reason
    assert len(snapshot(store)) == 2
    # Another source's record with that email joins: one record per source.
    apply(store, [update("sfdc", "9", t=3, email="info@acme.io")])
    assert emails(profile(store, "crm", "sfdc:9")) == {"info@acme.io"}
    assert profile(store, "crm", "sfdc:9") == profile(store, "crm", "hubspot:1")


def test_no_identity_ever_matches_two_profiles(open_store: StoreFactory) -> None:
    store = open_store(settings())
    apply(store, [update("a", "1", t=1, email="x@x.io"), update("b", "1", t=1, email="y@x.io")])
    apply(store, [update("a", "1", t=2, email="y@x.io")])
    owners = {}
    for found in snapshot(store):
        for identity in found.identities:
            assert identity not in owners
            owners[identity] = found.profile_id
    assert owners[Identity("crm", "a:1")] == owners[Identity("crm", "b:1")]


def _two_then_merged(store: Any) -> tuple[int, int]:
    """Mo (hubspot:1) and Sam (sfdc:9), then Sam's record takes up Mo's email too."""
    apply(
        store,
        [
            update("hubspot", "1", t=1, email="mo@x.io", attributes={"name": "Mo", "city": "Oslo"}),
            update("sfdc", "9", t=1, email="sam@x.io", attributes={"name": "Sam", "score": 3}),
        ],
    )
    mo, sam = profile(store, "email", "mo@x.io"), profile(store, "email", "sam@x.io")
    assert mo is not None and sam is not None
    joining = update("sfdc", "9", t=2, email="mo@x.io", attributes={"name": "Samuel"})
    joining = joining._replace(identities=(*joining.identities, Identity("email", "sam@x.io")))
    report = apply(store, [joining])
    assert [(m.merged_id, m.into_id) for _i, m in report.merges] == [
        (sam.profile_id, mo.profile_id)
    ]
    assert values(profile(store, "email", "sam@x.io")) == {
        "name": "Samuel",
        "city": "Oslo",
        "score": 3,
    }
    return mo.profile_id, sam.profile_id


def test_a_split_gives_both_profiles_back_by_provenance(open_store: StoreFactory) -> None:
    store = open_store(settings())
    mo_id, sam_id = _two_then_merged(store)
    # After the merge, Mo's record writes again: it stays Mo's.
    apply(store, [update("hubspot", "1", t=3, email="mo@x.io", attributes={"city": "Bergen"})])
    report = apply(store, [split(sam_id, t=4)])
    assert report.rejections == []
    mo, sam = profile(store, "crm", "hubspot:1"), profile(store, "crm", "sfdc:9")
    assert mo is not None and sam is not None
    assert (mo.profile_id, sam.profile_id) == (mo_id, sam_id)
    assert values(mo) == {"name": "Mo", "city": "Bergen"}
    assert values(sam) == {"name": "Samuel", "score": 3}
    # mo@x.io is asserted by records of both: it stays where it was before the merge.
    assert emails(mo) == {"mo@x.io"}
    assert emails(sam) == {"sam@x.io"}
    assert profile(store, "email", "sam@x.io") == sam


def test_a_split_keeps_the_two_apart_and_is_done_once(open_store: StoreFactory) -> None:
    store = open_store(settings())
    mo_id, sam_id = _two_then_merged(store)
    apply(store, [split(sam_id, t=3)])
    # Sam's record says the same again: it stays Sam's, and Mo keeps his email.
    again = update("sfdc", "9", t=4, email="mo@x.io", attributes={"name": "Sam again"})
    again = again._replace(identities=(*again.identities, Identity("email", "sam@x.io")))
    report = apply(store, [again])
    assert report.merges == []
    sam = profile(store, "crm", "sfdc:9")
    assert sam is not None and sam.profile_id == sam_id
    assert values(sam)["name"] == "Sam again"
    assert values(profile(store, "crm", "hubspot:1"))["name"] == "Mo"
    assert emails(profile(store, "email", "mo@x.io")) == {"mo@x.io"}
    twice = apply(store, [split(sam_id, t=5), split(123456, t=5)])
    assert [r.index for r in twice.rejections] == [0, 1]
    assert f"profile {sam_id} is not merged" in twice.rejections[0].reason
    assert "no merge of profile 123456" in twice.rejections[1].reason
    assert mo_id != sam_id


def test_a_late_email_change_applies_and_a_replay_never_undoes_it(open_store: StoreFactory) -> None:
    """A record's identities are versioned like its email field: a first name changed at
    t6 arrives before the email changed at t5; the email change still applies, and the
    t6 change replayed (it carried the old email) does not bring the old one back."""
    store = open_store(settings())
    first = update("demo", "m1", t=1, email="old@x.io")
    # As the mapper sends it: the email it carries is the one set at t1.
    renamed = update("demo", "m1", t=6, email="old@x.io", attributes={"name": "Mo"})
    renamed = renamed._replace(identities_version=(to_micros(at(1)), 0))
    moved = update("demo", "m1", t=5, email="new@x.io")
    apply(store, [first])
    apply(store, [renamed])
    apply(store, [moved])
    assert profile(store, "email", "old@x.io") is None
    assert values(profile(store, "email", "new@x.io")) == {"name": "Mo"}
    apply(store, [renamed], now=9)
    assert profile(store, "email", "old@x.io") is None
    assert emails(profile(store, "crm", "demo:m1")) == {"new@x.io"}
