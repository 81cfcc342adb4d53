"""The writer's consumer loop: profile updates from Kafka into the store, effectively once.

The life of a message here:

1. On assignment, each partition starts at the position the *store* holds for it
   (committed with the data), falling back to Kafka's committed offset, then the
   earliest. Kafka's committed offsets are only a mirror for lag monitoring.
2. A batch is consumed: up to ``batch_max_records`` messages or ``batch_max_wait_ms``.
3. Each message is decoded; an undecodable one becomes a RejectedEvent (poison: its
   offset still moves on).
4. The store applies the batch and the next offset of every partition in one
   transaction. Updates the store refuses are rejected too; every rejection, and an
   audit event for every merge and store-side drop, is flushed to Kafka before that
   transaction commits (so a crash can repeat them, never lose them).
5. Only after the store commit are the offsets committed to Kafka (asynchronously).
6. A transient store failure retries the same batch with backoff; nothing is skipped.
   A stop request is honoured between batches, so no batch is ever half-applied.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from services.core import metrics
from services.core.contracts import (
    AuditEvent,
    Codec,
    FieldDrop,
    ProfileMerge,
    ProfileUpdate,
    RejectedEvent,
)
from services.core.crash_points import crash_point
from services.core.serde import DecodeError
from services.writer.stores.base import (
    BatchReport,
    ProfileStore,
    TopicPartitionKey,
    TransientStoreError,
)

log = logging.getLogger(__name__)

FIRST_RETRY_S: Final = 0.2
MAX_RETRY_S: Final = 10.0
REJECT_FLUSH_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True)
class LoopSettings:
    topic: str
    rejected_topic: str
    audit_topic: str
    batch_max_records: int
    batch_max_wait_ms: int


@dataclass
class _Decoded:
    updates: list[ProfileUpdate]
    update_messages: list[Message]
    rejected: list[RejectedEvent]


class RejectsNotDurable(Exception):
    pass


def position_of(message: Message) -> tuple[str, int, int]:
    """A consumed message always has a position; one without is a client bug."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        raise RuntimeError("consumed message without topic, partition or offset")
    return topic, partition, offset


class WriterLoop:
    def __init__(
        self,
        *,
        consumer: Consumer,
        producer: Producer,
        store: ProfileStore,
        updates: Codec[ProfileUpdate],
        rejected: Codec[RejectedEvent],
        audit: Codec[AuditEvent],
        settings: LoopSettings,
        stop: threading.Event,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._store = store
        self._updates = updates
        self._rejected = rejected
        self._audit = audit
        self._settings = settings
        self._stop = stop
        self._clock = clock
        self.batches_applied = 0

    def run(self) -> None:
        self._consumer.subscribe([self._settings.topic], on_assign=self._on_assign)
        try:
            while not self._stop.is_set():
                # Step 2
                messages = self._consumer.consume(
                    num_messages=self._settings.batch_max_records,
                    timeout=self._settings.batch_max_wait_ms / 1000,
                )
                batch = [m for m in messages if not self._is_error(m)]
                if batch:
                    self._process(batch)
        finally:
            self._producer.flush(REJECT_FLUSH_TIMEOUT_S)
            self._consumer.close()
            log.info("writer loop stopped batches=%s", self.batches_applied)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Step 1
        stored = self._store.stored_offsets(self._settings.topic)
        for partition in partitions:
            if partition.partition in stored:
                partition.offset = stored[partition.partition]
        consumer.assign(partitions)
        log.info(
            "assigned partitions=%s resume=%s",
            [p.partition for p in partitions],
            {p.partition: p.offset for p in partitions},
        )

    def _is_error(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return False
        if error.code() == KafkaError._PARTITION_EOF:
            return True
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer error %s", error.str())
        return True

    def _process(self, batch: Sequence[Message]) -> None:
        # Step 3
        decoded = self._decode(batch)
        next_offsets: dict[TopicPartitionKey, int] = {}
        for message in batch:
            topic, partition, offset = position_of(message)
            next_offsets[(topic, partition)] = offset + 1
        # Steps 4 and 6
        started = time.perf_counter()
        report = self._apply_with_retry(decoded, next_offsets)
        if report is None:
            log.warning("stopping with an unapplied batch; it is consumed again on restart")
            return
        metrics.STORE_BATCHES.observe(time.perf_counter() - started)
        crash_point("writer-after-store-commit")
        self._observe(decoded, report)
        # Step 5
        self._consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()],
            asynchronous=True,
        )
        self.batches_applied += 1

    def _apply_with_retry(
        self, decoded: _Decoded, next_offsets: dict[TopicPartitionKey, int]
    ) -> BatchReport | None:
        """The committed batch's report, or None when asked to stop before it committed."""
        delay = FIRST_RETRY_S
        paused: list[TopicPartition] = []
        try:
            while True:
                try:
                    return self._store.apply_batch(
                        updates=decoded.updates,
                        next_offsets=next_offsets,
                        written_at=self._clock(),
                        before_commit=lambda report: self._report(decoded, report),
                    )
                except (TransientStoreError, RejectsNotDurable) as exc:
                    log.warning("batch not applied, retrying in %.1fs: %s", delay, exc)
                    metrics.STORE_UNAVAILABLE.set(1)
                if not paused:
                    # Consumption pauses while the store is away; polling goes on so the
                    # group keeps this member (max.poll.interval.ms) and nothing is skipped.
                    paused = self._consumer.assignment()
                    self._consumer.pause(paused)
                if self._wait_polling(delay, paused):
                    return None
                delay = min(delay * 2, MAX_RETRY_S)
        finally:
            if paused:
                self._consumer.resume(paused)
                metrics.STORE_UNAVAILABLE.set(0)
                log.info("store back, consumption resumed")

    def _wait_polling(self, delay: float, paused: list[TopicPartition]) -> bool:
        """Wait ``delay`` seconds while polling the paused consumer; True on stop."""
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            if self._stop.is_set():
                return True
            message = self._consumer.poll(min(left, 0.5))
            if message is not None and message.error() is None:
                # A partition assigned during the pause is not paused: put its message
                # back so it is consumed after the batch in hand.
                topic, partition, offset = position_of(message)
                self._consumer.seek(TopicPartition(topic, partition, offset))
                paused.append(TopicPartition(topic, partition))
                self._consumer.pause(paused[-1:])
        return self._stop.is_set()

    def _decode(self, batch: Sequence[Message]) -> _Decoded:
        decoded = _Decoded(updates=[], update_messages=[], rejected=[])
        for message in batch:
            value = message.value()
            try:
                if value is None:
                    raise DecodeError("empty message value")
                update = self._updates.decode(value)
            except DecodeError as exc:
                decoded.rejected.append(
                    self._rejection(message, f"undecodable ProfileUpdate: {exc}")
                )
                continue
            decoded.updates.append(update)
            decoded.update_messages.append(message)
        return decoded

    def _report(self, decoded: _Decoded, report: BatchReport) -> None:
        rejections = list(decoded.rejected)
        for refusal in report.rejections:
            update = decoded.updates[refusal.index]
            rejections.append(
                self._rejection(
                    decoded.update_messages[refusal.index],
                    refusal.reason,
                    source=update.source,
                    event_id=update.event_id,
                )
            )
        audits = self._audits(decoded.updates, report)
        if not rejections and not audits:
            return
        failures: list[str] = []

        def on_delivery(error: Any, _message: Any) -> None:
            if error is not None:
                failures.append(str(error))

        for rejection in rejections:
            self._producer.produce(
                self._settings.rejected_topic,
                key=rejection.key,
                value=self._rejected.encode(rejection),
                on_delivery=on_delivery,
            )
        for audit in audits:
            self._producer.produce(
                self._settings.audit_topic,
                key=audit.key,
                value=self._audit.encode(audit),
                on_delivery=on_delivery,
            )
        remaining = self._producer.flush(REJECT_FLUSH_TIMEOUT_S)
        if remaining or failures:
            raise RejectsNotDurable(f"rejected events not acknowledged: {failures or remaining}")

    def _audits(self, updates: Sequence[ProfileUpdate], report: BatchReport) -> list[AuditEvent]:
        """One audit event per merge, and one per update the store left (partly) out."""
        now = self._clock()
        drops: dict[int, list[FieldDrop]] = {}
        for index, name, why in report.drops:
            drops.setdefault(index, []).append(FieldDrop(name, "conflict", why))
        for index, why in report.dropped_updates:
            drops.setdefault(index, []).append(FieldDrop("*", why, f"update left out: {why}"))
        events = [
            self._audit_event(updates[index], now, dropped=tuple(dropped))
            for index, dropped in sorted(drops.items())
        ]
        for index, merge in report.merges:
            events.append(
                self._audit_event(
                    updates[index],
                    now,
                    merge=ProfileMerge(merge.merged_id, merge.into_id),
                )
            )
        return events

    @staticmethod
    def _audit_event(
        update: ProfileUpdate,
        now: datetime,
        *,
        dropped: tuple[FieldDrop, ...] = (),
        merge: ProfileMerge | None = None,
    ) -> AuditEvent:
        return AuditEvent(
            match_key=update.match_key,
            source=update.source,
            record_id=update.record_id,
            event_id=update.event_id,
            decided_at=now,
            mapping_version=update.mapping_version,
            dropped=dropped,
            stage="writer",
            merge=merge,
        )

    def _rejection(
        self,
        message: Message,
        reason: str,
        *,
        source: str | None = None,
        event_id: str | None = None,
    ) -> RejectedEvent:
        return RejectedEvent(
            stage="writer",
            reason=reason,
            rejected_at=self._clock(),
            source=source,
            event_id=event_id,
            key=message.key(),
            value=message.value(),
            origin_topic=message.topic(),
            origin_partition=message.partition(),
            origin_offset=message.offset(),
        )

    def _observe(self, decoded: _Decoded, report: BatchReport) -> None:
        """Metrics of a committed batch (a batch retried after a failed commit counts once)."""
        updates = decoded.updates
        if decoded.rejected:
            metrics.EVENTS_REJECTED.labels("writer", "", "invalid").inc(len(decoded.rejected))
        for refusal in report.rejections:
            metrics.EVENTS_REJECTED.labels("writer", updates[refusal.index].source, "invalid").inc()
        for index, _name, _why in report.drops:
            metrics.WRITER_DROPS.labels(updates[index].source, "conflict").inc()
        for index, why in report.dropped_updates:
            metrics.WRITER_DROPS.labels(updates[index].source, why).inc()
        if report.merges:
            metrics.PROFILE_MERGES.inc(len(report.merges))
        now = self._clock()
        per_source: dict[str, int] = {}
        for update in updates:
            per_source[update.source] = per_source.get(update.source, 0) + 1
            metrics.SYNC_LAG.labels(update.source).observe(
                (now - update.received_at).total_seconds()
            )
        for source, count in per_source.items():
            metrics.RECORDS_WRITTEN.labels(source).inc(count)
            metrics.LAST_SUCCESSFUL_SYNC.labels(source).set(now.timestamp())
