"""The full-sync barrier's decisions, free of Kafka.

Every mapper instance reads the whole barrier topic (a source's latest SyncControl
is what counts) and asks, per input partition:

- ``holding``: should this source's real-time change be held? Yes while the
  source's latest sync is STARTED, or COMPLETED but not yet released on this
  partition, or while an operator has the source PAUSED, for a change at or after
  the offset where the changes partition ended when the sync started or the pause
  began (STARTED and PAUSED name it; an earlier change arrived before and is
  applied as usual, whenever the mapper gets to it).
- ``due``: may what this partition holds for the source be released now? When the
  source was RESUMED, the sync was cancelled or failed, or it completed and this
  partition's fullsync position has reached the offset COMPLETED names for it (the
  mapper has then mapped every full-sync record that could compete with the held
  changes). Held changes are released in the order they arrived.

Which sync a partition has released is part of the partition's durable state, so
a restart neither holds again nor releases twice.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.core.contracts import ControlKind, SyncControl

# What holds a source's real-time changes: a full sync until it is released, and a
# pause until it is resumed (a pause is a barrier that only an operator lifts).
RUNNING = (ControlKind.STARTED, ControlKind.COMPLETED, ControlKind.PAUSED)
# What names, as its start, where the changes partitions ended.
OPENING = (ControlKind.STARTED, ControlKind.PAUSED)


class Barriers:
    def __init__(self) -> None:
        self._latest: dict[str, SyncControl] = {}
        # Per source, the running sync's id and where STARTED says holding begins:
        # COMPLETED does not repeat it.
        self._starts: dict[str, tuple[str, dict[int, int]]] = {}

    def observe(self, control: SyncControl) -> None:
        self._latest[control.source] = control
        if control.kind in OPENING:
            starts = {p.partition: p.offset for p in control.changes_start_offsets}
            self._starts[control.source] = (control.sync_id, starts)

    def sources(self) -> Iterable[str]:
        return self._latest.keys()

    def latest(self, source: str) -> SyncControl | None:
        return self._latest.get(source)

    def holding(self, source: str, *, partition: int, offset: int, released: str | None) -> bool:
        control = self._latest.get(source)
        if control is None or control.kind not in RUNNING or released == control.sync_id:
            return False
        sync_id, starts = self._starts.get(source, ("", {}))
        if sync_id != control.sync_id:
            starts = {}
        return offset >= starts.get(partition, 0)

    def due(
        self, source: str, *, partition: int, fullsync_position: int, released: str | None
    ) -> str | None:
        """The sync id whose held changes may be released on ``partition`` now."""
        control = self._latest.get(source)
        if control is None or released == control.sync_id:
            return None
        if control.kind in OPENING:
            return None
        if control.kind is ControlKind.COMPLETED:
            ends = {p.partition: p.offset for p in control.fullsync_end_offsets}
            if fullsync_position < ends.get(partition, 0):
                return None
        return control.sync_id
