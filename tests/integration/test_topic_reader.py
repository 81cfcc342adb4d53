"""Reading a topic to its end (services/core/topic_reader.py) on a real broker: every
partition to its end, a topic ending in a transaction's marker, a read_committed read
ending at the last stable offset, a deadline, a stop, and a compacted topic's latest
values."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from services.core.topic_reader import read_compacted, read_to_end

pytestmark = pytest.mark.integration


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    name = f"t{uuid.uuid4().hex[:10]}.read"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(name, 3, 1)])[name].result()
    return name


@pytest.fixture
def reader(kafka_bootstrap: str) -> Iterator[Consumer]:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": "topic-reader-test",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    yield consumer
    consumer.close()


def produce(bootstrap: str, topic: str, values: dict[int, list[bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, items in values.items():
        for value in items:
            producer.produce(topic, value, key=value, partition=partition)
    assert producer.flush(30) == 0


def transactional(bootstrap: str) -> Producer:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"tr-{uuid.uuid4().hex[:8]}"}
    )
    producer.init_transactions(30)
    return producer


def values(messages: list[Message]) -> list[bytes]:
    return [m.value() or b"" for m in messages]


def test_every_partition_is_read_to_its_end(
    kafka_bootstrap: str, topic: str, reader: Consumer
) -> None:
    produce(kafka_bootstrap, topic, {0: [b"a", b"b"], 2: [b"c"]})
    seen: list[Message] = []
    assert read_to_end(reader, topic, seen.append, deadline_s=30) == set()
    assert sorted(values(seen)) == [b"a", b"b", b"c"]
    # From given offsets, to given ends: only what lies between.
    produce(kafka_bootstrap, topic, {0: [b"d"]})
    seen.clear()
    left = read_to_end(reader, topic, seen.append, starts={0: 1}, ends={0: 3}, deadline_s=30)
    assert left == set()
    assert values(seen)[:2] == [b"b", b"d"]


def stable_end(consumer: Consumer, topic: str, partition: int, at_least: int) -> None:
    """Wait until the partition's end, as a read_committed consumer sees it, reaches
    ``at_least``: a commit's markers are written just after the commit returns."""
    deadline = time.monotonic() + 30
    while consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)[1] < at_least:
        assert time.monotonic() < deadline, "the last stable offset never moved"
        time.sleep(0.05)


def test_a_topic_ending_in_a_commit_marker_is_read_to_its_end(
    kafka_bootstrap: str, topic: str, reader: Consumer
) -> None:
    producer = transactional(kafka_bootstrap)
    producer.begin_transaction()
    producer.produce(topic, b"x", partition=1)
    producer.commit_transaction(30)
    stable_end(reader, topic, 1, at_least=2)  # the record and its marker
    seen: list[Message] = []
    started = time.monotonic()
    assert read_to_end(reader, topic, seen.append, deadline_s=30) == set()
    assert values(seen) == [b"x"]
    assert time.monotonic() - started < 10, "waited for a message past the marker"


def test_a_read_committed_read_ends_at_the_last_stable_offset(
    kafka_bootstrap: str, topic: str, reader: Consumer
) -> None:
    produce(kafka_bootstrap, topic, {0: [b"before"]})
    producer = transactional(kafka_bootstrap)
    producer.begin_transaction()
    producer.produce(topic, b"pending", partition=0)
    assert producer.flush(30) == 0
    produce(kafka_bootstrap, topic, {0: [b"after"]})
    # A transaction open when the read starts is not waited for: what follows it is
    # not decided yet.
    seen: list[Message] = []
    assert read_to_end(reader, topic, seen.append, deadline_s=30) == set()
    assert values(seen) == [b"before"]
    # Committed, it is read, and what follows it.
    producer.commit_transaction(30)
    stable_end(reader, topic, 0, at_least=4)
    seen.clear()
    assert read_to_end(reader, topic, seen.append, deadline_s=30) == set()
    assert values(seen) == [b"before", b"pending", b"after"]


def test_a_read_that_cannot_end_stops_at_its_deadline_or_when_stopped(
    kafka_bootstrap: str, topic: str, reader: Consumer
) -> None:
    produce(kafka_bootstrap, topic, {2: [b"only"]})
    beyond = {2: 10}  # an end past what the partition holds
    seen: list[Message] = []
    started = time.monotonic()
    left = read_to_end(reader, topic, seen.append, starts={2: 0}, ends=beyond, deadline_s=1.0)
    assert left == {2}
    assert 1.0 <= time.monotonic() - started < 5
    assert values(seen) == [b"only"]
    told: list[set[int]] = []
    stop_at = time.monotonic() + 1.5
    left = read_to_end(
        reader,
        topic,
        lambda _message: None,
        starts={2: 0},
        ends=beyond,
        deadline_s=None,
        stopped=lambda: time.monotonic() > stop_at,
        waiting=lambda reading: told.append(set(reading)),
        waiting_every_s=0.5,
    )
    assert left == {2}
    assert told and all(t == {2} for t in told)


def test_a_compacted_topic_gives_each_keys_latest_value(kafka_bootstrap: str) -> None:
    name = f"t{uuid.uuid4().hex[:10]}.compacted"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(name, 2, 1, config={"cleanup.policy": "compact"})])[name].result()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for key, value in [(b"k1", b"1"), (b"k2", b"2"), (b"k1", b"3"), (b"k2", None)]:
        producer.produce(name, value, key=key, partition=0)
    producer.produce(name, b"4", key=b"k3", partition=1)
    assert producer.flush(30) == 0
    config = {"bootstrap.servers": kafka_bootstrap, "isolation.level": "read_committed"}
    assert read_compacted(config, topic=name, timeout_s=30) == {b"k1": b"3", b"k3": b"4"}
    # An empty topic reads at once.
    empty = f"t{uuid.uuid4().hex[:10]}.empty"
    admin.create_topics([NewTopic(empty, 1, 1)])[empty].result()
    assert read_compacted(config, topic=empty, timeout_s=30) == {}
