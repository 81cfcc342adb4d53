"""The writer's consumer loop: profile updates from Kafka into the store, effectively once.

The life of a message here:

1. On assignment, each partition starts at the position the *store* holds for it
   (committed with the data). A store that keeps positions and holds none for a
   partition never applied anything from it (a new or replaced store): the partition
   starts at its earliest offset, whatever Kafka's committed offset says, with a
   warning when that offset shows history applied before (replayed now). Kafka's
   committed offsets are only a mirror for lag monitoring; only a store that cannot
   keep positions (the CDP over HTTP) starts from them.
   The store is asked only between batches. When it cannot answer, or a batch is in
   hand whose commit will move those positions, the partitions are left out of the
   assignment, their start unknown; before consuming again the loop asks the store
   with backoff (polling meanwhile, so the group keeps this member), then assigns them
   at its positions. No partition is fetched before the store has answered for it,
   and one revoked before that is forgotten.
2. A batch is consumed: up to ``batch_max_records`` messages or ``batch_max_wait_ms``.
3. Each message is decoded; an undecodable one becomes a RejectedEvent (poison: its
   offset still moves on).
4. The store applies the batch and the next offset of every partition in one
   transaction. Updates the store refuses are rejected too; every rejection, and an
   audit event for every merge and store-side drop, is flushed to Kafka before that
   transaction commits (so a crash can repeat them, never lose them).
5. Only after the store commit are the offsets committed to Kafka (asynchronously).
   Then the batch's ProfileChanged events, committed in the store's outbox with it, are
   relayed to Kafka (services/writer/outbox_relay.py); an outbox that could not be
   emptied then is tried again at least every ``RELAY_RETRY_S``.
6. A transient store failure retries the same batch with backoff, consumption paused
   (polling goes on); nothing is skipped. A stop request is honoured between batches
   and while waiting for the store, so no batch is ever half-applied. Should the
   partitions be revoked during that wait (the eager protocol revokes them all), the
   batch is dropped unapplied: their next owner, perhaps this member again, starts
   them at the store's positions and applies those messages once.

The writer's consumer loop with its crash points: batches, store commits, offset commits
and the pauses between them are one sequence whose order is the guarantee; hence over
400 lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from services.core import metrics
from services.core.codecs import Codec
from services.core.contracts import (
    AuditEvent,
    FieldDrop,
    ProfileMerge,
    ProfileUpdate,
    RejectedEvent,
)
from services.core.crash_points import crash_point
from services.core.kafka import is_error, wait_paused
from services.core.rejections import (
    DEFAULT_MESSAGE_MAX_BYTES,
    ProducibleRejection,
    consumed_rejection,
    producible_rejection,
)
from services.core.retry import Backoff, RetryPolicy
from services.core.serde import DecodeError
from services.writer.outbox_relay import CRASH_AFTER_RELAY_PRODUCE
from services.writer.stores.base import (
    BatchReport,
    ProfileStore,
    TopicPartitionKey,
    TransientStoreError,
)

log = logging.getLogger(__name__)

# Waits while the store is away: from 0.2 s doubling to 10 s, with jitter, so that
# writers do not come back to a restarted database in step.
STORE_RETRY: Final = RetryPolicy(initial_s=0.2, max_s=10.0)
REJECT_FLUSH_TIMEOUT_S: Final = 30.0
# Kafka's committed offsets and earliest offsets, read only to warn (step 1).
OFFSET_LOOKUP_TIMEOUT_S: Final = 10.0
# How often the outbox is looked at when no batch relayed it (step 5): events left by
# a relay that Kafka or the store interrupted, or by a crash.
RELAY_RETRY_S: Final = 1.0

# Where a kill -9 tests that nothing is lost or applied twice, in the order a batch
# passes them (services/core/crash_points.py):
# - before the store commit: rejections and audit events are out, the data is not in;
# - after the store commit: the data and its positions are in, Kafka's offsets not;
# - after the offset commit: asked of Kafka (asynchronously), before the next batch;
# - after the relay's produce: Kafka has the outbox's events, the outbox still holds
#   them (services/writer/outbox_relay.py).
CRASH_BEFORE_STORE_COMMIT: Final = "writer-before-store-commit"
CRASH_AFTER_STORE_COMMIT: Final = "writer-after-store-commit"
CRASH_AFTER_OFFSET_COMMIT: Final = "writer-after-offset-commit"
CRASH_POINTS: Final = (
    CRASH_BEFORE_STORE_COMMIT,
    CRASH_AFTER_STORE_COMMIT,
    CRASH_AFTER_OFFSET_COMMIT,
    CRASH_AFTER_RELAY_PRODUCE,
)


@dataclass(frozen=True)
class LoopSettings:
    topic: str
    rejected_topic: str
    audit_topic: str
    batch_max_records: int
    batch_max_wait_ms: int
    rejected_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES
    """The largest message the producer may put on the rejected topic: a rejection
    carrying more is cut to fit (services/core/rejections.py)."""


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


class StoreBackoff:
    """The wait between attempts at a store that is away (``STORE_RETRY``), with
    ``crmsync_store_unavailable`` at 1 meanwhile (whoever sees the store answer sets
    it back)."""

    def __init__(self, wait: Callable[[float], bool]) -> None:
        # wait(seconds) waits, and says True when the writer is asked to stop.
        self._wait = wait
        self._backoff = Backoff(STORE_RETRY)

    def failed(self, what: str, exc: Exception) -> bool:
        """Report a failed attempt and wait before the next; True when asked to stop."""
        delay = self._backoff.next_wait_s(exc)
        log.warning("%s, retrying in %.1fs: %s", what, delay, exc)
        metrics.STORE_UNAVAILABLE.set(1)
        return self._wait(delay)


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
        lag: Callable[[], None] = lambda: None,
        relay: Callable[[], bool] = lambda: True,
    ) -> None:
        """``lag`` measures the consumer's lag after each batch (``ConsumerLag``);
        ``relay`` empties the store's outbox, False when it could not finish
        (``OutboxRelay.relay``)."""
        self._consumer = consumer
        self._lag = lag
        self._relay = relay
        # When the outbox is next looked at without a batch (step 5).
        self._next_relay = 0.0
        self._producer = producer
        self._store = store
        self._updates = updates
        self._rejected = rejected
        self._audit = audit
        self._settings = settings
        self._stop = stop
        self._clock = clock
        self.batches_applied = 0
        # Partitions the group gave this member that wait for the store to say where
        # they start (step 1, deferred); None when none wait.
        self._unpositioned: list[TopicPartition] | None = None
        # True only inside the main loop's consume(): no batch in hand, no wait under way.
        self._between_batches = False
        # Revocations so far: a batch waiting for the store sees whether its partitions
        # went meanwhile.
        self._revocations = 0

    def run(self) -> None:
        self._consumer.subscribe(
            [self._settings.topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        try:
            while not self._stop.is_set():
                # Step 1, deferred
                if self._unpositioned is not None and not self._position_unpositioned():
                    break
                # Step 2. A rebalance served inside consume() leaves no message of a
                # revoked partition in the batch: librdkafka drops from the batch what
                # was fetched before the new assignment's barrier.
                self._between_batches = True
                try:
                    messages = self._consumer.consume(
                        num_messages=self._settings.batch_max_records,
                        timeout=self._settings.batch_max_wait_ms / 1000,
                    )
                finally:
                    self._between_batches = False
                batch = [m for m in messages if not is_error(m)]
                if batch:
                    self._process(batch)
                elif time.monotonic() >= self._next_relay:
                    self._relay_outbox()
                self._lag()
        finally:
            self._producer.flush(REJECT_FLUSH_TIMEOUT_S)
            self._consumer.close()
            log.info("writer loop stopped batches=%s", self.batches_applied)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Step 1. Rebalance callbacks run inside consume() and poll(), so this is either
        # the main loop between batches, or a wait for the store (a batch retried, or
        # earlier partitions waiting for their start).
        if self._between_batches:
            try:
                positioned = self._at_stored_positions(partitions)
            except TransientStoreError as exc:
                log.warning("store unavailable at assignment, consumption waits: %s", exc)
                metrics.STORE_UNAVAILABLE.set(1)
            else:
                # Assigned with explicit offsets inside the callback: the fetch starts
                # right there, with no window at Kafka's committed offset.
                self._assign_at(positioned, "assigned")
                return
        # The store is away, or this is a wait, where the batch in hand may yet move the
        # store's positions: they are read once the wait is over. Until then the
        # partitions stay out of the assignment. Assigned (even paused), they would
        # start fetching at Kafka's committed offset, and a seek to the store's position
        # fails on a partition that has not started fetching yet. assign([]), because
        # without an assign() call the binding would assign them itself, and unassign()
        # would leave the rebalance waiting for one.
        self._unpositioned = [TopicPartition(p.topic, p.partition) for p in partitions]
        consumer.assign([])
        log.info(
            "assigned partitions=%s, start deferred until the store answers",
            [p.partition for p in partitions],
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Also called for partitions lost (no on_lost given). Partitions still waiting
        # for their start are forgotten: the next assignment says what is ours.
        self._unpositioned = None
        self._revocations += 1
        consumer.unassign()
        log.info("revoked partitions=%s", [p.partition for p in partitions])

    def _at_stored_positions(self, partitions: Sequence[TopicPartition]) -> list[TopicPartition]:
        """Step 1: ``partitions`` at the store's positions; where the store holds none,
        OFFSET_BEGINNING, or for a store that keeps no positions OFFSET_INVALID (Kafka's
        committed offset, then the earliest). Raises TransientStoreError while the
        store is away."""
        stored = self._store.stored_offsets(self._settings.topic) if partitions else {}
        unknown = OFFSET_BEGINNING if self._store.keeps_offsets else OFFSET_INVALID
        positioned = [
            TopicPartition(p.topic, p.partition, stored.get(p.partition, unknown))
            for p in partitions
        ]
        if self._store.keeps_offsets:
            self._warn_if_history_replayed([p for p in positioned if p.offset == OFFSET_BEGINNING])
        return positioned

    def _warn_if_history_replayed(self, from_start: list[TopicPartition]) -> None:
        """Warn when partitions the store holds no position for have offsets committed
        in Kafka past their earliest: the group applied them to another store (or to
        this one before it was emptied), and they are applied again from the start."""
        if not from_start:
            return
        try:
            committed = self._consumer.committed(from_start, timeout=OFFSET_LOOKUP_TIMEOUT_S)
            replayed: dict[int, tuple[int, int]] = {}
            for partition in committed:
                if partition.offset < 0:
                    continue  # nothing committed: a new group, nothing to replay
                low, _high = self._consumer.get_watermark_offsets(
                    partition, timeout=OFFSET_LOOKUP_TIMEOUT_S, cached=False
                )
                if partition.offset > low:
                    replayed[partition.partition] = (low, partition.offset)
        except KafkaException as exc:
            # Only a warning depends on it: the start is decided.
            log.info("could not compare Kafka's committed offsets with the store: %s", exc)
            return
        if replayed:
            log.warning(
                "the store holds no position for partitions=%s that Kafka's committed "
                "offsets show as consumed before (earliest, committed)=%s: an empty or "
                "replaced store; they are applied again from their earliest offset",
                sorted(replayed),
                replayed,
            )

    def _position_unpositioned(self) -> bool:
        """Step 1 for partitions assigned without a start: ask the store, with backoff,
        polling meanwhile; then assign them there. False when asked to stop first."""
        backoff = StoreBackoff(self._wait_polling)
        # A rebalance during the wait replaces the partitions waiting, or (revoked)
        # leaves none.
        while (partitions := self._unpositioned) is not None:
            try:
                positioned = self._at_stored_positions(partitions)
            except TransientStoreError as exc:
                if backoff.failed("start positions unknown", exc):
                    return False
                continue
            # Outside the rebalance callback: the eager protocol takes a whole new
            # assignment at any time. Nothing of these partitions was fetched before.
            self._assign_at(positioned, "store answered, assigned")
        return True

    def _assign_at(self, positioned: list[TopicPartition], what: str) -> None:
        self._consumer.assign(positioned)
        self._unpositioned = None
        metrics.STORE_UNAVAILABLE.set(0)
        log.info(
            "%s partitions=%s resume=%s",
            what,
            [p.partition for p in positioned],
            {p.partition: p.offset for p in positioned},
        )

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
            return
        metrics.STORE_BATCHES.observe(time.perf_counter() - started)
        crash_point(CRASH_AFTER_STORE_COMMIT)
        self._observe(decoded, report)
        # Step 5
        self._consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()],
            asynchronous=True,
        )
        crash_point(CRASH_AFTER_OFFSET_COMMIT)
        self.batches_applied += 1
        self._relay_outbox()

    def _relay_outbox(self) -> None:
        """Step 5: the events committed so far, to Kafka."""
        self._relay()
        self._next_relay = time.monotonic() + RELAY_RETRY_S

    def _apply_with_retry(
        self, decoded: _Decoded, next_offsets: dict[TopicPartitionKey, int]
    ) -> BatchReport | None:
        """The committed batch's report; None when it was dropped unapplied (a stop
        request, or its partitions revoked while it waited for the store)."""
        backoff = StoreBackoff(self._wait_polling)
        paused: list[TopicPartition] = []
        revocations = self._revocations
        try:
            while True:
                try:
                    return self._store.apply_batch(
                        updates=decoded.updates,
                        next_offsets=next_offsets,
                        written_at=self._clock(),
                        before_commit=lambda report: self._before_commit(decoded, report),
                    )
                except (TransientStoreError, RejectsNotDurable) as exc:
                    if not paused:
                        # Consumption pauses while the store is away; polling goes on so
                        # the group keeps this member (max.poll.interval.ms) and nothing
                        # is skipped.
                        paused = self._consumer.assignment()
                        self._consumer.pause(paused)
                    if backoff.failed("batch not applied", exc):
                        log.warning("stopping with an unapplied batch; consumed again on restart")
                        return None
                    if self._revocations != revocations:
                        # Applied now, it could race its partitions' next owner, which
                        # may already have read the store's positions: its messages
                        # would be applied twice (the store would not change, but its
                        # rejections and audit events would repeat).
                        log.info("partitions revoked while their batch waited; batch dropped")
                        return None
        finally:
            if paused:
                self._consumer.resume(paused)
                metrics.STORE_UNAVAILABLE.set(0)
                log.info("store back, consumption resumed")

    def _wait_polling(self, delay: float) -> bool:
        """Wait ``delay`` seconds while polling; True on stop.

        Every assigned partition is paused during a wait, and partitions assigned
        meanwhile stay out of the assignment until it ends (step 1, deferred), so no
        message can arrive: one would be a bug (it would have been skipped).
        """
        return wait_paused(self._consumer, delay, self._stop, why="the store")

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

    def _before_commit(self, decoded: _Decoded, report: BatchReport) -> None:
        # Step 4, inside the store's transaction
        self._report(decoded, report)
        crash_point(CRASH_BEFORE_STORE_COMMIT)

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
            producible = self._producible(rejection)
            self._producer.produce(
                self._settings.rejected_topic,
                key=producible.key,
                value=producible.value,
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

    def _producible(self, rejection: RejectedEvent) -> ProducibleRejection:
        producible = producible_rejection(
            rejection, codec=self._rejected, max_message_bytes=self._settings.rejected_max_bytes
        )
        if producible.truncated:
            log.warning(
                "rejection too large for the rejected topic, its value cut "
                "origin=%s partition=%s offset=%s value_bytes=%s kept=%s",
                rejection.origin_topic,
                rejection.origin_partition,
                rejection.origin_offset,
                len(rejection.value or b""),
                len(producible.event.value or b""),
            )
        return producible

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
        return consumed_rejection(
            message,
            stage="writer",
            reason=reason,
            rejected_at=self._clock(),
            source=source,
            event_id=event_id,
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
