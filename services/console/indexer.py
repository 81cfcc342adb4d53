"""The console's indexer: reads the topics the console shows into its index.

A consumer without a group, assigned every partition of the indexed topics from the
positions the index keeps (from the beginning the first time): each batch's rows and
the positions after it are committed in one SQLite transaction, so the index never
holds a message twice nor misses one, whatever stops it. Committed messages only
(read_committed): an aborted mapper transaction never shows. A message that does not
decode is counted and skipped; it never stops the indexer. New partitions are picked
up when the assignment is refreshed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from services.console.index import ConsoleIndex, Row, Where
from services.console.rows import MessageRows
from services.core.serde import DecodeError

log = logging.getLogger(__name__)

BATCH: Final = 500
POLL_S: Final = 0.5
REASSIGN_EVERY_S: Final = 60.0
EXPIRE_EVERY_S: Final = 600.0
METADATA_TIMEOUT_S: Final = 10.0


class Indexer:
    def __init__(
        self,
        *,
        consumer_config: dict[str, Any],
        rows: MessageRows,
        index: ConsoleIndex,
        retention: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = consumer_config
        self._rows = rows
        self._index = index
        self._retention = retention
        self._clock = clock
        self.caught_up = threading.Event()
        """Set once every partition was read to its end (the pages are then current)."""
        self.skipped = 0

    def run(self, stop: threading.Event) -> None:
        consumer = Consumer({**self._config, "enable.partition.eof": True})
        try:
            assigned = self._assign(consumer)
            reassigned_at = expired_at = time.monotonic()
            at_end: set[tuple[str, int]] = set()
            while not stop.is_set():
                messages = consumer.consume(BATCH, timeout=POLL_S)
                rows: list[Row] = []
                positions: dict[tuple[str, int], int] = {}
                for message in messages:
                    error = message.error()
                    topic, partition = message.topic(), message.partition()
                    if topic is None or partition is None:
                        continue
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            at_end.add((topic, partition))
                            continue
                        log.warning("indexer read error: %s", error)
                        continue
                    at_end.discard((topic, partition))
                    offset = message.offset() or 0
                    rows.extend(self._rows_of(Where(topic, partition, offset), message.value()))
                    positions[(topic, partition)] = offset + 1
                if positions:
                    self._index.write(rows, positions)
                if not self.caught_up.is_set() and at_end >= assigned:
                    self.caught_up.set()
                now = time.monotonic()
                if now - reassigned_at > REASSIGN_EVERY_S:
                    assigned = self._assign(consumer, keep=assigned)
                    reassigned_at = now
                if now - expired_at > EXPIRE_EVERY_S:
                    gone = self._index.expire(self._clock(), self._retention)
                    if gone:
                        log.info("console index expired %s rows", gone)
                    expired_at = now
        finally:
            consumer.close()

    def _rows_of(self, where: Where, value: bytes | None) -> list[Row]:
        try:
            return self._rows.of(where, value)
        except DecodeError as exc:
            self.skipped += 1
            log.warning(
                "console index skipped an undecodable message topic=%s partition=%s offset=%s: %s",
                where.topic,
                where.partition,
                where.offset,
                exc,
            )
            return []

    def _assign(
        self, consumer: Consumer, keep: set[tuple[str, int]] | None = None
    ) -> set[tuple[str, int]]:
        """Every partition of the indexed topics, each from the index's position;
        with ``keep``, only partitions not assigned yet are added."""
        known = self._index.positions()
        wanted: set[tuple[str, int]] = set()
        for topic in self._rows.topics:
            metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics.get(topic)
            if metadata is None or metadata.error is not None:
                continue
            wanted.update((topic, p) for p in metadata.partitions)
        if keep is not None and wanted <= keep:
            return keep
        added = wanted - (keep or set())
        partitions = [
            TopicPartition(t, p, known.get((t, p), OFFSET_BEGINNING)) for t, p in sorted(added)
        ]
        if keep is None:
            consumer.assign(partitions)
        else:
            consumer.incremental_assign(partitions)
        return wanted | (keep or set())
