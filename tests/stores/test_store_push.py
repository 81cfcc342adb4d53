"""A destination's backfill in the store: every profile's SNAPSHOT queued in the
outbox, a batch per transaction, in profile order, interleaved in commit order with
the live changes, and resumed after the last committed batch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from services.core.contracts import Identity
from services.core.mapping_settings import ProfileSettings
from services.core.profile_changed import ProfileChangeKind
from services.writer.stores.snapshots import PushableStore
from tests.stores.changes import apply, update
from tests.stores.conftest import StoreFactory
from tests.stores.test_store_outbox import drain

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
CONSENT = ProfileSettings.model_validate(
    {"subscriptions": {"newsletter": {"channel": "email", "source": "hubspot"}}}
)


def test_a_push_queues_each_profile_once_whole_for_its_destination_alone(
    open_sql_store: StoreFactory,
) -> None:
    store = open_sql_store(CONSENT)
    apply(
        store,
        [
            update(
                "hubspot",
                str(n),
                t=n,
                email=f"p{n}@x.io",
                attributes={"first_name": f"P{n}", "score": n},
                consents=[("newsletter", "email", "opt_in", n)],
            )
            for n in range(1, 6)
        ],
    )
    drain(store)
    pushing = cast(PushableStore, store)
    assert pushing.push_progress("cdp") is None
    started = pushing.start_push("cdp", run_id="r1", mapping_version=1, now=NOW)
    assert (started.total, started.pushed, started.finished_at) == (5, 0, None)

    first = pushing.push_batch("cdp", limit=2, now=NOW)
    second = pushing.push_batch("cdp", limit=2, now=NOW)
    assert (first.pushed, second.pushed) == (2, 4)
    # A live change committed meanwhile sits between the batches, in commit order.
    apply(store, [update("hubspot", "1", t=10, email="p1@x.io", attributes={"score": 99})])
    last = pushing.push_batch("cdp", limit=2, now=NOW)
    done = pushing.push_batch("cdp", limit=2, now=NOW)
    assert (last.pushed, last.finished_at) == (5, None)
    assert (done.pushed, done.finished_at) == (5, NOW)
    assert pushing.push_progress("cdp") == done

    events = drain(store)
    kinds = [e.kind for e in events]
    assert kinds == [ProfileChangeKind.SNAPSHOT] * 4 + [ProfileChangeKind.UPDATED] + [
        ProfileChangeKind.SNAPSHOT
    ]
    snapshots = [e for e in events if e.kind is ProfileChangeKind.SNAPSHOT]
    assert [e.profile_id for e in snapshots] == sorted(e.profile_id for e in snapshots)
    assert len({e.profile_id for e in snapshots}) == 5
    one = snapshots[0]
    assert one.destination == "cdp"
    assert one.event_id == f"push:cdp:r1:{one.profile_id}"
    assert {a.name: (a.old_value, a.new_value) for a in one.attributes} == {
        "first_name": (None, "P1"),
        "score": (None, 1),
    }
    assert [(c.subscription, c.new_status) for c in one.consents] == [("newsletter", "OPT_IN")]
    assert Identity("email", "p1@x.io") in one.identities


def test_a_push_resumes_after_its_last_committed_batch_and_restarts_when_asked(
    open_sql_store: StoreFactory,
) -> None:
    store = open_sql_store(ProfileSettings())
    apply(
        store,
        [update("hubspot", str(n), t=n, email=f"p{n}@x.io", attributes={"x": n}) for n in range(4)],
    )
    drain(store)
    pushing = cast(PushableStore, store)
    pushing.start_push("hooks", run_id="r1", mapping_version=1, now=NOW)
    pushing.push_batch("hooks", limit=3, now=NOW)
    # The same store opened again (a push killed after a commit): it goes on from there.
    reopened = cast(PushableStore, open_sql_store(ProfileSettings()))
    progress = reopened.push_progress("hooks")
    assert progress is not None and progress.pushed == 3
    assert reopened.push_batch("hooks", limit=3, now=NOW).pushed == 4
    assert [e.event_id.split(":")[2] for e in drain(store)] == ["r1"] * 4
    # Another run pushes everything again, under its own event ids.
    reopened.start_push("hooks", run_id="r2", mapping_version=2, now=NOW)
    assert reopened.push_batch("hooks", limit=10, now=NOW).pushed == 4
    assert {e.event_id.split(":")[2] for e in drain(store)} == {"r2"}
