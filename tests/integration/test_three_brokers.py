"""The local tooling runs a real 3-broker cluster: acks=all survives losing one broker."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tests.support.kafka import LocalKafka

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def produce_all(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for value in values:
        producer.produce(topic, value=value)
    assert producer.flush(60) == 0


def consume_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    for _ in range(240):
        message = consumer.poll(0.5)
        if message is not None and message.error() is None and message.value() is not None:
            values.append(message.value() or b"")
        if len(values) >= count:
            break
    consumer.close()
    return values


@pytest.mark.timeout(240)
def test_replicated_topic_keeps_every_acked_message_through_a_broker_kill(
    three_brokers: LocalKafka,
) -> None:
    bootstrap = three_brokers.bootstrap
    topic = f"t{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics(
        [NewTopic(topic, 3, 3, config={"min.insync.replicas": "2"})], operation_timeout=30
    )[topic].result()
    metadata = admin.list_topics(topic, timeout=10)
    assert all(len(p.replicas) == 3 for p in metadata.topics[topic].partitions.values())

    produce_all(bootstrap, topic, [b"before-%d" % i for i in range(100)])
    three_brokers.kill_node(3)
    produce_all(bootstrap, topic, [b"during-%d" % i for i in range(100)])
    three_brokers.start_node(3)

    values = consume_all(bootstrap, topic, 200)
    assert sorted(values) == sorted(
        [b"before-%d" % i for i in range(100)] + [b"during-%d" % i for i in range(100)]
    )
