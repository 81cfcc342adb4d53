"""The writer service's failure paths against the real broker and real stores.

- A store replaced by an empty one behind a group whose offsets Kafka kept gets the
  whole history again: no position in the store means nothing of it was applied.
- An undecodable message near the broker's size limit is rejected with its value cut
  to fit the rejected topic, and the writer goes on.
- Every crash point the writer lists is reached under a normal load.
"""

from __future__ import annotations

import os

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from services.core.codecs import load_contracts
from services.writer.loop import CRASH_POINTS
from tests.integration.test_writer_story import (
    assert_final_round,
    caught_up,
    produce,
    profiles,
    rounds,
)
from tests.support.broker_fixtures import ReadAll, end_offsets
from tests.support.polling import wait_for
from tests.support.postgres import fresh_database
from tests.support.services import Stack

pytestmark = pytest.mark.integration

CONTRACTS = load_contracts()


def kafka_committed(stack: Stack) -> dict[int, int]:
    """The writer group's committed offsets in Kafka, per partition that has one."""
    topic = stack.topic("profile-updates")
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": f"{stack.prefix}writer"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {p.partition: p.offset for p in committed if p.offset >= 0}
    finally:
        consumer.close()


def use_fresh_store(stack: Stack, kind: str, request: pytest.FixtureRequest) -> None:
    """Point the stack at a new, empty store of ``kind``."""
    if kind == "sqlite":
        path = stack.db_path
        for leftover in (
            path,
            path.with_name(path.name + "-wal"),
            path.with_name(path.name + "-shm"),
        ):
            leftover.unlink(missing_ok=True)
        return
    name = f"w_{stack.prefix.strip('.')}_{os.urandom(3).hex()}"
    stack.config["store"] = {
        "kind": "postgres",
        "dsn": fresh_database(request.getfixturevalue("postgres_dsn"), name),
    }
    stack.write_config()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_store_replaced_by_an_empty_one_gets_the_whole_history_again(
    stack: Stack, kind: str, request: pytest.FixtureRequest
) -> None:
    writer = stack["writer"]
    use_fresh_store(stack, kind, request)
    stack.start("writer")
    produce(stack, rounds([1, 2], profiles=100))
    assert wait_for(lambda: caught_up(stack), timeout_s=120), writer.log_tail()
    assert writer.stop() == 0
    ends = {
        p: o for p, o in end_offsets(stack.bootstrap, stack.topic("profile-updates")).items() if o
    }
    assert wait_for(lambda: kafka_committed(stack) == ends, timeout_s=30), (
        "Kafka's committed offsets never reached the end: the test would prove nothing"
    )

    use_fresh_store(stack, kind, request)
    stack.start("writer")

    assert wait_for(lambda: caught_up(stack), timeout_s=120), writer.log_tail()
    assert_final_round(stack, 2, count=100)
    assert "holds no position for partitions=" in writer.log_path.read_text(), (
        "no warning that the history was applied again"
    )


def test_a_rejection_too_large_to_produce_goes_out_cut_and_the_writer_goes_on(
    stack: Stack, read_topic: ReadAll
) -> None:
    stack.start("writer")
    # Near librdkafka's default message.max.bytes (1,000,000): it fits, but its
    # rejection, which carries it with a reason and its origin, would not.
    poison = b"not avro" + os.urandom(999_900)
    producer = Producer({"bootstrap.servers": stack.bootstrap})
    producer.produce(stack.topic("profile-updates"), value=poison, partition=0)
    assert producer.flush(30) == 0
    produce(stack, rounds([1], profiles=20))

    assert wait_for(lambda: caught_up(stack), timeout_s=60), stack["writer"].log_tail()
    assert len(profiles(stack)) == 20
    [message] = read_topic(stack.topic("rejected"), count=1, timeout_s=20)
    rejected = CONTRACTS.rejected_event.decode(message.value() or b"")
    assert rejected.value is not None and poison.startswith(rejected.value)
    assert len(rejected.value) > 990_000
    assert rejected.reason.startswith("undecodable ProfileUpdate: ")
    assert f"of {len(poison)} bytes" in rejected.reason
    assert rejected.attributes["value_bytes"] == str(len(poison))
    assert (rejected.origin_topic, rejected.origin_partition, rejected.origin_offset) == (
        stack.topic("profile-updates"),
        0,
        0,
    )


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_every_writer_crash_point_is_reached_under_a_normal_load(stack: Stack, point: str) -> None:
    writer = stack["writer"]
    writer.env["CRMSYNC_CRASH_AT"] = point
    stack.start("writer")
    produce(stack, rounds([1], profiles=50))
    assert writer.process is not None
    assert writer.process.wait(timeout=60) == -9, f"{point} was not reached:\n{writer.log_tail()}"
