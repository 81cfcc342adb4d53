"""``crmsync destination push NAME``: send every profile to a destination once.

The push queues each profile's SNAPSHOT in the store's outbox, a batch of profiles per
transaction (services/writer/stores/snapshots.py); the writer relays them to Kafka in
commit order with the live changes, and the destination's delivery loop sends them
like any change, at its batch limits and rate. Killed or stopped halfway, the same
command goes on after the last batch the store committed; ``--restart`` pushes
everything again (a new run). ``--wait`` follows the destination's backlog until it
has taken every change waiting for it (a paused destination takes none: it waits).
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Final

from services.core.config import Settings
from services.core.crash_points import crash_point
from services.core.destinations import DestinationSettings
from services.writer.stores import open_sql_store
from services.writer.stores.snapshots import PushableStore, PushProgress

REPORT_EVERY_S: Final = 2.0
# Where a kill -9 tests the push: a batch committed, the next not begun.
CRASH_AFTER_BATCH: Final = "push-after-batch"
WAIT_POLL_S: Final = 2.0


def push(settings: Settings, name: str, *, batch: int, restart: bool, wait: bool) -> int:
    destination = named_destination(settings, name)
    if destination is None:
        return 1
    store = open_sql_store(settings.store)
    if store is None:
        sys.stderr.write(
            f"the {settings.store.kind} store keeps no outbox: a push needs the SQLite "
            "or PostgreSQL store\n"
        )
        return 2
    try:
        store.migrate()
        progress = store.push_progress(name)
        if progress is None or restart or _due_again(progress, destination.mapping_version):
            if progress is not None and progress.finished_at is not None and not restart:
                print(
                    f"{name}: pushed under mapping v{progress.mapping_version}; "
                    f"pushing again for v{destination.mapping_version}"
                )
            progress = store.start_push(
                name,
                run_id=uuid.uuid4().hex[:12],
                mapping_version=destination.mapping_version,
                now=datetime.now(UTC),
            )
            print(f"{name}: push {progress.run_id} of {progress.total} profiles started")
        elif progress.finished_at is not None:
            print(
                f"{name}: every profile was pushed (run {progress.run_id}, "
                f"{progress.pushed} profiles, {progress.finished_at:%Y-%m-%d %H:%M:%S}Z); "
                "--restart pushes again"
            )
            return _follow(settings, name, store) if wait else 0
        else:
            print(
                f"{name}: resuming push {progress.run_id} after profile "
                f"{progress.after_profile_id} ({_count(progress)})"
            )
        progress = _queue(store, name, progress, batch=batch)
        print(f"{name}: {_count(progress)} queued; the writer relays them to the destination")
        return _follow(settings, name, store) if wait else 0
    finally:
        store.close()


def named_destination(settings: Settings, name: str) -> DestinationSettings | None:
    """The destination ``name``; None, and which there are on stderr, when none is."""
    destination = settings.destinations.get(name)
    if destination is None:
        known = ", ".join(sorted(settings.destinations)) or "none"
        sys.stderr.write(f"no destination {name!r} (configured: {known})\n")
    return destination


def _queue(store: PushableStore, name: str, progress: PushProgress, *, batch: int) -> PushProgress:
    reported = time.monotonic()
    while progress.finished_at is None:
        progress = store.push_batch(name, limit=batch, now=datetime.now(UTC))
        crash_point(CRASH_AFTER_BATCH)
        if time.monotonic() - reported >= REPORT_EVERY_S:
            print(f"{name}: {_count(progress)} queued", flush=True)
            reported = time.monotonic()
    return progress


def _follow(settings: Settings, name: str, store: PushableStore) -> int:
    """Until the writer relayed the outbox and the destination took what waits for it."""
    from services.outbound.backlog import waiting_changes

    while True:
        unrelayed = store.outbox_rows()
        waiting = waiting_changes(settings).get(name, 0)
        print(f"{name}: {waiting} changes waiting, {unrelayed} outbox rows to relay", flush=True)
        if waiting == 0 and unrelayed == 0:
            return 0
        time.sleep(WAIT_POLL_S)


def _count(progress: PushProgress) -> str:
    return f"{progress.pushed} of {progress.total} profiles"


def _due_again(progress: PushProgress, mapping_version: int) -> bool:
    """A finished run under an older mapping: the destination is due again."""
    return progress.finished_at is not None and progress.mapping_version < mapping_version
