"""What every committed change leaves in the store's outbox: one ProfileChanged event
per update that changed a profile, old and new values with provenance, in commit
order, written (or not) with the batch's transaction.

The HTTP store keeps no outbox (the CDP applies the profile model itself and tells no
change back): it is held to having nothing pending.
"""

from __future__ import annotations

from typing import Any

import pytest

from services.core.codecs import load_contracts
from services.core.contracts import Identity, UpdateOperation
from services.core.mapping_settings import ProfileSettings
from services.core.profile_changed import ProfileChanged, ProfileChangeKind
from services.writer.stores.base import ProfileStore
from services.writer.stores.http import HttpProfileStore
from services.writer.stores.outbox import unpack
from tests.stores.changes import apply, at, erase, profile, split, update
from tests.stores.conftest import StoreFactory

CODEC = load_contracts().profile_changed
CONSENT = ProfileSettings.model_validate(
    {"subscriptions": {"newsletter": {"channel": "email", "source": "hubspot"}}}
)


def test_only_the_stores_applying_the_profile_model_keep_an_outbox(
    open_store: StoreFactory,
) -> None:
    store = open_store(ProfileSettings())
    apply(store, [update("hubspot", "1", t=1, email="a@x.io", attributes={"x": 1})])
    assert len(events(store)) == (0 if isinstance(store, HttpProfileStore) else 1)


def events(store: ProfileStore, limit: int = 10_000) -> list[ProfileChanged]:
    """The pending events, in order (each keyed by its profile id)."""
    entries = store.pending_changes(limit)
    assert [e.seq for e in entries] == sorted({e.seq for e in entries}), "commit order"
    found = []
    for entry in entries:
        for key, value in unpack(entry.messages):
            event = CODEC.decode(value)
            assert key == str(event.profile_id).encode()
            found.append(event)
    return found


def drain(store: ProfileStore) -> list[ProfileChanged]:
    """Every pending event, in order; the outbox is then empty."""
    found = events(store)
    entries = store.pending_changes(10_000)
    if entries:
        store.changes_relayed(entries[-1].seq)
    assert store.pending_changes(10_000) == []
    return found


def attribute_changes(event: ProfileChanged) -> dict[str, tuple[Any, Any]]:
    return {a.name: (a.old_value, a.new_value) for a in event.attributes}


def test_each_change_says_what_it_changed_old_and_new(open_sql_store: StoreFactory) -> None:
    store = open_sql_store(ProfileSettings())
    apply(
        store,
        [
            update("hubspot", "1", t=1, email="ada@x.io", attributes={"first_name": "Ada"}),
            update("hubspot", "1", t=2, email="ada@x.io", attributes={"first_name": "Ada L."}),
        ],
    )
    apply(store, [update("hubspot", "1", t=3, email="ada@x.io", cleared=["first_name"])])
    created, renamed, cleared = drain(store)
    assert created.kind is ProfileChangeKind.CREATED
    assert attribute_changes(created) == {"first_name": (None, "Ada")}
    assert set(created.identities) == {
        Identity("email", "ada@x.io"),
        Identity("crm", "hubspot:1"),
    }
    assert set(created.identities_added) == set(created.identities)
    assert renamed.kind is ProfileChangeKind.UPDATED
    assert attribute_changes(renamed) == {"first_name": ("Ada", "Ada L.")}
    assert renamed.identities_added == ()
    assert attribute_changes(cleared) == {"first_name": ("Ada L.", None)}
    assert {e.profile_id for e in (created, renamed, cleared)} == {created.profile_id}
    assert (renamed.source, renamed.record_id, renamed.source_modified_at) == (
        "hubspot",
        "1",
        at(2),
    )
    assert renamed.source_event_id and renamed.event_id == (
        f"{renamed.source_event_id}:{renamed.profile_id}"
    )
    assert renamed.committed_at == at(1_000_000)


def test_a_write_that_changes_no_value_is_no_event(open_sql_store: StoreFactory) -> None:
    store = open_sql_store(ProfileSettings())
    first = update("hubspot", "1", t=1, email="a@x.io", attributes={"plan": "pro", "n": 1})
    apply(store, [first])
    drain(store)
    # The same values under a newer version: stored (the provenance moves on), no event.
    apply(store, [update("hubspot", "1", t=2, email="a@x.io", attributes={"plan": "pro", "n": 1})])
    assert drain(store) == []
    # A replay of the first change changes nothing at all.
    apply(store, [first], now=5)
    assert drain(store) == []
    # True is not 1: a change of type is a change.
    apply(store, [update("hubspot", "1", t=3, email="a@x.io", attributes={"n": True})])
    [typed] = drain(store)
    assert attribute_changes(typed) == {"n": (1, True)}


def test_consents_say_their_old_and_new_status(open_sql_store: StoreFactory) -> None:
    store = open_sql_store(CONSENT)
    opt_in = [("newsletter", "email", "opt_in", 1)]
    apply(store, [update("hubspot", "1", t=1, email="a@x.io", consents=opt_in)])
    opt_out = [("newsletter", "email", "opt_out", 2)]
    apply(store, [update("hubspot", "1", t=2, email="a@x.io", consents=opt_out)])
    created, withdrawn = drain(store)
    assert [(c.subscription, c.channel, c.old_status, c.new_status) for c in created.consents] == [
        ("newsletter", "EMAIL", None, "OPT_IN")
    ]
    assert [(c.old_status, c.new_status, c.changed_at) for c in withdrawn.consents] == [
        ("OPT_IN", "OPT_OUT", at(2))
    ]


def test_a_merge_names_the_merged_profile_and_the_values_it_brought(
    open_sql_store: StoreFactory,
) -> None:
    store = open_sql_store(ProfileSettings())
    apply(
        store,
        [
            update("hubspot", "1", t=1, email="ada@x.io", attributes={"first_name": "Ada"}),
            update("sfdc", "A1", t=2, attributes={"company": "Analytical", "first_name": "A."}),
        ],
    )
    lead = profile(store, "email", "ada@x.io")
    other = profile(store, "crm", "sfdc:A1")
    assert lead is not None and other is not None
    drain(store)
    apply(store, [update("sfdc", "A1", t=3, email="ada@x.io", attributes={"city": "London"})])
    [merged] = drain(store)
    assert merged.profile_id == lead.profile_id
    assert merged.merged_profile_ids == (other.profile_id,)
    assert attribute_changes(merged) == {
        "first_name": ("Ada", "A."),
        "company": (None, "Analytical"),
        "city": (None, "London"),
    }
    assert Identity("crm", "sfdc:A1") in merged.identities_added
    assert set(merged.identities) == {
        Identity("email", "ada@x.io"),
        Identity("crm", "hubspot:1"),
        Identity("crm", "sfdc:A1"),
    }


def test_a_partly_loaded_profile_still_names_every_identity(open_sql_store: StoreFactory) -> None:
    """A batch reads only the attributes it writes, but an event names all identities."""
    store = open_sql_store(ProfileSettings())
    apply(store, [update("hubspot", "1", t=1, email="ada@x.io", attributes={"a": 1})])
    apply(store, [update("sfdc", "9", t=2, email="ada@x.io", attributes={"b": 1})])
    drain(store)
    apply(store, [update("sfdc", "9", t=3, attributes={"b": 2})])
    [event] = drain(store)
    assert set(event.identities) == {
        Identity("email", "ada@x.io"),
        Identity("crm", "hubspot:1"),
        Identity("crm", "sfdc:9"),
    }


def test_deletion_and_erasure_are_events_too(open_sql_store: StoreFactory) -> None:
    store = open_sql_store(ProfileSettings())
    apply(store, [update("hubspot", "1", t=1, email="bob@x.io", attributes={"first_name": "Bob"})])
    apply(store, [update("sfdc", "7", t=1, email="bob@x.io")])
    drain(store)
    apply(
        store,
        [update("hubspot", "1", t=2, email="bob@x.io", operation=UpdateOperation.DELETE)],
    )
    [detached] = drain(store)
    assert detached.kind is ProfileChangeKind.DETACHED
    assert detached.identities_removed == (Identity("crm", "hubspot:1"),)
    apply(store, [erase("bob@x.io", t=3)])
    [erased] = drain(store)
    assert erased.kind is ProfileChangeKind.ERASED
    assert erased.profile_id == detached.profile_id
    # What it held, for destinations to erase it there too.
    assert set(erased.identities) == {Identity("email", "bob@x.io"), Identity("crm", "sfdc:7")}


def test_a_batch_not_committed_leaves_no_event(open_sql_store: StoreFactory) -> None:
    store = open_sql_store(ProfileSettings())

    def refuse(_report: object) -> None:
        raise RuntimeError("the rejected topic did not take the batch's rejections")

    with pytest.raises(RuntimeError):
        store.apply_batch(
            updates=[update("hubspot", "1", t=1, email="a@x.io", attributes={"x": 1})],
            next_offsets={("updates", 0): 1},
            written_at=at(10),
            before_commit=refuse,
        )
    assert drain(store) == []
    apply(store, [update("hubspot", "1", t=1, email="a@x.io", attributes={"x": 1})])
    [event] = drain(store)
    assert attribute_changes(event) == {"x": (None, 1)}


def test_relayed_events_are_forgotten_and_new_ones_follow(open_sql_store: StoreFactory) -> None:
    store = open_sql_store(ProfileSettings())
    for t in range(1, 6):
        apply(store, [update("hubspot", str(t), t=t, attributes={"n": t})])
    entries = store.pending_changes(3)
    assert len(entries) == 3
    store.changes_relayed(entries[1].seq)
    left = store.pending_changes(10)
    assert [e.seq for e in left] == [e.seq for e in store.pending_changes(10)]
    assert left[0].seq == entries[2].seq and len(left) == 3
    store.changes_relayed(left[-1].seq)
    apply(store, [update("hubspot", "9", t=9, attributes={"n": 9})])
    [newer] = store.pending_changes(10)
    assert newer.seq > left[-1].seq, "a seq is never given twice"


def test_a_split_tells_both_profiles_what_changed(open_sql_store: StoreFactory) -> None:
    """Destinations hear the profile split from (values and identities it gave back) and
    the profile split off (created again, with everything it holds)."""
    store = open_sql_store(ProfileSettings())
    apply(
        store,
        [
            update("hubspot", "1", t=1, email="ada@x.io", attributes={"first_name": "Ada"}),
            update("sfdc", "A1", t=2, email="a1@x.io", attributes={"first_name": "A."}),
        ],
    )
    other = profile(store, "crm", "sfdc:A1")
    assert other is not None
    joining = update("sfdc", "A1", t=3, email="ada@x.io", attributes={"city": "London"})
    apply(store, [joining._replace(identities=(*joining.identities, Identity("email", "a1@x.io")))])
    drain(store)
    apply(store, [split(other.profile_id, t=4)])
    lead, back = drain(store)
    assert lead.kind is ProfileChangeKind.UPDATED
    assert set(lead.identities_removed) == {
        Identity("crm", "sfdc:A1"),
        Identity("email", "a1@x.io"),
    }
    assert attribute_changes(lead) == {"first_name": ("A.", "Ada"), "city": ("London", None)}
    assert back.kind is ProfileChangeKind.CREATED
    assert back.profile_id == other.profile_id
    assert set(back.identities) == {Identity("crm", "sfdc:A1"), Identity("email", "a1@x.io")}
    assert attribute_changes(back) == {"first_name": (None, "A."), "city": (None, "London")}
