"""The writer loop's step 1 without a broker: where partitions start when the store is away
or holds no position for them.

A fake consumer plays librdkafka's part as far as the loop can tell: eager rebalances
(revoke everything, then assign) served inside consume() and poll(), assign() with an
explicit offset, OFFSET_BEGINNING or OFFSET_INVALID (Kafka's committed offset, else the
earliest), and a pause that survives a new assignment. A fake store holds positions and
records which messages reached it, so a message fetched from the wrong position shows up
as one applied twice or one that should not have been applied at all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, Message, TopicPartition
from prometheus_client.registry import REGISTRY

from services.core import metrics
from services.core.codecs import load_contracts
from services.core.contracts import ProfileUpdate
from services.core.retry import RetryPolicy
from services.writer import loop as writer_loop
from services.writer import main as writer_main
from services.writer.loop import LoopSettings, WriterLoop
from services.writer.stores.base import BatchReport, BeforeCommit, TransientStoreError
from tests.stores.changes import update

pytestmark = pytest.mark.unit

CONTRACTS = load_contracts()
TOPIC = "updates"
WATCHDOG_S = 10.0


def gauge() -> float | None:
    return REGISTRY.get_sample_value("crmsync_store_unavailable")


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # One policy for the loop and start-up (StoreBackoff reads it when made).
    monkeypatch.setattr(writer_loop, "STORE_RETRY", RetryPolicy(initial_s=0.01, max_s=0.1))
    yield
    metrics.STORE_UNAVAILABLE.set(0)


class FakeConsumer:
    def __init__(self, lengths: dict[int, int], first_assignment: Sequence[int]) -> None:
        self.log = {
            partition: [self._message(partition, offset) for offset in range(length)]
            for partition, length in lengths.items()
        }
        self.kafka_offsets: dict[int, int] = {}
        """Kafka's committed offsets of the group."""
        self.positions: dict[int, int] = {}
        self.paused: set[int] = set()
        self.owned: list[int] = []
        self.rebalances: list[list[int]] = [list(first_assignment)]
        self.assign_calls: list[dict[int, int]] = []
        self.closed = False
        self.on_consume: Callable[[], None] = lambda: None
        self._on_assign: Callable[[Any, list[TopicPartition]], None] | None = None
        self._on_revoke: Callable[[Any, list[TopicPartition]], None] | None = None
        self._assigned_in_callback = False

    @staticmethod
    def _message(partition: int, offset: int) -> Message:
        change = update("hubspot", f"{partition}-{offset}", t=offset + 1)
        return Message(
            topic=TOPIC,
            partition=partition,
            offset=offset,
            key=change.key,
            value=CONTRACTS.profile_update.encode(change),
        )

    def rebalance(self, partitions: Sequence[int]) -> None:
        """The group hands out ``partitions`` at the next consume() or poll()."""
        self.rebalances.append(list(partitions))

    def subscribe(
        self,
        topics: list[str],
        *,
        on_assign: Callable[[Any, list[TopicPartition]], None],
        on_revoke: Callable[[Any, list[TopicPartition]], None] | None = None,
    ) -> None:
        assert topics == [TOPIC]
        self._on_assign, self._on_revoke = on_assign, on_revoke

    def _serve_rebalance(self) -> None:
        if not self.rebalances:
            return
        assert self._on_assign is not None
        partitions = self.rebalances.pop(0)
        if self.owned:
            self._callback(self._on_revoke or (lambda *_: None), self.owned, revoke=True)
        self.owned = partitions
        self._callback(self._on_assign, partitions, revoke=False)

    def _callback(
        self,
        callback: Callable[[Any, list[TopicPartition]], None],
        partitions: list[int],
        *,
        revoke: bool,
    ) -> None:
        # As the binding does: without an assign() or unassign() in the callback, it
        # assigns (or unassigns) the partitions itself.
        self._assigned_in_callback = False
        callback(self, [TopicPartition(TOPIC, p) for p in partitions])
        if not self._assigned_in_callback:
            if revoke:
                self.unassign()
            else:
                self.assign([TopicPartition(TOPIC, p) for p in partitions])

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._assigned_in_callback = True
        self.assign_calls.append({p.partition: p.offset for p in partitions})
        self.positions = {p.partition: self._start(p.offset, p.partition) for p in partitions}

    def _start(self, offset: int, partition: int) -> int:
        if offset >= 0:
            return offset
        if offset == OFFSET_BEGINNING:
            return 0
        return self.kafka_offsets.get(partition, 0)

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [
            TopicPartition(TOPIC, p.partition, self.kafka_offsets.get(p.partition, OFFSET_INVALID))
            for p in partitions
        ]

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float, cached: bool
    ) -> tuple[int, int]:
        return 0, len(self.log[partition.partition])

    def unassign(self) -> None:
        self._assigned_in_callback = True
        self.positions = {}

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, p) for p in self.positions]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {p.partition for p in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {p.partition for p in partitions}

    def _fetch(self, limit: int) -> list[Message]:
        fetched: list[Message] = []
        for partition, position in self.positions.items():
            if partition in self.paused:
                continue
            taken = self.log[partition][position : position + limit - len(fetched)]
            self.positions[partition] = position + len(taken)
            fetched.extend(taken)
        return fetched

    def consume(self, *, num_messages: int, timeout: float) -> list[Message]:
        self.on_consume()
        self._serve_rebalance()
        return self._fetch(num_messages)

    def poll(self, timeout: float) -> Message | None:
        self._serve_rebalance()
        fetched = self._fetch(1)
        if not fetched:
            threading.Event().wait(min(timeout, 0.001))
        return fetched[0] if fetched else None

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        for p in offsets:
            self.kafka_offsets[p.partition] = p.offset

    def close(self) -> None:
        if self.owned:
            self._callback(self._on_revoke or (lambda *_: None), self.owned, revoke=True)
        self.closed = True


class FakeProducer:
    def flush(self, timeout: float) -> int:
        return 0


class FakeStore:
    """Positions and applied messages; reads and applies fail while told to."""

    keeps_offsets = True

    def __init__(self, offsets: dict[int, int], *, expected: int, stop: threading.Event) -> None:
        self.offsets = dict(offsets)
        self.applied: list[str] = []
        self.failing_reads = 0
        self.failing_applies = 0
        self.gauge_at_reads: list[float | None] = []
        self.on_failed_read: Callable[[int], None] = lambda _n: None
        self.on_failed_apply: Callable[[], None] = lambda: None
        self._failed_reads = 0
        self._expected = expected
        self._stop = stop

    def stored_offsets(self, topic: str) -> dict[int, int]:
        assert topic == TOPIC
        self.gauge_at_reads.append(gauge())
        if self.failing_reads:
            self.failing_reads -= 1
            self._failed_reads += 1
            self.on_failed_read(self._failed_reads)
            raise TransientStoreError("connection refused")
        return dict(self.offsets)

    def apply_batch(
        self,
        *,
        updates: Sequence[ProfileUpdate],
        next_offsets: dict[tuple[str, int], int],
        written_at: datetime,
        before_commit: BeforeCommit,
    ) -> BatchReport:
        if self.failing_applies:
            self.failing_applies -= 1
            self.on_failed_apply()
            raise TransientStoreError("connection refused")
        report = BatchReport()
        before_commit(report)
        self.applied.extend(u.record_id for u in updates)
        for (_topic, partition), offset in next_offsets.items():
            self.offsets[partition] = max(self.offsets.get(partition, 0), offset)
        if len(self.applied) >= self._expected:
            self._stop.set()
        return report


def run_loop(consumer: FakeConsumer, store: FakeStore, stop: threading.Event, batch: int) -> None:
    loop = WriterLoop(
        consumer=consumer,  # type: ignore[arg-type]
        producer=FakeProducer(),  # type: ignore[arg-type]
        store=store,  # type: ignore[arg-type]
        updates=CONTRACTS.profile_update,
        rejected=CONTRACTS.rejected_event,
        audit=CONTRACTS.audit_event,
        settings=LoopSettings(
            topic=TOPIC,
            rejected_topic="rejected",
            audit_topic="audit",
            batch_max_records=batch,
            batch_max_wait_ms=10,
        ),
        stop=stop,
    )
    # Whatever goes wrong, the test ends: an unfinished story shows in its assertions.
    watchdog = threading.Timer(WATCHDOG_S, stop.set)
    watchdog.start()
    try:
        loop.run()
    finally:
        watchdog.cancel()


def records(partition: int, offsets: range) -> list[str]:
    return [f"{partition}-{offset}" for offset in offsets]


def test_store_down_at_assignment_defers_the_start_until_the_store_answers() -> None:
    stop = threading.Event()
    consumer = FakeConsumer({0: 4, 1: 3}, first_assignment=[0, 1])
    # The store is ahead of Kafka's committed offsets on partition 0: starting there
    # before the store answered would apply 0-0 and 0-1 again.
    store = FakeStore({0: 2}, expected=5, stop=stop)
    store.failing_reads = 3

    run_loop(consumer, store, stop, batch=10)

    assert consumer.assign_calls[0] == {}, "partitions were assigned before their start was known"
    assert consumer.assign_calls[-1] == {0: 2, 1: OFFSET_BEGINNING}
    assert sorted(store.applied) == records(0, range(2, 4)) + records(1, range(3))
    assert store.gauge_at_reads[1:4] == [1.0, 1.0, 1.0], "the gauge did not say the store is away"
    assert gauge() == 0.0
    assert consumer.closed


def test_partitions_revoked_before_their_start_is_known_are_forgotten() -> None:
    stop = threading.Event()
    consumer = FakeConsumer({0: 3, 1: 3}, first_assignment=[0, 1])
    store = FakeStore({}, expected=3, stop=stop)
    store.failing_reads = 2

    def revoke_partition_0(failures: int) -> None:
        if failures == 1:
            consumer.rebalance([1])

    store.on_failed_read = revoke_partition_0

    run_loop(consumer, store, stop, batch=10)

    assert consumer.assign_calls[-1] == {1: OFFSET_BEGINNING}
    assert store.applied == records(1, range(3))


def test_a_partition_the_store_holds_no_position_for_starts_at_its_earliest_offset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An empty (or replaced) store behind a group whose offsets Kafka kept: the store
    never applied the history, so it is applied from the start, with a warning."""
    stop = threading.Event()
    consumer = FakeConsumer({0: 4, 1: 2}, first_assignment=[0, 1])
    consumer.kafka_offsets = {0: 3}
    store = FakeStore({}, expected=6, stop=stop)

    with caplog.at_level("WARNING", logger=writer_loop.__name__):
        run_loop(consumer, store, stop, batch=10)

    assert consumer.assign_calls[0] == {0: OFFSET_BEGINNING, 1: OFFSET_BEGINNING}
    assert sorted(store.applied) == records(0, range(4)) + records(1, range(2))
    [warning] = [r for r in caplog.records if "holds no position" in r.getMessage()]
    assert "partitions=[0]" in warning.getMessage(), "partition 1 had nothing committed"


def test_a_store_that_keeps_no_positions_starts_at_kafkas_committed_offsets() -> None:
    stop = threading.Event()
    consumer = FakeConsumer({0: 4}, first_assignment=[0])
    consumer.kafka_offsets = {0: 3}
    store = FakeStore({}, expected=1, stop=stop)
    store.keeps_offsets = False

    run_loop(consumer, store, stop, batch=10)

    assert consumer.assign_calls[0] == {0: OFFSET_INVALID}
    assert store.applied == records(0, range(3, 4))


def test_partitions_given_back_during_a_batch_retry_start_again_at_the_store() -> None:
    """A rebalance while the batch in hand is retried, handing this member the same
    partition: the batch is dropped, and the partition starts where the store says
    once the store answers, so each message is applied once."""
    stop = threading.Event()
    consumer = FakeConsumer({0: 4}, first_assignment=[0])
    consumer.kafka_offsets = {0: 0}
    store = FakeStore({0: 1}, expected=3, stop=stop)
    store.failing_applies = 2
    store.on_failed_apply = lambda: consumer.rebalance([0])

    run_loop(consumer, store, stop, batch=2)

    assert store.applied == records(0, range(1, 4))
    assert consumer.assign_calls[-1] == {0: 1}
    assert gauge() == 0.0


def test_a_batch_whose_partitions_went_to_another_member_during_a_retry_is_dropped() -> None:
    """The partition is revoked while its batch waits for the store, and its new owner
    applies it (from the store's positions, as it read them). Applying the batch once
    the store answers would apply those messages a second time."""
    stop = threading.Event()
    consumer = FakeConsumer({0: 4}, first_assignment=[0])
    store = FakeStore({}, expected=1_000, stop=stop)
    store.failing_applies = 2

    def handed_to_another_member() -> None:
        if store.failing_applies == 1:  # the first failure
            consumer.rebalance([])
            store.applied.extend(records(0, range(4)))
            store.offsets[0] = 4

    store.on_failed_apply = handed_to_another_member

    def stop_once_idle() -> None:
        if not consumer.owned and len(consumer.rebalances) == 0:
            stop.set()

    consumer.on_consume = stop_once_idle

    run_loop(consumer, store, stop, batch=2)

    assert store.applied == records(0, range(4)), "the batch in hand was applied again"
    assert 0 not in consumer.kafka_offsets or consumer.kafka_offsets[0] == 0


def test_stop_while_waiting_for_the_store_applies_nothing() -> None:
    stop = threading.Event()
    consumer = FakeConsumer({0: 3}, first_assignment=[0])
    store = FakeStore({}, expected=3, stop=stop)
    store.failing_reads = 1_000_000

    def stop_after_a_few(failures: int) -> None:
        if failures == 5:
            stop.set()

    store.on_failed_read = stop_after_a_few

    run_loop(consumer, store, stop, batch=10)

    assert store.applied == []
    assert consumer.assign_calls == [{}]
    assert consumer.closed


class MigratingStore:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.migrated = False

    def migrate(self) -> None:
        if self.failures:
            self.failures -= 1
            raise TransientStoreError("connection refused")
        self.migrated = True


def test_start_up_waits_for_the_store_to_migrate() -> None:
    store = MigratingStore(failures=3)
    gauges: list[float | None] = []
    stop = threading.Event()
    original = store.migrate

    def migrate() -> None:
        gauges.append(gauge())
        original()

    store.migrate = migrate  # type: ignore[method-assign]
    assert writer_main.migrate_when_reachable(store, stop=stop)  # type: ignore[arg-type]
    assert store.migrated
    assert gauges[1:] == [1.0, 1.0, 1.0]
    assert gauge() == 0.0


def test_start_up_stops_while_the_store_is_away() -> None:
    store = MigratingStore(failures=1_000_000)
    stop = threading.Event()
    stop.set()
    assert not writer_main.migrate_when_reachable(store, stop=stop)  # type: ignore[arg-type]
    assert not store.migrated
