"""``crmsync status``: every source and destination, gathered once, then shown for
people or, with ``--json``, for scripts.

Where it comes from: ingest's admin API (``GET /status``: each source's kind, mapping
version, webhook, poll, full sync and pause), the store (how many profiles each source
wrote under each mapping version; each destination's latest push) and Kafka (the
changes waiting for each destination). ``gather`` reads them into a ``Status``;
``human_lines`` and ``status_json`` render that one object. Ingest not answering fails
the command; a store or Kafka that cannot be read is said on stderr and what it would
have told is left unknown (None, ``null`` in the JSON).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import KafkaException

from services.cli.admin_client import admin_call
from services.cli.exit_codes import DONE, refused
from services.cli.fullsync_command import progress_line
from services.cli.json_output import print_json
from services.core.config import Settings
from services.writer.stores import open_sql_store, open_store
from services.writer.stores.snapshots import PushProgress

BackfillState = Literal["never_pushed", "unfinished", "due", "done"]


@dataclass(frozen=True)
class SourceStatus:
    name: str
    kind: str
    mapping_version: int
    webhook: bool
    poll: Mapping[str, Any] | None
    """As ingest's admin API shows it, like ``fullsync`` and ``paused``."""
    fullsync: Mapping[str, Any] | None
    paused: Mapping[str, Any] | None
    profiles_under_older_mapping: int | None
    """Profiles this source last wrote under an older mapping version; None when the
    store could not be read."""

    @property
    def fullsync_due(self) -> bool:
        return bool(self.profiles_under_older_mapping)


@dataclass(frozen=True)
class DestinationStatus:
    name: str
    kind: str
    paused: bool
    mapping_version: int
    changes_waiting: int | None
    """None when Kafka could not be read."""
    pushes_known: bool
    """False when the store keeps no pushes (the HTTP store) or could not be read."""
    last_push: PushProgress | None

    @property
    def state(self) -> Literal["paused", "delivering"]:
        return "paused" if self.paused else "delivering"

    @property
    def backfill(self) -> BackfillState | None:
        return backfill_state(self.last_push, self.mapping_version) if self.pushes_known else None


@dataclass(frozen=True)
class Status:
    sources: tuple[SourceStatus, ...]
    destinations: tuple[DestinationStatus, ...]


def status(settings: Settings, *, as_json: bool) -> int:
    code, body = admin_call(settings, "GET", "/status")
    if code != 200:
        return refused("ingest", code, body)
    gathered = gather(settings, body["sources"], body.get("destinations") or {})
    if as_json:
        print_json(status_json(gathered))
    else:
        for line in human_lines(gathered):
            print(line)
    return DONE


def gather(
    settings: Settings,
    ingest_sources: Mapping[str, Mapping[str, Any]],
    ingest_destinations: Mapping[str, Mapping[str, Any]] | None = None,
) -> Status:
    """``ingest_sources`` and ``ingest_destinations`` (the admin API's view: pauses)
    with what the store and Kafka add."""
    paused_now = {name: info.get("paused") for name, info in (ingest_destinations or {}).items()}
    written = _profiles_by_mapping_version(settings)
    waiting = _waiting_changes(settings)
    pushes = _pushes(settings)
    return Status(
        sources=tuple(
            source_status(name, info, written=written) for name, info in ingest_sources.items()
        ),
        destinations=tuple(
            DestinationStatus(
                name=name,
                kind=destination.kind,
                paused=destination.paused or paused_now.get(name) is not None,
                mapping_version=destination.mapping_version,
                changes_waiting=None if waiting is None else waiting.get(name),
                pushes_known=pushes is not None,
                last_push=None if pushes is None else pushes.get(name),
            )
            for name, destination in settings.destinations.items()
        ),
    )


def source_status(
    name: str, info: Mapping[str, Any], *, written: Mapping[str, Mapping[int, int]] | None
) -> SourceStatus:
    version: int = info["mapping_version"]
    older = (
        None
        if written is None
        else sum(count for v, count in written.get(name, {}).items() if v < version)
    )
    return SourceStatus(
        name=name,
        kind=info["kind"],
        mapping_version=version,
        webhook=info["webhook"],
        poll=info["poll"],
        fullsync=info["fullsync"],
        paused=info.get("paused"),
        profiles_under_older_mapping=older,
    )


def backfill_state(progress: PushProgress | None, mapping_version: int) -> BackfillState:
    if progress is None:
        return "never_pushed"
    if progress.finished_at is None:
        return "unfinished"
    if progress.mapping_version < mapping_version:
        return "due"
    return "done"


def human_lines(status: Status) -> list[str]:
    lines: list[str] = []
    for source in status.sources:
        lines += _source_lines(source)
    for destination in status.destinations:
        waiting = destination.changes_waiting
        count = "" if waiting is None else f", {waiting} changes waiting"
        lines.append(
            f"{destination.name} (destination, {destination.kind}): {destination.state}{count}"
        )
        if destination.pushes_known:
            backfill = push_line(destination.last_push, destination.mapping_version)
            lines.append(f"  backfill: {backfill}")
    return lines


def _source_lines(source: SourceStatus) -> list[str]:
    lines = [f"{source.name} ({source.kind}, mapping v{source.mapping_version})"]
    if source.fullsync_due:
        lines.append(
            f"  profiles: {source.profiles_under_older_mapping} written under an older "
            f"mapping than v{source.mapping_version}; a full sync is due"
        )
    if source.paused:
        lines.append(f"  paused since {source.paused['since']}: changes queue until resumed")
    if source.webhook:
        lines.append("  webhook: receiving")
    poll = source.poll
    if poll is not None:
        state = "failing" if poll["consecutive_failures"] else "ok"
        lines.append(
            f"  poll: {poll['schedule']}, {state}, last success {poll['last_success_at']}, "
            f"watermark {poll['watermark']}"
        )
        if poll["last_error"]:
            lines.append(f"    last error: {poll['last_error']}")
    if source.fullsync is not None:
        lines.append(f"  full sync: {progress_line(dict(source.fullsync))}")
    return lines


def push_line(progress: PushProgress | None, mapping_version: int) -> str:
    """A destination's backfill in words; how to act on it where there is something to do."""
    state = backfill_state(progress, mapping_version)
    if progress is None or state == "never_pushed":
        return f"due: never pushed (crmsync destination push NAME, mapping v{mapping_version})"
    counted = f"{progress.pushed} of {progress.total} profiles"
    if state == "unfinished":
        return f"interrupted at {counted}: crmsync destination push NAME resumes it"
    if state == "due":
        return f"due: pushed under mapping v{progress.mapping_version}, now v{mapping_version}"
    return f"done, {counted} at {progress.finished_at:%Y-%m-%d %H:%M}Z"


def status_json(status: Status) -> dict[str, Any]:
    return {
        "sources": {
            s.name: {
                "kind": s.kind,
                "mapping_version": s.mapping_version,
                "webhook": s.webhook,
                "poll": s.poll,
                "fullsync": s.fullsync,
                "paused": s.paused,
                "profiles_under_older_mapping": s.profiles_under_older_mapping,
                "fullsync_due": s.fullsync_due,
            }
            for s in status.sources
        },
        "destinations": {
            d.name: {
                "kind": d.kind,
                "state": d.state,
                "mapping_version": d.mapping_version,
                "changes_waiting": d.changes_waiting,
                "backfill": _backfill_json(d),
            }
            for d in status.destinations
        },
    }


def _backfill_json(destination: DestinationStatus) -> dict[str, Any] | None:
    if destination.backfill is None:
        return None
    push = destination.last_push
    if push is None:
        return {"state": destination.backfill}
    return {
        "state": destination.backfill,
        "run_id": push.run_id,
        "pushed": push.pushed,
        "total": push.total,
        "mapping_version": push.mapping_version,
        "started_at": push.started_at.isoformat(),
        "finished_at": push.finished_at.isoformat() if push.finished_at else None,
    }


def _profiles_by_mapping_version(settings: Settings) -> dict[str, dict[int, int]] | None:
    try:
        store = open_store(settings.store, read_only=True)
    except Exception as exc:  # any store, any failure: the rest of the status still shows
        sys.stderr.write(f"store not readable, mapping versions unknown: {exc}\n")
        return None
    try:
        return store.profiles_by_mapping_version()
    finally:
        store.close()


def _waiting_changes(settings: Settings) -> dict[str, int] | None:
    if not settings.destinations:
        return {}
    from services.outbound.backlog import waiting_changes

    try:
        return waiting_changes(settings)
    except KafkaException as exc:
        sys.stderr.write(f"Kafka not readable, destinations' backlogs unknown: {exc}\n")
        return None


def _pushes(settings: Settings) -> dict[str, PushProgress | None] | None:
    """Each destination's latest push, from the store; None when it keeps none (the
    HTTP store) or cannot be read."""
    if not settings.destinations:
        return {}
    try:
        store = open_sql_store(settings.store, read_only=True)
    except Exception:
        return None
    if store is None:
        return None
    try:
        return {name: store.push_progress(name) for name in settings.destinations}
    except Exception as exc:
        sys.stderr.write(f"store not readable, backfills unknown: {exc}\n")
        return None
    finally:
        store.close()
