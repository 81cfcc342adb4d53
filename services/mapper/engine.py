"""The mapper's stream engine: changes and full-sync records in, profile updates out,
exactly once, with per-record state and the full-sync barrier.

Topology. One consumer group reads ``changes`` and ``fullsync``; range assignment
gives an instance partition p of both topics together (they are keyed alike), and
partition p's state (``PartitionState``) with them. Every instance also reads the
whole ``barrier`` topic, without a group, to know each source's latest full sync.

The life of a batch (one Kafka transaction):

1. New SyncControls are read from the barrier topic.
2. Up to ``batch_max_records`` messages are consumed and, in order, each is:
   rejected (undecodable, unknown source, a value the rules refuse, an output larger
   than the broker takes, any other failure of that one message: to ``rejected``
   with the full reason, and one log line without the record's values); held (a
   real-time change of a source whose full sync is running: stored as it came, under
   its offset, in the partition's state); or applied (``apply_change`` against the
   record's state; a value dropped under ``on_invalid: drop_field`` is counted and
   logged, without the value). A message's outputs are all built and checked before
   the first is sent, so a rejected message leaves nothing behind.
3. Holds that are due (the sync completed and this partition's fullsync position
   reached what COMPLETED names, or it was cancelled or failed) are released in
   chunks of at most ``batch_max_records`` a transaction, in their original order,
   after the full sync's records and subject to the stale rule; a partition is
   marked released only with its last chunk, and changes arriving meanwhile are held
   behind the ones being released.
4. Updates, audit events, rejections, the state's changelog writes and the consumed
   offsets are committed in one transaction; only then is the state written to the
   local RocksDB. A failed transaction is aborted and every assigned partition goes
   back to its last committed position, with the state as of that commit; a crash
   anywhere repeats the batch the same way. So nothing is lost and nothing applied
   twice (``read_committed`` readers never see an aborted batch).

On assignment the group's committed offsets are read first, then each partition's
state is restored from its changelog up to the end that follows them
(``services.mapper.restore``).

The stream loop, its transactions and partition assignment in one class, since they
share the loop's state (positions, partition states, the open transaction) and their
order is the guarantee; the barrier's reading (barrier_feed.py), its decisions
(barrier.py), state (state.py) and restore (restore.py) are their own modules. Hence
over 400 lines.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

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
from services.core.codecs import WireContracts
from services.core.config import Settings
from services.core.contracts import ContactChange, RejectedEvent, audit_record
from services.core.contracts import Origin as ChangeOrigin
from services.core.crash_points import crash_point
from services.core.kafka import (
    PREFETCH_KBYTES,
    SESSION_TIMEOUT_MS,
    ConsumerLag,
    TopicNames,
    consumer_config,
    is_error,
    kafka_error,
    producer_config,
    reader_config,
    watermarks,
)
from services.core.progress import Progress
from services.core.rejections import (
    DEFAULT_MESSAGE_MAX_BYTES,
    producible_rejection,
    rejection_message_limit,
)
from services.core.retry import Backoff, RetryPolicy, logged
from services.core.serde import DecodeError
from services.mapper.barrier import Barriers
from services.mapper.barrier_feed import BarrierFeed
from services.mapper.rejection_log import (
    Refused,
    log_dropped,
    log_rejection,
    rejected_reason,
)
from services.mapper.restore import DEFAULT_DELETE_RETENTION_MS, Changelog, open_states, restore
from services.mapper.rules.mapping import CompiledSource
from services.mapper.rules.record import RecordState, Step, apply_change
from services.mapper.state import PartitionState
from services.mapper.transaction import TransactionAborted, TransactionalProducer

log = logging.getLogger(__name__)

# Keys of a partition's state (and its changelog): one prefix per kind.
RECORD: Final = b"r"
HELD: Final = b"h"
RELEASED: Final = b"b"
OFFSET_DIGITS: Final = 20
TRANSACTION_TIMEOUT_MS: Final = 60_000
OUTPUT_LINGER_MS: Final = 100
# A loop that has not moved on for this long is stalled (/healthz fails): twice what
# the longest healthy wait (a transaction's timeout) may take.
STALL_AFTER_S: Final = 2 * TRANSACTION_TIMEOUT_MS / 1000
# Waits after an aborted transaction, from 0.1 s doubling to 5 s with jitter: a
# failing broker is not hammered.
ABORT_RETRY: Final = RetryPolicy(initial_s=0.1, max_s=5.0)
# Waits while the group's committed offsets are held by an undecided transaction, up to
# twice a transaction's timeout (by then the broker has aborted it).
COMMITTED_RETRY: Final = RetryPolicy(
    initial_s=0.2, max_s=5.0, within_s=2 * TRANSACTION_TIMEOUT_MS / 1000
)
INSTANCE_ID_ENV: Final = "CRMSYNC_MAPPER_INSTANCE_ID"
DATA_DIR_ENV: Final = "CRMSYNC_MAPPER_DATA_DIR"
# Set by `make run` (services.devstack), where the default instance id is fine.
DEVSTACK_ENV: Final = "CRMSYNC_DEVSTACK"
# The named moments a fault test may kill the mapper at (CRMSYNC_CRASH_AT).
CRASH_POINTS: Final = (
    "mapper-before-produce",
    "mapper-after-produce",
    "mapper-before-commit",
    "mapper-after-commit",
    "mapper-mid-release",
)

Origin = tuple[bytes | None, bytes | None, tuple[str, int, int]]
"""Where a rejected input came from: key, value, (topic, partition, offset)."""
OUTBOUND_ONLY: Final = "outbound_only"
"""Why a change of a system crmsync only writes to is dropped."""


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
    message_max_bytes: int
    changelog_delete_retention_ms: int

    @classmethod
    def from_settings(
        cls, settings: Settings, environ: dict[str, str] | None = None
    ) -> EngineSettings:
        """The config's values, with this process's own identity from the environment
        (one config file can serve several mapper processes)."""
        env = os.environ if environ is None else environ
        mapper = settings.services.mapper
        prefix = settings.kafka.topics.prefix
        data_dir = Path(env[DATA_DIR_ENV]) if env.get(DATA_DIR_ENV) else mapper.data_dir
        instance = env.get(INSTANCE_ID_ENV) or mapper.instance_id
        if instance is None:
            instance = default_instance_id(data_dir)
            if not env.get(DEVSTACK_ENV):
                log.warning(
                    "mapper instance_id not set, using %s from the host name: set "
                    "services.mapper.instance_id or %s so that a restarted container "
                    "fences its former self",
                    instance,
                    INSTANCE_ID_ENV,
                )
        state_config = settings.kafka.topics.mapper_state.config
        return cls(
            group_id=f"{prefix}mapper",
            instance_id=instance,
            transactional_id=f"{prefix}mapper-{instance}",
            data_dir=data_dir,
            batch_max_records=mapper.batch_max_records,
            batch_max_wait_ms=mapper.batch_max_wait_ms,
            message_max_bytes=int(
                settings.kafka.client.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES)
            ),
            changelog_delete_retention_ms=int(
                state_config.get("delete.retention.ms", DEFAULT_DELETE_RETENTION_MS)
            ),
        )


class MapperEngine:
    def __init__(
        self,
        settings: Settings,
        *,
        contracts: WireContracts,
        stop: threading.Event,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        wrap_producer: Callable[[Producer], Producer] | None = None,
        progress: Progress | None = None,
    ) -> None:
        """``wrap_producer`` lets a fault test put its hand between the engine and its
        producer (to fail a send on purpose); production never passes one."""
        self._settings = settings
        self._engine = EngineSettings.from_settings(settings)
        self._topics = TopicNames.from_settings(settings.kafka)
        self._changelog = Changelog(
            self._topics.mapper_state, self._engine.changelog_delete_retention_ms
        )
        self._contracts = contracts
        self._audit_converter = contracts.audit_event.converter
        self._rejection_limit = rejection_message_limit(settings.kafka)
        self._stop = stop
        self._clock = clock
        self._sources = {
            name: CompiledSource.of(name, source) for name, source in settings.sources.items()
        }
        self._profile = settings.profile
        # Systems crmsync writes to and is the truth for: their changes set nothing on a
        # profile; only the links of ids they gave crmsync's own writes come in.
        self._outbound_only = frozenset(
            d.source
            for d in settings.destinations.values()
            if d.direction == "outbound" and d.source is not None
        )
        self._barriers = Barriers()
        self._states: dict[int, PartitionState] = {}
        # Next offset to consume per (topic, partition), as of the last commit and as
        # of the batch in hand.
        self._committed: dict[tuple[str, int], int] = {}
        self._positions: dict[tuple[str, int], int] = {}
        # What the batch in hand counts: held changes gained (or released) per source,
        # and counter increments. Metrics move only when the batch commits, so a batch
        # that aborts and is mapped again is counted once.
        self._held_change: dict[str, int] = {}
        self._counts: dict[tuple[Counter, tuple[str, ...]], int] = {}
        self._decided_at = clock()
        self.assigned = threading.Event()
        self.progress = progress or Progress("mapper", stall_after_s=STALL_AFTER_S)
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
        producer_settings = {
            **producer_config(kafka, client_id="crmsync-mapper"),
            "transactional.id": self._engine.transactional_id,
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            # Nothing sent in a transaction is readable before its commit, which
            # flushes: lingering costs no latency, and fewer, fuller produce requests
            # halved the broker's CPU per change (5 ms: a request per partition every
            # 5 ms of a batch's mapping).
            "linger.ms": OUTPUT_LINGER_MS,
        }

        def make_producer() -> Producer:
            producer = Producer(producer_settings)
            return wrap_producer(producer) if wrap_producer is not None else producer

        self._out = TransactionalProducer(
            make_producer,
            transaction_timeout_s=TRANSACTION_TIMEOUT_MS / 1000,
            message_max_bytes=self._engine.message_max_bytes,
        )
        self._lag = ConsumerLag(self._consumer, group=self._engine.group_id)
        self._barrier = BarrierFeed(
            Consumer(
                {
                    **reader_config(settings.kafka, client_id="crmsync-mapper-barrier"),
                    "enable.partition.eof": True,
                }
            ),
            topic=self._topics.barrier,
            codec=contracts.sync_control,
            barriers=self._barriers,
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
        try:
            # Fences an earlier incarnation of this instance and aborts its open
            # transaction.
            if not self._out.init(self._stop):
                return
            self.progress.beat("transactions initialised")
            if not self._barrier.start(self._stop):
                return
            self.progress.beat("barrier read")
            self._consumer.subscribe(
                [self._topics.changes, self._topics.fullsync],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
            backoff = Backoff(ABORT_RETRY)
            while not self._stop.is_set():
                self._barrier.poll()
                messages = self._consumer.consume(
                    self._engine.batch_max_records, self._engine.batch_max_wait_ms / 1000
                )
                self._lag()
                try:
                    self._batch(messages)
                except TransactionAborted:
                    metrics.MAPPER_ABORTS.inc()
                    self._rewind()
                    self._stop.wait(backoff.next_wait_s())
                    continue
                backoff.reset()
                self.progress.beat("batch committed" if messages else "polled, nothing new")
        finally:
            self._close()

    def _batch(self, messages: list[Message]) -> None:
        live = [m for m in messages if not is_error(m)]
        if any(m.topic() == self._topics.changes for m in live):
            self._barrier.catch_up()
        due = self._due_releases()
        if not live and not due:
            return
        with metrics.MAPPER_BATCHES.time():
            self._transaction(live, due)

    def _transaction(self, live: list[Message], due: list[tuple[int, str, str]]) -> None:
        self._out.begin()
        try:
            crash_point("mapper-before-produce")
            # One clock read for the batch: its decisions are stamped alike.
            self._decided_at = self._clock()
            for message in live:
                self._handle(message)
            budget = self._engine.batch_max_records
            for partition, source, sync_id in due:
                if budget <= 0:
                    break
                budget -= self._release(partition, source, sync_id, budget)
            self._send_changelog()
            crash_point("mapper-after-produce")
            offsets = [TopicPartition(t, p, o) for (t, p), o in self._positions.items()]
            self._out.commit(offsets, self._consumer.consumer_group_metadata())
        except KafkaException as exc:
            self._out.abort(exc)
        crash_point("mapper-after-commit")
        for state in self._states.values():
            if state.staged:
                state.commit(
                    self._out.delivered_offsets[(self._topics.mapper_state, state.partition)]
                )
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

    def _rewind(self) -> None:
        """Every assigned partition back to its last committed position, whether or not
        the failed batch had reached its messages: a batch is redone whole."""
        self._held_change = {}
        self._counts = {}
        for state in self._states.values():
            state.abort()
        for (topic, partition), offset in self._committed.items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                # A partition not fetching yet has delivered nothing: it starts at its
                # committed offset anyway. One that delivered must go back.
                if self._positions.get((topic, partition), offset) != offset:
                    raise
                log.info("%s[%d] not fetching yet, no seek needed: %s", topic, partition, exc)
        self._positions = dict(self._committed)

    # --- one message ----------------------------------------------------------------

    def _handle(self, message: Message) -> None:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        self._positions[(topic, partition)] = offset + 1
        state = self._states[partition]
        key, value = message.key(), message.value()
        origin: Origin = (key, value, (topic, partition, offset))
        change: ContactChange | None = None
        try:
            if value is None:
                raise Refused("empty message value")
            change = self._decode(value)
            source = self._source(change.source)
            if topic == self._topics.changes and self._holding(state, change.source, offset):
                self._write(state, held_key(change.source, offset), value)
                self._held_change[change.source] = self._held_change.get(change.source, 0) + 1
                return
            self._apply(change, source, state)
        except KafkaException:
            raise
        except Exception as exc:  # one bad message never stops the stream
            self._reject(origin, error=exc, change=change)

    def _decode(self, value: bytes) -> ContactChange:
        try:
            return self._contracts.contact_change.decode(value)
        except DecodeError as exc:
            # The decoder's message may quote the bytes: the log gets the summary.
            raise Refused(
                f"undecodable ContactChange: {exc}", summary="undecodable ContactChange"
            ) from exc

    def _source(self, name: str) -> CompiledSource:
        source = self._sources.get(name)
        if source is None:
            raise Refused(f"source {name!r} is not configured")
        return source

    def _apply(self, change: ContactChange, source: CompiledSource, state: PartitionState) -> None:
        """Map one change; every output is built and size-checked before any is sent."""
        if change.source in self._outbound_only and change.origin is not ChangeOrigin.WRITE_BACK:
            self._count(metrics.MAPPER_DROPS, change.source, OUTBOUND_ONLY)
            return
        key = RECORD + change.key
        raw = state.get(key)
        record = RecordState.decode(raw) if raw is not None else None
        step = apply_change(record, change, source=source, profile=self._profile)
        encoded = step.state.encode() if step.state is not None else None
        new_state = encoded if encoded is not None and encoded != raw else None
        outputs: list[tuple[str, bytes, bytes]] = []
        if step.update is not None:
            update = self._contracts.profile_update.encode(step.update)
            outputs.append((self._topics.profile_updates, step.update.key, update))
        if step.changes or step.drops:
            outputs.append(self._audit(change, step))
        for topic, out_key, value in outputs:
            self._out.check_size(topic, out_key, value)
        if new_state is not None:
            self._write(state, key, new_state)
        for topic, out_key, value in outputs:
            self._out.send(topic, key=out_key, value=value)
        for drop in step.drops:
            self._count(metrics.MAPPER_DROPS, change.source, drop.code)
        for refused in step.invalid:
            self._count(metrics.FIELD_REJECTIONS, change.source, refused.attribute)
            log_dropped(change, refused)
        if step.update is not None:
            self._count(metrics.PROFILE_UPDATES, change.source)

    def _audit(self, change: ContactChange, step: Step) -> tuple[str, bytes, bytes]:
        update = step.update
        match_key = update.match_key if update is not None else f"crm:{change.key.decode()}"
        # The record straight from the step: its changes and drops are (field, old, new,
        # rule) and (field, code, reason) tuples already.
        record = audit_record(
            match_key=match_key,
            source=change.source,
            record_id=change.record_id,
            event_id=change.event_id,
            decided_at=self._decided_at,
            mapping_version=self._sources[change.source].settings.mapping_version,
            changes=step.changes,
            dropped=step.drops,
        )
        return self._topics.audit, match_key.encode(), self._audit_converter.encode(record)

    def _write(self, state: PartitionState, key: bytes, value: bytes | None) -> None:
        """Stage a state write; it goes to the changelog with the batch's others."""
        self._out.check_size(self._topics.mapper_state, key, value)
        state.put(key, value)

    def _send_changelog(self) -> None:
        """Each key's last staged value, once per batch (a record changed by several of
        the batch's changes is written once), to its partition's changelog."""
        topic = self._topics.mapper_state
        for state in self._states.values():
            for key, value in state.staged.items():
                self._out.send(topic, key=key, value=value, partition=state.partition)

    def _reject(
        self, origin: Origin, *, error: BaseException, change: ContactChange | None
    ) -> None:
        source = change.source if change is not None else None
        self._count(metrics.EVENTS_REJECTED, "mapper", source or "", "invalid")
        key, value, (topic, partition, offset) = origin
        log_rejection(error, change=change, origin=(topic, partition, offset))
        rejected = RejectedEvent(
            stage="mapper",
            reason=rejected_reason(error),
            rejected_at=self._decided_at,
            source=source,
            event_id=change.event_id if change is not None else None,
            key=key,
            value=value,
            origin_topic=topic,
            origin_partition=partition,
            origin_offset=offset,
        )
        producible = producible_rejection(
            rejected,
            codec=self._contracts.rejected_event,
            max_message_bytes=self._rejection_limit,
        )
        self._out.send(self._topics.rejected, key=producible.key or b"", value=producible.value)

    # --- the barrier ----------------------------------------------------------------

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

    def _release(self, partition: int, source_name: str, sync_id: str, budget: int) -> int:
        """Release up to ``budget`` of what ``partition`` holds for the source, oldest
        first; the partition is marked released with the last of them. Returns how many
        were released."""
        state = self._states[partition]
        released = 0
        finished = True
        for key, value in state.items(held_prefix(source_name)):
            if released >= budget:
                finished = False
                break
            crash_point("mapper-mid-release")
            origin: Origin = (None, value, (self._topics.changes, partition, _held_offset(key)))
            change: ContactChange | None = None
            try:
                change = self._decode(value)
                self._apply(change, self._source(source_name), state)
            except KafkaException:
                raise
            except Exception as exc:  # nor one bad held change a release
                self._reject(origin, error=exc, change=change)
            self._write(state, key, None)
            released += 1
        if finished:
            self._write(state, RELEASED + source_name.encode(), sync_id.encode())
        if released:
            self._held_change[source_name] = self._held_change.get(source_name, 0) - released
        log.info(
            "full sync %s of %s: released %d held changes on partition %d%s",
            sync_id,
            source_name,
            released,
            partition,
            "" if finished else " (more in the next transaction)",
        )
        return released

    # --- partitions -----------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted({tp.partition for tp in partitions})
        started = time.monotonic()
        # Committed offsets first: the restore then reads the changelog up to an end
        # that includes every transaction those offsets include.
        committed = self._committed_offsets(consumer, partitions)
        new = [n for n in numbers if n not in self._states]
        states = open_states(self._restorer, self._changelog, self._engine.data_dir / "state", new)
        restored = restore(
            self._restorer,
            self._changelog,
            states,
            deadline_s=2 * TRANSACTION_TIMEOUT_MS / 1000,
            beat=self.progress.beat,
        )
        if restored:
            log.info("restored state records from the changelog: %s", restored)
        for state in states.values():
            self._states[state.partition] = state
            for key, _value in state.items(HELD):
                metrics.MAPPER_HELD.labels(_held_source(key)).inc()
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

    def _committed_offsets(
        self, consumer: Consumer, partitions: list[TopicPartition]
    ) -> list[TopicPartition]:
        """The group's committed offsets, once every transaction that commits some is
        decided (librdkafka asks for stable offsets under read_committed). A zombie's
        transaction stays undecided until it wakes or times out: wait for it."""
        for attempt in COMMITTED_RETRY.retrying(
            on=KafkaException,
            when=_committed_may_come,
            before_sleep=logged(log, "committed offsets not readable yet"),
        ):
            with attempt:
                return list(consumer.committed(partitions, timeout=30))
        raise AssertionError("the retry loop ends by returning or raising")

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

    def _close(self) -> None:
        try:
            self._consumer.close()
        finally:
            for state in self._states.values():
                state.close()
            self._states.clear()
            self._barrier.close()
            self._restorer.close()
            self._out.close()


def _committed_may_come(failure: BaseException) -> bool:
    error = kafka_error(failure)
    return error is not None and (error.retriable() or error.code() == KafkaError._TIMED_OUT)


def _held_offset(key: bytes) -> int:
    return int(key[-OFFSET_DIGITS:])


def _held_source(key: bytes) -> str:
    return key[len(HELD) :].split(b"\x00", 1)[0].decode()
