"""``crmsync destination push NAME``: send every profile to a destination once.

The push queues each profile's SNAPSHOT in the store's outbox, a batch of profiles per
transaction (services/writer/stores/snapshots.py); the writer relays them to Kafka in
commit order with the live changes, and the destination's delivery loop sends them
like any change, at its batch limits and rate. Killed or stopped halfway, the same
command goes on after the last batch the store committed; ``--restart`` pushes
everything again (a new run). ``--wait`` follows the destination's backlog until it
has taken every change waiting for it (a paused destination takes none: it waits).

Queuing and waiting show as bars on a terminal and as a line every few seconds
elsewhere (services/cli/progress.py). ``--json`` keeps stdout for one JSON object at
the end, the run's figures (and, with ``--wait``, what still waits: nothing); the
words go to stderr then.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from services.cli.exit_codes import DONE, FAILED, USAGE
from services.cli.json_output import print_json
from services.cli.progress import progress_for
from services.core.config import Settings
from services.core.crash_points import crash_point
from services.core.destinations import DestinationSettings
from services.writer.stores import open_sql_store
from services.writer.stores.snapshots import PushableStore, PushProgress

REPORT_EVERY_S: Final = 2.0
# Where a kill -9 tests the push: a batch committed, the next not begun.
CRASH_AFTER_BATCH: Final = "push-after-batch"
WAIT_POLL_S: Final = 2.0


@dataclass(frozen=True)
class Backlog:
    """What still stands between the store and the destination."""

    changes_waiting: int
    """On the profile-changes topic, not yet taken by the destination."""
    outbox_rows: int
    """In the store's outbox, not yet relayed to Kafka by the writer."""


def push(
    settings: Settings, name: str, *, batch: int, restart: bool, wait: bool, as_json: bool = False
) -> int:
    destination = named_destination(settings, name)
    if destination is None:
        return FAILED
    store = open_sql_store(settings.store)
    if store is None:
        sys.stderr.write(
            f"the {settings.store.kind} store keeps no outbox: a push needs the SQLite "
            "or PostgreSQL store\n"
        )
        return USAGE
    notes = sys.stderr if as_json else sys.stdout
    try:
        store.migrate()
        progress = _pushed(store, name, destination, batch=batch, restart=restart, notes=notes)
        backlog = _follow(settings, name, store, notes=notes) if wait else None
    finally:
        store.close()
    if as_json:
        print_json(push_json(progress, backlog))
    return DONE


def _pushed(
    store: PushableStore,
    name: str,
    destination: DestinationSettings,
    *,
    batch: int,
    restart: bool,
    notes: TextIO,
) -> PushProgress:
    """The run after queuing what it has left: a new one, the one a kill interrupted,
    or the finished one when there is nothing to do."""
    progress = store.push_progress(name)
    if progress is None or restart or _due_again(progress, destination.mapping_version):
        if progress is not None and progress.finished_at is not None and not restart:
            print(
                f"{name}: pushed under mapping v{progress.mapping_version}; "
                f"pushing again for v{destination.mapping_version}",
                file=notes,
            )
        progress = store.start_push(
            name,
            run_id=uuid.uuid4().hex[:12],
            mapping_version=destination.mapping_version,
            now=datetime.now(UTC),
        )
        print(f"{name}: push {progress.run_id} of {progress.total} profiles started", file=notes)
    elif progress.finished_at is not None:
        print(
            f"{name}: every profile was pushed (run {progress.run_id}, "
            f"{progress.pushed} profiles, {progress.finished_at:%Y-%m-%d %H:%M:%S}Z); "
            "--restart pushes again",
            file=notes,
        )
        return progress
    else:
        print(
            f"{name}: resuming push {progress.run_id} after profile "
            f"{progress.after_profile_id} ({_count(progress)})",
            file=notes,
        )
    progress = _queue(store, name, progress, batch=batch, notes=notes)
    print(
        f"{name}: {_count(progress)} queued; the writer relays them to the destination",
        file=notes,
        flush=True,
    )
    return progress


def named_destination(settings: Settings, name: str) -> DestinationSettings | None:
    """The destination ``name``; None, and which there are on stderr, when none is."""
    destination = settings.destinations.get(name)
    if destination is None:
        known = ", ".join(sorted(settings.destinations)) or "none"
        sys.stderr.write(f"no destination {name!r} (configured: {known})\n")
    return destination


def _queue(
    store: PushableStore, name: str, progress: PushProgress, *, batch: int, notes: TextIO
) -> PushProgress:
    with progress_for(
        unit="profiles", label=f"{name} queued", notes=notes, every_s=REPORT_EVERY_S
    ) as shown:
        while progress.finished_at is None:
            progress = store.push_batch(name, limit=batch, now=datetime.now(UTC))
            crash_point(CRASH_AFTER_BATCH)
            shown.step(
                done=progress.pushed,
                total=progress.total,
                line=f"{name}: {_count(progress)} queued",
            )
    return progress


def _follow(settings: Settings, name: str, store: PushableStore, *, notes: TextIO) -> Backlog:
    """Until the writer relayed the outbox and the destination took what waits for it.

    The bar counts down what is left; its total is the most seen left at once, since
    live changes keep adding to what the destination has to take.
    """
    from services.outbound.backlog import waiting_changes

    most = 0
    with progress_for(unit="changes", label=f"{name} delivered", notes=notes) as shown:
        while True:
            backlog = Backlog(
                changes_waiting=waiting_changes(settings).get(name, 0),
                outbox_rows=store.outbox_rows(),
            )
            left = backlog.changes_waiting + backlog.outbox_rows
            most = max(most, left)
            line = (
                f"{name}: {backlog.changes_waiting} changes waiting, "
                f"{backlog.outbox_rows} outbox rows to relay"
            )
            shown.step(done=most - left, total=most or None, line=line)
            if left == 0:
                shown.end(line)
                return backlog
            time.sleep(WAIT_POLL_S)


def push_json(progress: PushProgress, backlog: Backlog | None) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "destination": progress.destination,
        "run_id": progress.run_id,
        "pushed": progress.pushed,
        "total": progress.total,
        "mapping_version": progress.mapping_version,
        "started_at": progress.started_at.isoformat(),
        "finished_at": progress.finished_at.isoformat() if progress.finished_at else None,
    }
    if backlog is not None:
        figures |= {
            "changes_waiting": backlog.changes_waiting,
            "outbox_rows": backlog.outbox_rows,
        }
    return figures


def _count(progress: PushProgress) -> str:
    return f"{progress.pushed} of {progress.total} profiles"


def _due_again(progress: PushProgress, mapping_version: int) -> bool:
    """A finished run under an older mapping: the destination is due again."""
    return progress.finished_at is not None and progress.mapping_version < mapping_version
