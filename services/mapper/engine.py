"""The mapper's stream engine: changes and full-sync records in, profile updates out,
exactly once, with per-record state and the full-sync barrier.

Topology. One consumer group reads ``changes`` and ``fullsync``; range assignment
gives an instance partition p of both topics together (they are keyed alike), and
partition p's state (``PartitionState``) with them. Every instance also reads the
whole ``barrier`` topic, without a group, to know each source's latest full sync.

The life of a batch (one Kafka transaction):

1. New SyncControls are read from the barrier topic.
2. Up to ``batch_max_records`` messages are consumed and, in order, each is:
   rejected (undecodable, unknown source, a value the rules refuse); held (a
   real-time change of a source whose full sync is running: stored as it came, under
   its offset, in the partition's state); or applied (``apply_change`` against the
   record's state).
3. Holds that are due (the sync completed and this partition's fullsync position
   reached what COMPLETED names, or it was cancelled or failed) are released:
   applied in their original order, after the full sync's records and subject to
   the stale rule, then deleted.
4. Updates, audit events, rejections, the state's changelog writes and the consumed
   offsets are committed in one transaction; only then is the state written to the
   local RocksDB. A crash anywhere repeats the batch from the last commit with the
   state as of that commit, so nothing is lost and nothing applied twice
   (``read_committed`` readers never see an aborted batch).
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client import Counter

from services.core import metrics
from services.core.config import Settings
from services.core.contracts import (
    AuditEvent,
    ContactChange,
    FieldChange,
    FieldDrop,
    RejectedEvent,
    WireContracts,
)
from services.core.expressions import ExpressionError
from services.core.kafka import (
    PREFETCH_KBYTES,
    TopicNames,
    consumer_config,
    producer_config,
    reader_config,
    watermarks,
)
from services.core.serde import DecodeError
from services.mapper.barrier import Barriers
from services.mapper.rules.errors import RuleError
from services.mapper.rules.mapping import CompiledSource
from services.mapper.rules.record import RecordState, Step, apply_change
from services.mapper.state import PartitionState

log = logging.getLogger(__name__)

# Keys of a partition's state (and its changelog): one prefix per kind.
RECORD: Final = b"r"
HELD: Final = b"h"
RELEASED: Final = b"b"
OFFSET_DIGITS: Final = 20
RESTORE_BATCH: Final = 5_000
TRANSACTION_TIMEOUT_MS: Final = 60_000
# How long a vanished instance's partitions wait before others take them over.
SESSION_TIMEOUT_MS: Final = 15_000


def held_prefix(source: str) -> bytes:
    return HELD + source.encode() + b"\x00"


def held_key(source: str, offset: int) -> bytes:
    # Zero-padded so that key order is offset order: released in the order they came.
    return held_prefix(source) + str(offset).zfill(OFFSET_DIGITS).encode()


def default_instance_id(data_dir: Path) -> str:
    place = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{place}"


@dataclass(frozen=True)
class EngineSettings:
    group_id: str
    instance_id: str
    transactional_id: str
    data_dir: Path
    batch_max_records: int
    batch_max_wait_ms: int

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineSettings:
        mapper = settings.services.mapper
        prefix = settings.kafka.topics.prefix
        instance = mapper.instance_id or default_instance_id(mapper.data_dir)
        return cls(
            group_id=f"{prefix}mapper",
            instance_id=instance,
            transactional_id=f"{prefix}mapper-{instance}",
            data_dir=mapper.data_dir,
            batch_max_records=mapper.batch_max_records,
            batch_max_wait_ms=mapper.batch_max_wait_ms,
        )


class TransactionAborted(Exception):
    """The batch was rolled back; it is consumed again from the last commit."""


class MapperEngine:
    def __init__(
        self,
        settings: Settings,
        *,
        contracts: WireContracts,
        stop: threading.Event,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._engine = EngineSettings.from_settings(settings)
        self._topics = TopicNames.from_settings(settings.kafka)
        self._contracts = contracts
        self._stop = stop
        self._clock = clock
        self._sources = {
            name: CompiledSource.of(name, source) for name, source in settings.sources.items()
        }
        self._profile = settings.profile
        self._barriers = Barriers()
        self._barrier_positions: dict[int, int] = {}
        self._states: dict[int, PartitionState] = {}
        # Next offset to consume per (topic, partition), as of the last commit and as
        # of the batch in hand.
        self._committed: dict[tuple[str, int], int] = {}
        self._positions: dict[tuple[str, int], int] = {}
        self._changelog_offsets: dict[int, int] = {}
        self._delivery_error: KafkaError | None = None
        # What the batch in hand counts: held changes gained (or released) per source,
        # and counter increments. Metrics move only when the batch commits, so a batch
        # that aborts and is mapped again is counted once.
        self._held_change: dict[str, int] = {}
        self._counts: dict[tuple[Counter, tuple[str, ...]], int] = {}
        self.assigned = threading.Event()
        kafka = settings.kafka
        self._consumer = Consumer(
            {
                **consumer_config(
                    kafka, client_id="crmsync-mapper", group_id=self._engine.group_id
                ),
                # Range assignment keeps partition p of changes and of fullsync together.
                "partition.assignment.strategy": "range",
                # Static membership: a restarted instance takes its partitions back at
                # once instead of waiting out its old session and a rebalance.
                "group.instance.id": self._engine.instance_id,
                "queued.max.messages.kbytes": PREFETCH_KBYTES,
                "session.timeout.ms": SESSION_TIMEOUT_MS,
            }
        )
        self._producer = Producer(
            {
                **producer_config(kafka, client_id="crmsync-mapper"),
                "transactional.id": self._engine.transactional_id,
                "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            }
        )
        self._barrier_reader = Consumer(
            reader_config(settings.kafka, client_id="crmsync-mapper-barrier")
        )
        self._restorer = Consumer(
            {
                **reader_config(kafka, client_id="crmsync-mapper-restore"),
                "enable.partition.eof": True,
                "queued.max.messages.kbytes": PREFETCH_KBYTES,
            }
        )

    # --- the loop -------------------------------------------------------------------

    def run(self) -> None:
        # Fences an earlier incarnation of this instance and aborts its open transaction.
        self._producer.init_transactions(TRANSACTION_TIMEOUT_MS / 1000)
        self._start_barrier_reader()
        self._consumer.subscribe(
            [self._topics.changes, self._topics.fullsync],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        try:
            while not self._stop.is_set():
                self._read_barrier()
                messages = self._consumer.consume(
                    self._engine.batch_max_records, self._engine.batch_max_wait_ms / 1000
                )
                try:
                    self._batch(messages)
                except TransactionAborted:
                    self._rewind()
        finally:
            self._close()

    def _batch(self, messages: list[Message]) -> None:
        live = [m for m in messages if not self._skip(m)]
        if any(m.topic() == self._topics.changes for m in live):
            self._catch_up_barrier()
        due = self._due_releases()
        if not live and not due:
            return
        with metrics.MAPPER_BATCHES.time():
            self._transaction(live, due)

    def _transaction(self, live: list[Message], due: list[tuple[int, str, str]]) -> None:
        self._producer.begin_transaction()
        try:
            for message in live:
                self._handle(message)
            for partition, source, sync_id in due:
                self._release(partition, source, sync_id)
            self._commit()
        except TransactionAborted:
            raise
        except KafkaException as exc:
            self._abort(exc)
        for state in self._states.values():
            if state.staged:
                state.commit(self._changelog_offsets[state.partition])
        self._committed.update(self._positions)
        for source, change in self._held_change.items():
            metrics.MAPPER_HELD.labels(source).inc(change)
        for (counter, labels), amount in self._counts.items():
            counter.labels(*labels).inc(amount)
        self._held_change = {}
        self._counts = {}

    def _count(self, counter: Counter, *labels: str) -> None:
        key = (counter, labels)
        self._counts[key] = self._counts.get(key, 0) + 1

    def _skip(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return False
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error: %s", error)
        return True

    def _commit(self) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._positions.items()]
        self._producer.send_offsets_to_transaction(
            offsets, self._consumer.consumer_group_metadata()
        )
        # flush() serves the changelog's delivery reports before the commit, so their
        # offsets are known when RocksDB is written.
        self._producer.flush()
        if self._delivery_error is not None:
            raise KafkaException(self._delivery_error)
        for attempt in range(5):
            try:
                self._producer.commit_transaction()
                return
            except KafkaException as exc:
                if exc.args[0].retriable() and attempt < 4:
                    continue
                raise

    def _abort(self, exc: KafkaException) -> None:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if error is not None and error.fatal():
            raise exc
        log.warning("transaction aborted, the batch is consumed again: %s", exc)
        self._producer.abort_transaction()
        raise TransactionAborted from exc

    def _rewind(self) -> None:
        self._delivery_error = None
        self._held_change = {}
        self._counts = {}
        for state in self._states.values():
            state.abort()
        for (topic, partition), offset in self._committed.items():
            if self._positions.get((topic, partition)) != offset:
                self._consumer.seek(TopicPartition(topic, partition, offset))
        self._positions = dict(self._committed)

    # --- one message ----------------------------------------------------------------

    def _handle(self, message: Message) -> None:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        self._positions[(topic, partition)] = offset + 1
        state = self._states[partition]
        value = message.value()
        if value is None:
            self._reject(message, reason="empty message value")
            return
        try:
            change = self._contracts.contact_change.decode(value)
        except DecodeError as exc:
            self._reject(message, reason=f"undecodable ContactChange: {exc}")
            return
        source = self._sources.get(change.source)
        if source is None:
            reason = f"source {change.source!r} is not configured"
            self._reject(message, reason=reason, change=change)
            return
        if topic == self._topics.changes and self._holding(state, change.source, offset):
            self._write(state, held_key(change.source, offset), value)
            self._held_change[change.source] = self._held_change.get(change.source, 0) + 1
            return
        self._apply(change, source, state, message)

    def _apply(
        self, change: ContactChange, source: CompiledSource, state: PartitionState, origin: Any
    ) -> None:
        key = RECORD + change.key
        raw = state.get(key)
        record = RecordState.decode(raw) if raw is not None else None
        try:
            step = apply_change(record, change, source=source, profile=self._profile)
        except (RuleError, ExpressionError) as exc:
            self._reject(origin, reason=str(exc), change=change)
            return
        if step.state is not None:
            encoded = step.state.encode()
            if encoded != raw:
                self._write(state, key, encoded)
        for drop in step.drops:
            self._count(metrics.MAPPER_DROPS, change.source, drop.code)
        if step.update is not None:
            self._count(metrics.PROFILE_UPDATES, change.source)
            self._producer.produce(
                self._topics.profile_updates,
                key=step.update.key,
                value=self._contracts.profile_update.encode(step.update),
            )
        if step.changes or step.drops:
            self._audit(change, step)

    def _audit(self, change: ContactChange, step: Step) -> None:
        update = step.update
        event = AuditEvent(
            match_key=update.match_key if update is not None else f"crm:{change.key.decode()}",
            source=change.source,
            record_id=change.record_id,
            event_id=change.event_id,
            decided_at=self._clock(),
            mapping_version=self._sources[change.source].settings.mapping_version,
            changes=tuple(FieldChange(c.attribute, c.old, c.new, c.rule) for c in step.changes),
            dropped=tuple(FieldDrop(d.attribute, d.code, d.reason) for d in step.drops),
        )
        self._producer.produce(
            self._topics.audit, key=event.key, value=self._contracts.audit_event.encode(event)
        )

    def _write(self, state: PartitionState, key: bytes, value: bytes | None) -> None:
        state.put(key, value)
        self._producer.produce(
            self._topics.mapper_state,
            key=key,
            value=value,
            partition=state.partition,
            on_delivery=self._delivered,
        )

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._delivery_error = error
            return
        partition, offset = message.partition(), message.offset()
        if partition is not None and offset is not None:
            previous = self._changelog_offsets.get(partition, -1)
            self._changelog_offsets[partition] = max(previous, offset)

    def _reject(self, origin: Any, *, reason: str, change: ContactChange | None = None) -> None:
        source = change.source if change is not None else None
        self._count(metrics.EVENTS_REJECTED, "mapper", source or "", "invalid")
        if isinstance(origin, Message):
            key, value = origin.key(), origin.value()
            topic, partition, offset = origin.topic(), origin.partition(), origin.offset()
        else:
            key, value, (topic, partition, offset) = origin
        rejected = RejectedEvent(
            stage="mapper",
            reason=reason,
            rejected_at=self._clock(),
            source=source,
            event_id=change.event_id if change is not None else None,
            key=key,
            value=value,
            origin_topic=topic,
            origin_partition=partition,
            origin_offset=offset,
        )
        self._producer.produce(
            self._topics.rejected,
            key=key or b"",
            value=self._contracts.rejected_event.encode(rejected),
        )

    # --- the barrier ----------------------------------------------------------------

    def _start_barrier_reader(self) -> None:
        topic = self._topics.barrier
        metadata = self._barrier_reader.list_topics(topic, timeout=30)
        partitions = metadata.topics[topic].partitions
        self._barrier_reader.assign([TopicPartition(topic, p, 0) for p in partitions])
        self._barrier_positions = dict.fromkeys(partitions, 0)
        # Everything already on the barrier is known before the first change is mapped.
        ends = {
            p: watermarks(self._barrier_reader, TopicPartition(topic, p))[1] for p in partitions
        }
        deadline = time.monotonic() + 60
        while any(end > 0 for end in ends.values()) and time.monotonic() < deadline:
            message = self._barrier_reader.poll(0.2)
            if message is None or message.error():
                continue
            self._observe(message)
            partition, offset = message.partition(), message.offset()
            if partition is not None and offset is not None and offset + 1 >= ends[partition]:
                ends[partition] = 0

    def _read_barrier(self) -> None:
        for message in self._barrier_reader.consume(100, 0):
            if not message.error():
                self._observe(message)

    def _catch_up_barrier(self) -> None:
        """Read the barrier up to the end its reader last heard of, before mapping
        real-time changes.

        A change is held by its offset against STARTED's, so STARTED should be known
        before any change after it is mapped. The reader long-polls the barrier, so
        the end it knows trails a new control by a fetch round trip; a change mapped
        in that window before its STARTED was seen is applied rather than held, which
        the per-field version rule keeps correct. (Asking the broker for the end on
        every batch would close the window at ~100 ms a batch.)
        """
        topic = self._topics.barrier
        for partition in list(self._barrier_positions):
            end = self._barrier_reader.get_watermark_offsets(
                TopicPartition(topic, partition), cached=True
            )[1]
            if end is None or end < 0:
                continue
            deadline = time.monotonic() + 10
            while self._barrier_positions[partition] < end and time.monotonic() < deadline:
                message = self._barrier_reader.poll(0.1)
                if message is not None and not message.error():
                    self._observe(message)
            if self._barrier_positions[partition] < end:
                # Nothing readable up to the end (e.g. a transaction marker): go on.
                log.warning("barrier partition %d: no message up to offset %d", partition, end)
                self._barrier_positions[partition] = end

    def _observe(self, message: Message) -> None:
        partition, offset = message.partition(), message.offset()
        if partition is not None and offset is not None:
            self._barrier_positions[partition] = offset + 1
        value = message.value()
        if value is None:
            return
        try:
            control = self._contracts.sync_control.decode(value)
        except DecodeError as exc:
            log.error("undecodable SyncControl at offset %s ignored: %s", message.offset(), exc)
            return
        starts = {p.partition: p.offset for p in control.changes_start_offsets}
        log.info(
            "full sync %s of %s: %s%s",
            control.sync_id,
            control.source,
            control.kind.value.lower(),
            f" (holding changes from offsets {starts})" if starts else "",
        )
        self._barriers.observe(control)

    def _released(self, state: PartitionState, source: str) -> str | None:
        value = state.get(RELEASED + source.encode())
        return value.decode() if value is not None else None

    def _holding(self, state: PartitionState, source: str, offset: int) -> bool:
        if self._barriers.latest(source) is None:
            return False
        return self._barriers.holding(
            source,
            partition=state.partition,
            offset=offset,
            released=self._released(state, source),
        )

    def _due_releases(self) -> list[tuple[int, str, str]]:
        due = []
        for partition, state in self._states.items():
            position = self._positions.get((self._topics.fullsync, partition), 0)
            for source in self._barriers.sources():
                sync_id = self._barriers.due(
                    source,
                    partition=partition,
                    fullsync_position=position,
                    released=self._released(state, source),
                )
                if sync_id is not None:
                    due.append((partition, source, sync_id))
        return due

    def _release(self, partition: int, source_name: str, sync_id: str) -> None:
        state = self._states[partition]
        source = self._sources.get(source_name)
        released = 0
        for key, value in list(state.items(held_prefix(source_name))):
            # Held changes were decoded before they were held.
            change = self._contracts.contact_change.decode(value)
            origin = (
                change.key,
                value,
                (self._topics.changes, partition, int(key[-OFFSET_DIGITS:])),
            )
            if source is None:
                self._reject(
                    origin, reason=f"source {source_name!r} is not configured", change=change
                )
            else:
                self._apply(change, source, state, origin)
            self._write(state, key, None)
            released += 1
        self._write(state, RELEASED + source_name.encode(), sync_id.encode())
        if released:
            self._held_change[source_name] = self._held_change.get(source_name, 0) - released
        log.info(
            "full sync %s of %s: released %d held changes on partition %d",
            sync_id,
            source_name,
            released,
            partition,
        )

    # --- partitions -----------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted({tp.partition for tp in partitions})
        started = time.monotonic()
        for state in self._restore([n for n in numbers if n not in self._states]):
            self._states[state.partition] = state
            for key, _value in state.items(HELD):
                metrics.MAPPER_HELD.labels(_held_source(key)).inc()
        committed = consumer.committed(partitions, timeout=30)
        for tp in committed:
            offset = tp.offset
            if offset == OFFSET_INVALID or offset < 0:
                offset = watermarks(consumer, tp)[0]
            self._committed[(tp.topic, tp.partition)] = offset
            self._positions[(tp.topic, tp.partition)] = offset
        log.info(
            "assigned partitions %s, state ready in %.1fs", numbers, time.monotonic() - started
        )
        self.assigned.set()

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._committed.pop((tp.topic, tp.partition), None)
            self._positions.pop((tp.topic, tp.partition), None)
            state = self._states.pop(tp.partition, None)
            if state is not None:
                for key, _value in state.items(HELD):
                    metrics.MAPPER_HELD.labels(_held_source(key)).dec()
                state.close()
        if not self._states:
            self.assigned.clear()

    def _restore(self, partitions: list[int]) -> list[PartitionState]:
        """Open the partitions' local state and catch it up with the changelog, all
        partitions at once."""
        topic = self._topics.mapper_state
        states = {
            p: PartitionState(self._engine.data_dir / "state" / str(p), partition=p)
            for p in partitions
        }
        starts: dict[int, int] = {}
        for partition, state in states.items():
            start = state.applied_offset() + 1
            low, high = watermarks(self._restorer, TopicPartition(topic, partition))
            # The last offset of a changelog is often a transaction's commit marker,
            # which is not a record: reading to the end tells.
            if high > max(start, low):
                starts[partition] = max(start, low)
        if not starts:
            return list(states.values())
        self._restorer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        pending: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in starts}
        last = {p: o - 1 for p, o in starts.items()}
        restored = dict.fromkeys(starts, 0)
        reading = set(starts)
        while reading:
            message = self._restorer.poll(1.0)
            if message is None:
                continue
            number, error = message.partition(), message.error()
            assert number is not None
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                reading.discard(number)
            else:
                key, offset = message.key(), message.offset()
                if key is not None and offset is not None:
                    pending[number].append((key, message.value()))
                    last[number] = offset
            batch = pending[number]
            if batch and (len(batch) >= RESTORE_BATCH or number not in reading):
                states[number].restore(batch, last_offset=last[number])
                restored[number] += len(batch)
                pending[number] = []
        self._restorer.unassign()
        log.info("restored state records from the changelog: %s", restored)
        return list(states.values())

    def _close(self) -> None:
        try:
            self._consumer.close()
        finally:
            for state in self._states.values():
                state.close()
            self._states.clear()
            self._barrier_reader.close()
            self._restorer.close()
            self._producer.flush(10)


def _held_source(key: bytes) -> str:
    return key[len(HELD) :].split(b"\x00", 1)[0].decode()
