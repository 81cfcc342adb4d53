"""Catching a partition's local state up with its changelog, when it is assigned.

The engine reads the group's committed offsets first and only then restores, up to
the changelog's end as it stands *after* that read. Under ``read_committed`` the
restore waits (up to ``deadline_s``) for every transaction below that end to be
decided: a transaction whose consumed offsets the group already shows has its
changelog records committed too, and they are read before a message is mapped.

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

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from services.core.kafka import watermarks
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
    end each partition has now; returns the records restored per partition."""
    topic = changelog.topic
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    for partition, state in states.items():
        low, high = watermarks(restorer, TopicPartition(topic, partition))
        start = max(state.applied_offset() + 1, low)
        # The last offset of a changelog is often a transaction's commit marker, not a
        # record: reading to the end tells.
        if high > start:
            starts[partition], ends[partition] = start, high
    restored = dict.fromkeys(starts, 0)
    if not starts:
        return restored
    restorer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
    pending: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in starts}
    last = {p: o - 1 for p, o in starts.items()}
    reading = set(starts)
    give_up = time.monotonic() + deadline_s
    try:
        while reading:
            if time.monotonic() > give_up:
                raise KafkaException(
                    KafkaError(
                        KafkaError._TIMED_OUT,
                        f"changelog partitions {sorted(reading)} not readable to their end "
                        f"{ {p: ends[p] for p in reading} } within {deadline_s:.0f}s",
                    )
                )
            message = restorer.poll(1.0)
            if message is None:
                continue
            number = message.partition()
            assert number is not None
            if _read_one(message, pending[number], last, ends[number]):
                reading.discard(number)
            batch = pending[number]
            if batch and (len(batch) >= RESTORE_BATCH or number not in reading):
                states[number].restore(batch, last_offset=last[number])
                restored[number] += len(batch)
                pending[number] = []
                beat(f"restored {sum(restored.values())} state records")
    finally:
        restorer.unassign()
    return restored


def _read_one(
    message: Message, pending: list[tuple[bytes, bytes | None]], last: dict[int, int], end: int
) -> bool:
    """Take one message of the restore; True when its partition is read to ``end``."""
    number, error, offset = message.partition(), message.error(), message.offset()
    assert number is not None
    if error is not None:
        if error.code() != KafkaError._PARTITION_EOF:
            raise KafkaException(error)
        # At the end of what is decided. Below the end taken at the start a
        # transaction is still open: wait for its commit or abort.
        return offset is not None and offset >= end
    key = message.key()
    if key is not None and offset is not None:
        pending.append((key, message.value()))
        last[number] = offset
    return offset is not None and offset + 1 >= end
