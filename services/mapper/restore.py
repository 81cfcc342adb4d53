"""Catching a partition's local state up with its changelog, when it is assigned.

The engine reads the group's committed offsets first, as stable offsets (it waits
while a transaction that commits some is undecided), and only then restores, up to
the changelog's last stable offset as it stands *after* that read: a transaction
whose consumed offsets the group shows has its changelog records below that end, and
they are read before a message is mapped. A transaction still open then (a zombie's,
whose offsets the group does not show) is not waited for.

A local copy that cannot be caught up exactly is thrown away and rebuilt from the
whole changelog:

- it reached past the changelog's end (the topic was recreated);
- the changelog no longer starts at or before the next offset it needs (records it
  never took were deleted);
- it was last written longer ago than the changelog keeps tombstones
  (``delete.retention.ms``): compaction may have removed the deletion of a key it
  still holds, which would come back to life.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from confluent_kafka import Consumer, Message, TopicPartition

from services.core.kafka import watermarks
from services.core.topic_reader import not_read, read_to_end
from services.mapper.state import PartitionState

log = logging.getLogger(__name__)

RESTORE_BATCH: Final = 5_000
# Kafka's default delete.retention.ms, when the changelog's config does not name one.
DEFAULT_DELETE_RETENTION_MS: Final = 86_400_000
# A local copy is thrown away a tenth before the limit: clocks and commit times differ.
RETENTION_MARGIN: Final = 0.9


@dataclass(frozen=True)
class Changelog:
    topic: str
    delete_retention_ms: int = DEFAULT_DELETE_RETENTION_MS


def usable(state: PartitionState, *, low: int, high: int, changelog: Changelog) -> str | None:
    """Why the local copy must be rebuilt from the whole changelog (None: it can be
    caught up)."""
    applied = state.applied_offset()
    if applied < 0:
        return None
    if applied >= high:
        return f"it reached offset {applied}, past the changelog's end {high}"
    if applied + 1 < low:
        return f"it needs offset {applied + 1}, the changelog starts at {low}"
    applied_at = state.applied_at()
    limit_s = changelog.delete_retention_ms / 1000 * RETENTION_MARGIN
    if applied_at is not None and time.time() - applied_at > limit_s:
        return f"it was last written {time.time() - applied_at:.0f}s ago, past tombstone retention"
    return None


def open_states(
    restorer: Consumer, changelog: Changelog, data_dir: Path, partitions: list[int]
) -> dict[int, PartitionState]:
    """Open each partition's local copy, rebuilt empty when it cannot be caught up."""
    states = {}
    for partition in partitions:
        path = data_dir / str(partition)
        state = PartitionState(path, partition=partition)
        low, high = watermarks(restorer, TopicPartition(changelog.topic, partition))
        why = usable(state, low=low, high=high, changelog=changelog)
        if why is not None:
            log.warning("partition %d: local state rebuilt from the changelog: %s", partition, why)
            state.close()
            PartitionState.wipe(path)
            state = PartitionState(path, partition=partition)
        states[partition] = state
    return states


def restore(
    restorer: Consumer,
    changelog: Changelog,
    states: dict[int, PartitionState],
    *,
    deadline_s: float,
    beat: Callable[[str], None],
) -> dict[int, int]:
    """Apply the changelog's committed records after each state's offset, up to the
    end each partition has now; returns the records restored per partition (those
    that had any)."""
    topic = changelog.topic
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    for partition, state in states.items():
        low, ends[partition] = watermarks(restorer, TopicPartition(topic, partition))
        starts[partition] = max(state.applied_offset() + 1, low)
    restored = dict.fromkeys(states, 0)
    pending: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in states}
    last = {p: o - 1 for p, o in starts.items()}

    def apply(partition: int) -> None:
        batch = pending[partition]
        if batch:
            states[partition].restore(batch, last_offset=last[partition])
            restored[partition] += len(batch)
            pending[partition] = []
            beat(f"restored {sum(restored.values())} state records")

    def take(message: Message) -> None:
        partition, key, offset = message.partition(), message.key(), message.offset()
        if partition is None or key is None or offset is None:
            return
        pending[partition].append((key, message.value()))
        last[partition] = offset
        if len(pending[partition]) >= RESTORE_BATCH:
            apply(partition)

    try:
        # (Its EOF is where it waits for a transaction below the end to be decided.)
        left = read_to_end(restorer, topic, take, starts=starts, ends=ends, deadline_s=deadline_s)
    finally:
        restorer.unassign()
    if left:
        raise not_read(topic, left, deadline_s)
    for partition in states:
        apply(partition)
    return {p: n for p, n in restored.items() if n}
