"""What every profile store does, whatever it is: one suite, run against each store."""

from __future__ import annotations

import math
from typing import Any

from services.core.contracts import Identity, UpdateOperation
from services.core.mapping_settings import ProfileSettings
from services.writer.stores.http import HttpProfileStore
from tests.stores.changes import apply, erase, profile, snapshot, update, values
from tests.stores.conftest import StoreFactory


def settings(**values: Any) -> ProfileSettings:
    return ProfileSettings.model_validate(values)


CONSENT = settings(subscriptions={"newsletter": {"channel": "email", "source": "hubspot"}})


def story() -> list[Any]:
    return [
        update("hubspot", "1", t=1, email="ada@example.com", attributes={"first_name": "Ada"}),
        update("sfdc", "A1", t=2, attributes={"company": "Analytical"}),
        update("sfdc", "A1", t=3, email="ada@example.com", attributes={"city": "London"}),
        update("hubspot", "2", t=4, email="bob@example.com", attributes={"first_name": "Bob"}),
        update("hubspot", "1", t=5, email="ada@example.com", cleared=["first_name"]),
        update("hubspot", "2", t=6, email="bob@example.com", operation=UpdateOperation.DELETE),
        erase("bob@example.com", t=7),
    ]


def test_replaying_the_whole_topic_twice_changes_nothing(open_store: StoreFactory) -> None:
    store = open_store(settings())
    changes = story()
    apply(store, changes)
    first = snapshot(store)
    assert first
    apply(store, changes, now=10)
    apply(store, changes[:3], now=20)
    apply(store, changes[3:], now=30)
    for change in changes:
        apply(store, [change], now=40)
    assert snapshot(store) == first


def test_offsets_are_stored_with_the_data(open_store: StoreFactory) -> None:
    store = open_store(settings())
    store.apply_batch(
        updates=[update("hubspot", "1", t=1)],
        next_offsets={("updates", 0): 17, ("updates", 3): 4},
        written_at=update("x", "y", t=0).received_at,
        before_commit=lambda _report: None,
    )
    expected = {0: 17, 3: 4} if store.keeps_offsets else {}
    assert store.stored_offsets("updates") == expected
    assert open_store(settings()).stored_offsets("updates") == expected


def test_a_crm_id_first_and_the_email_later_make_one_profile(open_store: StoreFactory) -> None:
    store = open_store(settings())
    apply(store, [update("sfdc", "A1", t=1, attributes={"company": "Analytical"})])
    apply(store, [update("sfdc", "A1", t=2, email="ada@example.com", attributes={"city": "X"})])
    by_email = profile(store, "email", "ada@example.com")
    by_crm = profile(store, "crm", "sfdc:A1")
    assert by_email is not None and by_crm is not None
    assert by_email.profile_id == by_crm.profile_id
    assert values(by_email) == {"company": "Analytical", "city": "X"}
    assert len(snapshot(store)) == 1


def test_two_systems_writing_the_same_person_share_one_profile(open_store: StoreFactory) -> None:
    store = open_store(settings())
    apply(store, [update("hubspot", "1", t=1, email="ada@example.com", attributes={"a": 1})])
    apply(store, [update("sfdc", "A1", t=2, email="ada@example.com", attributes={"b": 2})])
    found = profile(store, "crm", "hubspot:1")
    assert found is not None
    assert {i.value for i in found.identities} == {"ada@example.com", "hubspot:1", "sfdc:A1"}
    assert values(found) == {"a": 1, "b": 2}
    assert found.attributes["b"].source == "sfdc"
    assert len(snapshot(store)) == 1


def conflicting_pair() -> list[Any]:
    """Two profiles, then one change joining them (its CRM id on one, email on the other)."""
    return [
        update("hubspot", "1", t=1, email="ada@example.com", attributes={"first_name": "Ada"}),
        update("sfdc", "A1", t=2, attributes={"company": "Analytical", "first_name": "A."}),
    ]


def test_a_change_joining_two_profiles_merges_them_by_default(open_store: StoreFactory) -> None:
    store = open_store(settings())
    apply(store, conflicting_pair())
    lead = profile(store, "email", "ada@example.com")
    other = profile(store, "crm", "sfdc:A1")
    assert lead is not None and other is not None and lead.profile_id != other.profile_id
    joining = update("sfdc", "A1", t=3, email="ada@example.com", attributes={"city": "London"})
    report = apply(store, [joining])
    merged = profile(store, "crm", "sfdc:A1")
    assert merged is not None and merged.profile_id == lead.profile_id
    assert [(m.merged_id, m.into_id) for _i, m in report.merges] == [
        (other.profile_id, lead.profile_id)
    ]
    # The newer first_name (sfdc at t=2) wins the merge under last-writer-wins.
    assert values(merged) == {"first_name": "A.", "company": "Analytical", "city": "London"}
    assert len(snapshot(store)) == 1
    again = apply(store, [joining], now=5)
    if isinstance(store, HttpProfileStore):
        # The CDP answers the change from its idempotency ledger, with the first answer:
        # the merge is reported again (the same event; audit readers deduplicate it).
        assert again.merges == report.merges
    else:
        assert again.merges == []


def test_a_merge_late_in_a_batch_after_a_part_of_it_was_written(
    open_store: StoreFactory,
) -> None:
    # The PostgreSQL store under test writes a batch in parts of one update (see
    # conftest): the first two updates are written before the third finds that it
    # must merge two profiles loaded in part, and the batch starts again on whole ones.
    store = open_store(settings())
    apply(store, conflicting_pair())
    lead = profile(store, "email", "ada@example.com")
    other = profile(store, "crm", "sfdc:A1")
    assert lead is not None and other is not None
    report = apply(
        store,
        [
            update("hubspot", "1", t=3, email="ada@example.com", attributes={"city": "Paris"}),
            update("hubspot", "2", t=3, email="bob@example.com", attributes={"city": "Oslo"}),
            update("sfdc", "A1", t=4, email="ada@example.com", attributes={"country": "UK"}),
        ],
    )
    assert [(m.merged_id, m.into_id) for _i, m in report.merges] == [
        (other.profile_id, lead.profile_id)
    ]
    merged = profile(store, "crm", "sfdc:A1")
    assert merged is not None and merged.profile_id == lead.profile_id
    assert values(merged) == {
        "first_name": "A.",
        "company": "Analytical",
        "city": "Paris",
        "country": "UK",
    }
    assert values(profile(store, "email", "bob@example.com")) == {"city": "Oslo"}
    assert len(snapshot(store)) == 2


def test_a_profile_keeps_its_creation_time_and_shows_its_last_write(
    open_store: StoreFactory,
) -> None:
    # Times as the store tells them (a CDP keeps its own clock): compared, not given.
    store = open_store(settings())
    ada = "ada@example.com"
    apply(store, [update("sfdc", "A1", t=1, attributes={"company": "Analytical"})], now=0)
    older = profile(store, "crm", "sfdc:A1")
    apply(store, [update("hubspot", "1", t=1, email=ada, attributes={"city": "Paris"})], now=10)
    created = profile(store, "email", ada)
    apply(store, [update("hubspot", "1", t=2, email=ada, attributes={"city": "London"})], now=20)
    changed = profile(store, "email", ada)
    assert older is not None and created is not None and changed is not None
    assert older.created_at < created.created_at
    assert changed.created_at == created.created_at
    assert changed.updated_at > created.updated_at
    # Nothing new: nothing written, the times stay.
    apply(store, [update("hubspot", "1", t=2, email=ada, attributes={"city": "London"})], now=30)
    assert profile(store, "email", ada) == changed
    # A merge into the younger profile (the email's, the match key) takes the earlier
    # creation time of the two.
    apply(store, [update("sfdc", "A1", t=3, email=ada)], now=40)
    merged = profile(store, "crm", "sfdc:A1")
    assert merged is not None and merged.profile_id == changed.profile_id
    assert merged.created_at == older.created_at
    assert merged.updated_at > changed.updated_at


ODD_TEXTS = ['o"brien\\x@example.com', "zoë 🙂 @example.com", " spaced ", "tab\there", "[1, 2]"]


def test_identities_and_values_of_any_text_come_back_as_they_went_in(
    open_store: StoreFactory,
) -> None:
    # Text travels as array parameters, rows in JSON parameters and JSON values: quotes,
    # backslashes, non-ASCII and whitespace must survive every one of them.
    store = open_store(settings())
    first = [
        update("hubspot", text, t=1, email=text, attributes={"note": text}) for text in ODD_TEXTS
    ]
    apply(store, first)
    again = [update("hubspot", text, t=2, email=text, attributes={"n": 2}) for text in ODD_TEXTS]
    apply(store, again)
    assert len(snapshot(store)) == len(ODD_TEXTS)
    for text in ODD_TEXTS:
        found = profile(store, "email", text)
        assert found is not None and profile(store, "crm", f"hubspot:{text}") == found
        assert values(found) == {"note": text, "n": 2}


def test_a_change_joining_two_profiles_is_rejected_under_reject(open_store: StoreFactory) -> None:
    store = open_store(settings(on_identity_conflict="reject"))
    apply(store, conflicting_pair())
    before = snapshot(store)
    lead, other = (profile(store, "email", "ada@example.com"), profile(store, "crm", "sfdc:A1"))
    assert lead is not None and other is not None
    joining = update("sfdc", "A1", t=3, email="ada@example.com", attributes={"city": "London"})
    report = apply(store, [joining, update("hubspot", "9", t=3, attributes={"x": 1})])
    assert [r.index for r in report.rejections] == [0]
    reason = report.rejections[0].reason
    assert str(lead.profile_id) in reason and str(other.profile_id) in reason
    assert profile(store, "crm", "hubspot:9") is not None
    assert [p for p in snapshot(store) if p.profile_id in (lead.profile_id, other.profile_id)] == (
        before
    )


def test_erasure_removes_personal_data_and_late_events_do_not_resurrect(
    open_store: StoreFactory,
) -> None:
    store = open_store(settings())
    apply(store, [update("hubspot", "1", t=1, email="ada@example.com", attributes={"a": 1})])
    apply(store, [erase("ada@example.com", t=10)])
    assert profile(store, "email", "ada@example.com") is None
    assert profile(store, "crm", "hubspot:1") is None
    assert snapshot(store) == []
    late = [
        update("hubspot", "1", t=5, email="ada@example.com", attributes={"a": 2}),
        update("hubspot", "1", t=9, attributes={"a": 3}),
    ]
    report = apply(store, late)
    assert [why for _i, why in report.dropped_updates] == ["erased", "erased"]
    assert snapshot(store) == []
    # The person signs up again afterwards: a new profile, not the erased one.
    apply(store, [update("hubspot", "1", t=20, email="ada@example.com", attributes={"a": 4})])
    again = profile(store, "email", "ada@example.com")
    assert again is not None and values(again) == {"a": 4}


def test_consent_changes_only_from_the_consent_source(open_store: StoreFactory) -> None:
    store = open_store(CONSENT)
    apply(
        store,
        [
            update(
                "hubspot", "1", t=1, email="a@x.io", consents=[("newsletter", "email", "opt_in", 1)]
            ),
            update(
                "sfdc", "9", t=2, email="a@x.io", consents=[("newsletter", "email", "opt_out", 2)]
            ),
        ],
    )
    found = profile(store, "email", "a@x.io")
    assert found is not None
    assert [(c.subscription, c.channel, c.status, c.source) for c in found.consents] == [
        ("newsletter", "EMAIL", "OPT_IN", "hubspot")
    ]
    apply(
        store,
        [
            update(
                "hubspot",
                "1",
                t=3,
                email="a@x.io",
                consents=[("newsletter", "email", "opt_out", 0.5)],
            )
        ],
    )
    found = profile(store, "email", "a@x.io")
    assert found is not None and found.consents[0].status == "OPT_IN", "an older consent lost"
    apply(
        store,
        [
            update(
                "hubspot",
                "1",
                t=4,
                email="a@x.io",
                consents=[("newsletter", "email", "opt_out", 4)],
            )
        ],
    )
    found = profile(store, "email", "a@x.io")
    assert found is not None and found.consents[0].status == "OPT_OUT"


def test_owner_only_keeps_other_sources_out(open_store: StoreFactory) -> None:
    store = open_store(settings(attributes={"tier": {"policy": "owner_only", "owner": "sfdc"}}))
    apply(store, [update("sfdc", "1", t=1, email="a@x.io", attributes={"tier": "gold"})])
    report = apply(store, [update("hubspot", "1", t=2, email="a@x.io", attributes={"tier": "x"})])
    assert values(profile(store, "email", "a@x.io")) == {"tier": "gold"}
    assert [(name, why) for _i, name, why in report.drops] == [("tier", "owned by sfdc")]


def test_last_writer_wins_by_source_time_whatever_the_arrival_order(
    open_store: StoreFactory,
) -> None:
    store = open_store(settings(attributes={"city": {"policy": "last_writer_wins"}}))
    apply(store, [update("sfdc", "1", t=5, email="a@x.io", attributes={"city": "Paris"})])
    apply(store, [update("hubspot", "1", t=3, email="a@x.io", attributes={"city": "Rome"})])
    assert values(profile(store, "email", "a@x.io")) == {"city": "Paris"}
    apply(store, [update("hubspot", "1", t=6, email="a@x.io", attributes={"city": "Oslo"})])
    assert values(profile(store, "email", "a@x.io")) == {"city": "Oslo"}


def test_source_priority_prefers_the_stronger_source(open_store: StoreFactory) -> None:
    policy = {"policy": "source_priority", "priority": ["sfdc", "hubspot"]}
    store = open_store(settings(attributes={"title": policy}))
    apply(store, [update("hubspot", "1", t=1, email="a@x.io", attributes={"title": "Eng"})])
    apply(store, [update("sfdc", "1", t=2, email="a@x.io", attributes={"title": "CTO"})])
    apply(store, [update("hubspot", "1", t=9, email="a@x.io", attributes={"title": "Dev"})])
    found = profile(store, "email", "a@x.io")
    assert values(found) == {"title": "CTO"}
    assert found is not None and found.attributes["title"].source == "sfdc"


def test_a_blank_never_clears_and_a_clear_stays_cleared(open_store: StoreFactory) -> None:
    store = open_store(settings())
    apply(store, [update("hubspot", "1", t=1, email="a@x.io", attributes={"n": "Ada"})])
    apply(store, [update("hubspot", "1", t=2, email="a@x.io", attributes={"n": None})])
    assert values(profile(store, "email", "a@x.io")) == {"n": "Ada"}
    apply(store, [update("hubspot", "1", t=3, email="a@x.io", cleared=["n"])])
    assert values(profile(store, "email", "a@x.io")) == {}
    apply(store, [update("hubspot", "1", t=1, email="a@x.io", attributes={"n": "Ada"})])
    assert values(profile(store, "email", "a@x.io")) == {}, "an older value came back"


def test_a_deleted_record_is_detached_and_stays_detached_on_replay(
    open_store: StoreFactory,
) -> None:
    store = open_store(settings())
    created = update("sfdc", "1", t=1, email="a@x.io", attributes={"n": 1})
    apply(store, [created])
    apply(store, [update("sfdc", "1", t=2, operation=UpdateOperation.DELETE)])
    assert profile(store, "crm", "sfdc:1") is None
    # No record asserts the email any more: it is history (test_store_identities.py).
    assert profile(store, "email", "a@x.io") is None
    apply(store, [created], now=3)
    assert profile(store, "crm", "sfdc:1") is None
    apply(store, [update("sfdc", "1", t=4, email="a@x.io")])
    assert profile(store, "crm", "sfdc:1") is not None


def test_a_poison_update_is_rejected_and_the_batch_goes_on(open_store: StoreFactory) -> None:
    store = open_store(settings())
    report = apply(
        store,
        [
            update("hubspot", "1", t=1, attributes={"score": math.nan}),
            update("hubspot", "2", t=1, attributes={"name": "nul\x00byte"}),
            update("hubspot", "3", t=1, attributes={"score": 3}),
        ],
    )
    assert [r.index for r in report.rejections] == [0, 1]
    assert "finite" in report.rejections[0].reason
    assert profile(store, "crm", "hubspot:1") is None
    assert values(profile(store, "crm", "hubspot:3")) == {"score": 3}


def test_identities_are_unique(open_store: StoreFactory) -> None:
    store = open_store(settings())
    apply(store, story())
    seen: set[Identity] = set()
    for found in snapshot(store):
        assert not seen & set(found.identities)
        seen |= set(found.identities)
