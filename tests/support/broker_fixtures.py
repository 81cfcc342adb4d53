"""Broker fixtures for integration and fault tests: the real broker (session-wide), stacks
of real services, a topic reader, a real Schema Registry. Loaded for the whole suite by
tests/conftest.py.

The broker is the project's own Apache Kafka started for the session, unless
CRMSYNC_TEST_BOOTSTRAP names an existing cluster to use instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from services.core.codecs import load_contracts
from services.core.contracts import ProfileUpdate
from tests.conftest import BROKER_KEY
from tests.support.kafka import KAFKA_VERSION, REPO_ROOT, LocalKafka
from tests.support.services import Stack, kill_leftovers

# Below the kernel's ephemeral range (32768-60999), so no client connection of the suite
# can be holding a port a test broker needs.
TEST_KAFKA_PORT = 19092


@pytest.fixture(scope="session", autouse=True)
def no_leftover_processes() -> Iterator[None]:
    yield
    kill_leftovers()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> Iterator[str]:
    existing = os.environ.get("CRMSYNC_TEST_BOOTSTRAP")
    if existing:
        request.config.stash[BROKER_KEY] = f"existing cluster at {existing}"
        yield existing
        return
    cluster = LocalKafka(name="test", port=TEST_KAFKA_PORT)
    bootstrap = cluster.start()
    request.config.stash[BROKER_KEY] = (
        f"Apache Kafka {KAFKA_VERSION} (KRaft) started by the suite at {bootstrap}"
    )
    try:
        yield bootstrap
    finally:
        cluster.stop(purge=True)


@pytest.fixture
def stack(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Stack]:
    """Config, topics prefix and store of one test; services started by the test."""
    test_stack = Stack(bootstrap=kafka_bootstrap, workdir=tmp_path / "stack")
    try:
        yield test_stack
    finally:
        test_stack.stop()


@pytest.fixture
def three_brokers() -> Iterator[LocalKafka]:
    """A cluster of three brokers of its own (replication 3, min.insync.replicas 2),
    for the tests that kill brokers; stopped and purged afterwards."""
    cluster = LocalKafka(name="faults", port=19800, brokers=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(purge=True)


ReadAll = Callable[..., list[Message]]


@pytest.fixture
def read_topic(kafka_bootstrap: str) -> ReadAll:
    """Read a topic from the start until ``count`` messages or the timeout."""

    def read(
        topic: str, *, count: int, timeout_s: float = 30.0, bootstrap: str | None = None
    ) -> list[Message]:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap or kafka_bootstrap,
                "group.id": f"test-reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        try:
            consumer.subscribe([topic])
            messages: list[Message] = []
            deadline = time.monotonic() + timeout_s
            while len(messages) < count and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is not None and message.error() is None:
                    messages.append(message)
            return messages
        finally:
            consumer.close()

    return read


def read_committed(
    bootstrap: str, topic: str, *, timeout_s: float = 30, uncommitted: bool = False
) -> list[Message]:
    """Every committed message of ``topic`` (with ``uncommitted``, aborted ones too),
    in partition and offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fault-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_uncommitted" if uncommitted else "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        reading = set(partitions)
        messages: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while reading and time.monotonic() < deadline:
            for message in consumer.consume(5000, 0.5):
                error = message.error()
                if error is None:
                    messages.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    reading.discard(message.partition())
        assert not reading, f"{topic} not read to its end in {timeout_s}s"
        return sorted(messages, key=lambda m: (m.partition() or 0, m.offset() or 0))
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "offsets-probe"})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in metadata.topics[topic].partitions
        }
    finally:
        consumer.close()


TEST_REGISTRY_PORT = 19081


@pytest.fixture(scope="session")
def schema_registry_url() -> Iterator[str]:
    """A real Schema Registry (Apicurio Registry's Confluent-compatible API, schemas in
    memory), started once for the tests that need one, via
    deploy/registry/local_registry.py."""
    script = [sys.executable, str(REPO_ROOT / "deploy" / "registry" / "local_registry.py")]
    started = subprocess.run(
        [*script, "start", "--port", str(TEST_REGISTRY_PORT)],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=REPO_ROOT,
        check=False,
    )
    if started.returncode != 0:
        raise RuntimeError(f"the schema registry did not start:\n{started.stderr}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([*script, "stop"], timeout=60, cwd=REPO_ROOT, check=False)


def produce_updates(stack: Stack, updates: Sequence[ProfileUpdate]) -> None:
    """ProfileUpdates straight onto the stack's profile-updates topic, as the mapper
    would put them (for tests of the writer and what follows it)."""
    producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 5})
    topic = stack.topic("profile-updates")
    codec = load_contracts().profile_update
    for one in updates:
        producer.produce(topic, key=one.key, value=codec.encode(one))
    assert producer.flush(30) == 0
