"""Model-based test: random change sequences through a store, against a reference.

The reference (tests/stores/reference.py) is deliberately not the ProfileBook: plain
dictionaries following the README's rules. Three sources' records change their emails
(none, one or two of a small pool, so records keep meeting), are deleted and come
back, late and in any order; the machine batches, replays and restarts at random.
After every step the store equals the reference; no identity matches two profiles;
no profile holds more identities of a kind than its limit. Splits of merges on
record, at random, give both profiles back as the reference has them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from services.core.contracts import FieldValue, Identity, ProfileUpdate, UpdateOperation
from services.core.mapping_settings import ProfileSettings
from services.writer.stores.base import ProfileStore
from tests.stores.changes import apply, split, update
from tests.stores.conftest import StoreFactory
from tests.stores.reference import Reference, version_of

SOURCES = ("hubspot", "sfdc", "webcrm")
EMAILS = ("a@x.io", "b@x.io", "c@x.io", "d@x.io")
ATTRIBUTES = ("city", "score")
EMAIL_LIMIT = 3
CRM_LIMIT = 4
PROFILE = ProfileSettings.model_validate(
    {"identities": {"limits": {"email": {"max": EMAIL_LIMIT}, "crm": {"max": CRM_LIMIT}}}}
)


def change(
    source: str,
    record: str,
    *,
    t: int,
    emails: list[str],
    attributes: dict[str, FieldValue],
    cleared: list[str],
    delete: bool,
) -> ProfileUpdate:
    """A record's change asserting ``emails`` (the first its match key)."""
    made = update(
        source,
        record,
        t=t,
        email=emails[0] if emails else None,
        attributes={} if delete else attributes,
        cleared=[] if delete else cleared,
        operation=UpdateOperation.DELETE if delete else UpdateOperation.UPSERT,
    )
    more = tuple(Identity("email", email) for email in emails[1:])
    return made._replace(identities=(*made.identities, *more)) if more else made


@dataclass(frozen=True)
class Sent:
    """What the mapper has sent of a record: its newest change's version, and its
    emails with the version of the change that set them."""

    newest: tuple[int, int] = (-1, 0)
    emails_version: tuple[int, int] = (-1, 0)
    emails: tuple[Identity, ...] = ()
    deleted: tuple[int, int] = (-1, 0)


class StoreMachine(RuleBasedStateMachine):
    factory: StoreFactory

    def __init__(self) -> None:
        super().__init__()
        self.name = f"model_{uuid.uuid4().hex[:12]}"
        self.store: ProfileStore = self.factory(PROFILE, name=self.name)
        self.model = Reference(email_limit=EMAIL_LIMIT, crm_limit=CRM_LIMIT)
        self.applied: list[ProfileUpdate] = []
        self.pending: list[ProfileUpdate] = []
        self.sent: dict[tuple[str, str], Sent] = {}

    @initialize()
    def nothing_yet(self) -> None:
        assert self.store.all_profiles() == []

    @rule(
        source=st.sampled_from(SOURCES),
        record=st.integers(0, 2),
        t=st.integers(0, 6),
        emails=st.lists(st.sampled_from(EMAILS), max_size=2, unique=True),
        attributes=st.dictionaries(
            st.sampled_from(ATTRIBUTES), st.none() | st.integers(0, 3) | st.text("xy", max_size=2)
        ),
        cleared=st.lists(st.sampled_from(ATTRIBUTES), max_size=1),
        delete=st.integers(0, 5).map(lambda n: n == 0),
    )
    def change(
        self,
        source: str,
        record: int,
        t: int,
        emails: list[str],
        attributes: dict[str, FieldValue],
        cleared: list[str],
        delete: bool,
    ) -> None:
        cleared = [name for name in cleared if name not in attributes]
        self._send(
            change(
                source,
                str(record),
                t=t,
                emails=emails,
                attributes=attributes,
                cleared=cleared,
                delete=delete,
            )
        )

    @rule(data=st.data())
    def join(self, data: st.DataObject) -> None:
        """A record takes up an email another profile holds: a merge, unless a limit or
        a split keeps them apart."""
        self.flush()
        held = sorted(i.value for i in self.model.owner if i.kind == "email")
        if not held or not self.model.claims:
            return
        source, record = data.draw(st.sampled_from(sorted(self.model.claims)))
        email = data.draw(st.sampled_from(held))
        own = sorted(i.value for i in self.model.claims[(source, record)][1] if i.kind == "email")
        emails = [email, *(e for e in own if e != email)][:2]
        t = data.draw(st.integers(5, 9))
        self._send(
            change(
                source,
                record,
                t=t,
                emails=emails,
                attributes={"city": f"{source}{record}@{t}"},
                cleared=[],
                delete=False,
            )
        )

    @rule(data=st.data())
    def split(self, data: st.DataObject) -> None:
        """The split of a merge on record (after what is pending: the merges known)."""
        self.flush()
        merged = sorted(self.model.merges) or [1]
        self.pending.append(split(data.draw(st.sampled_from(merged)), t=0))

    def _send(self, made: ProfileUpdate) -> None:
        """As the mapper sends a record's changes: a record's emails have a version of
        their own (a change older than it carries the emails the record has, as its
        newest email field), a deletion older than the record's newest change is stale,
        and so is a change no newer than the record's deletion (neither is sent)."""
        record = (made.source, made.record_id)
        version = version_of(made)
        known = self.sent.get(record, Sent())
        if made.operation is UpdateOperation.DELETE:
            if version <= known.newest:
                return
            self.sent[record] = Sent(version, version, (), version)
        elif version <= known.deleted:
            return
        else:
            emails = tuple(i for i in made.identities if i.kind == "email")
            if version <= known.emails_version:
                crm_id = Identity("crm", f"{made.source}:{made.record_id}")
                match = f"email:{known.emails[0].value}" if known.emails else f"crm:{crm_id.value}"
                made = made._replace(identities=(*known.emails, crm_id), match_key=match)
                emails = known.emails
            elif emails != known.emails:
                known = Sent(known.newest, version, emails, known.deleted)
            newest = max(known.newest, version)
            self.sent[record] = Sent(newest, known.emails_version, emails, known.deleted)
            # The version of the emails, which the writer keeps them by.
            deleted = known.deleted
            made = made._replace(
                identities_version=max(known.emails_version, (deleted[0], deleted[1] + 1))
            )
        self.pending.append(made)

    @rule()
    def flush(self) -> None:
        report = apply(self.store, self.pending)
        for one in self.pending:
            self.model.apply(one)
        rejected = {self.pending[r.index].event_id for r in report.rejections}
        assert rejected == {u.event_id for u in self.pending} & self.model.rejected
        self.applied.extend(self.pending)
        self.pending = []

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """Changes applied again (a restore, a redelivery) change nothing. (A rejected
        change is replayed by an operator once resolved: that is a new decision.)"""
        again = [u for u in self.applied if u.event_id not in self.model.rejected]
        if not again:
            return
        start = data.draw(st.integers(0, len(again) - 1))
        end = data.draw(st.integers(start + 1, len(again)))
        apply(self.store, again[start:end], now=7)

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = self.factory(PROFILE, name=self.name)

    @invariant()
    def matches_the_reference(self) -> None:
        actual = Counter(
            (
                frozenset(found.identities),
                frozenset((n, a.value) for n, a in found.attributes.items()),
            )
            for found in self.store.all_profiles()
        )
        assert actual == self.model.state()

    @invariant()
    def no_identity_matches_two_profiles_and_limits_hold(self) -> None:
        seen: set[Identity] = set()
        for found in self.store.all_profiles():
            assert seen.isdisjoint(found.identities)
            seen.update(found.identities)
            kinds = Counter(identity.kind for identity in found.identities)
            assert kinds["email"] <= EMAIL_LIMIT
            assert kinds["crm"] <= CRM_LIMIT

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
