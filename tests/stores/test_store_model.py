"""Model-based test: random change sequences through a store, against a reference.

The reference is deliberately not the ProfileBook: with the default rules
(last-writer-wins for undeclared attributes, merge on identity conflicts) a store's
profiles are the connected components of the identities that appeared together in a
change, and each attribute's value is the newest write (set or clear) any change of
the component made, ties going to the greater source name, then record id. That holds
whatever the batching, replays and restarts, which the machine varies at random.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from services.core.contracts import FieldValue, Identity, ProfileUpdate
from services.core.mapping_settings import ProfileSettings
from services.writer.stores.base import ProfileStore
from tests.stores.changes import apply, update
from tests.stores.conftest import StoreFactory

SOURCES = ("hubspot", "sfdc")
EMAILS = ("a@x.io", "b@x.io", "c@x.io")
ATTRIBUTES = ("city", "score")


@dataclass(frozen=True)
class Write:
    version: tuple[int, int]
    source: str
    record_id: str
    value: FieldValue


def reference(updates: list[ProfileUpdate]) -> dict[frozenset[Identity], dict[str, FieldValue]]:
    parent: dict[Identity, Identity] = {}

    def find(identity: Identity) -> Identity:
        parent.setdefault(identity, identity)
        while parent[identity] != identity:
            identity = parent[identity]
        return identity

    for change in updates:
        kind, _, value = change.match_key.partition(":")
        members = [Identity(kind, value), *change.identities]
        for member in members[1:]:
            parent[find(member)] = find(members[0])
    newest: dict[Identity, dict[str, Write]] = {}
    for change in updates:
        root = find(change.identities[0])
        version = (int(change.source_modified_at.timestamp() * 1e6), change.sequence)
        writes = [(n, v) for n, v in change.attributes.items() if v is not None]
        writes += [(n, None) for n in change.cleared]
        for name, value in writes:
            incoming = Write(version, change.source, change.record_id, value)
            stored = newest.setdefault(root, {}).get(name)
            if stored is None or (incoming.version, incoming.source, incoming.record_id) > (
                stored.version,
                stored.source,
                stored.record_id,
            ):
                newest[root][name] = incoming
    components: dict[Identity, set[Identity]] = {}
    for identity in parent:
        components.setdefault(find(identity), set()).add(identity)
    return {
        frozenset(members): {
            name: w.value for name, w in newest.get(root, {}).items() if w.value is not None
        }
        for root, members in components.items()
    }


class StoreMachine(RuleBasedStateMachine):
    factory: StoreFactory

    def __init__(self) -> None:
        super().__init__()
        self.name = f"model_{uuid.uuid4().hex[:12]}"
        self.store: ProfileStore = self.factory(ProfileSettings(), name=self.name)
        self.applied: list[ProfileUpdate] = []
        self.pending: list[ProfileUpdate] = []

    @initialize()
    def nothing_yet(self) -> None:
        assert self.store.all_profiles() == []

    @rule(
        source=st.sampled_from(SOURCES),
        record=st.integers(0, 2),
        t=st.integers(0, 4),
        email=st.none() | st.sampled_from(EMAILS),
        attributes=st.dictionaries(
            st.sampled_from(ATTRIBUTES), st.none() | st.integers(0, 3) | st.text("xy", max_size=2)
        ),
        cleared=st.lists(st.sampled_from(ATTRIBUTES), max_size=1),
    )
    def change(
        self,
        source: str,
        record: int,
        t: int,
        email: str | None,
        attributes: dict[str, FieldValue],
        cleared: list[str],
    ) -> None:
        cleared = [name for name in cleared if name not in attributes]
        self.pending.append(
            update(source, str(record), t=t, email=email, attributes=attributes, cleared=cleared)
        )

    @rule()
    def flush(self) -> None:
        apply(self.store, self.pending)
        self.applied.extend(self.pending)
        self.pending = []

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        if not self.applied:
            return
        start = data.draw(st.integers(0, len(self.applied) - 1))
        end = data.draw(st.integers(start + 1, len(self.applied)))
        apply(self.store, self.applied[start:end], now=7)

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = self.factory(ProfileSettings(), name=self.name)

    @invariant()
    def matches_the_reference(self) -> None:
        expected = reference(self.applied)
        actual = {
            frozenset(found.identities): {n: a.value for n, a in found.attributes.items()}
            for found in self.store.all_profiles()
        }
        assert actual == expected

    def teardown(self) -> None:
        self.store.close()


# The profile logic is the same for every store; SQLite explores it widely, and the
# servers' runs (a database or a CDP per example) check their adapters on fewer.
EXAMPLES = {"sqlite": 200, "postgres": 30, "http": 30}


def test_random_changes_match_the_reference(
    open_store: StoreFactory, request: pytest.FixtureRequest
) -> None:
    StoreMachine.factory = staticmethod(open_store)  # type: ignore[assignment]
    runner = StoreMachine.TestCase()
    kind = request.node.callspec.params["open_store"]
    runner.settings = settings(max_examples=EXAMPLES[kind], stateful_step_count=30, deadline=None)
    runner.runTest()
