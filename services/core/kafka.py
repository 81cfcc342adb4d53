"""Kafka client factories, topic names and topic administration.

Every service builds its clients here so that the pass-through security settings
(``security.protocol``, ``sasl.*``, ``ssl.*``) and secrets reach every client alike,
and so that producers are always idempotent with ``acks=all`` (guarantee 1).
Topics are created by crmsync itself from the config; a topic that exists with the
wrong partition count is an error, because keys would then move between partitions.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from services.core import metrics
from services.core.config import KafkaSettings, TopicSettings
from services.core.retry import RetryLater, RetryPolicy

log = logging.getLogger(__name__)

ADMIN_TIMEOUT_S: Final = 30.0
# Waits while newly created topics reach every broker's metadata.
METADATA_RETRY: Final = RetryPolicy(initial_s=0.1, max_s=1.0, within_s=ADMIN_TIMEOUT_S)

# Bytes librdkafka may prefetch per partition for a consumer (its default, 64 MB,
# times a dozen partitions would dwarf a service's own memory, and would grow with
# the backlog). A few batches ahead is plenty.
PREFETCH_KBYTES: Final = 8 * 1024


@dataclass(frozen=True)
class TopicNames:
    changes: str
    fullsync: str
    barrier: str
    profile_updates: str
    rejected: str
    audit: str
    profile_changes: str
    connector_state: str
    schemas: str
    mapper_state: str

    @classmethod
    def from_settings(cls, settings: KafkaSettings) -> TopicNames:
        prefix = settings.topics.prefix
        return cls(
            changes=f"{prefix}changes",
            fullsync=f"{prefix}fullsync",
            barrier=f"{prefix}barrier",
            profile_updates=f"{prefix}profile-updates",
            rejected=f"{prefix}rejected",
            audit=f"{prefix}audit",
            profile_changes=f"{prefix}profile-changes",
            connector_state=f"{prefix}connector-state",
            schemas=f"{prefix}schemas",
            mapper_state=f"{prefix}mapper-state",
        )


def topic_specs(settings: KafkaSettings) -> dict[str, TopicSettings]:
    names = TopicNames.from_settings(settings)
    topics = settings.topics
    return {
        names.changes: topics.changes,
        names.fullsync: topics.fullsync,
        names.barrier: topics.barrier,
        names.profile_updates: topics.profile_updates,
        names.rejected: topics.rejected,
        names.audit: topics.audit,
        names.profile_changes: topics.profile_changes,
        names.connector_state: topics.connector_state,
        names.schemas: topics.schemas,
        names.mapper_state: topics.mapper_state,
    }


def client_config(settings: KafkaSettings, *, client_id: str) -> dict[str, Any]:
    """Base librdkafka config: bootstrap, pass-through settings, resolved secrets."""
    config: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers}
    config.update(settings.client)
    config.update({name: ref.resolve() for name, ref in settings.secrets.items()})
    config["client.id"] = client_id
    # librdkafka's own log lines go through Python logging (JSON, scrubbed, deduplicated)
    # instead of raw stderr.
    config["logger"] = librdkafka_logger()
    return config


class RepeatFilter(logging.Filter):
    """Drops a line identical to one logged less than ``interval_s`` ago.

    While a broker is down librdkafka reports every reconnect attempt; one line per
    interval says the same.
    """

    def __init__(self, interval_s: float = 30.0) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._last_seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        last = self._last_seen.get(text)
        if last is not None and record.created - last < self._interval_s:
            return False
        if len(self._last_seen) > 1000:
            self._last_seen.clear()
        self._last_seen[text] = record.created
        return True


def librdkafka_logger() -> logging.Logger:
    logger = logging.getLogger("librdkafka")
    if not any(isinstance(f, RepeatFilter) for f in logger.filters):
        logger.addFilter(RepeatFilter())
    return logger


# How long a vanished group member's partitions wait before the others take them over
# (Kafka's default is 45 s): a stream that a crash stops for 45 s is too long.
SESSION_TIMEOUT_MS: Final = 15_000


def producer_config(
    settings: KafkaSettings, *, client_id: str, delivery_timeout_ms: int = 30_000
) -> dict[str, Any]:
    config = client_config(settings, client_id=client_id)
    config.update(
        {
            # Guarantee 1: a send counts only once every in-sync replica has it, and
            # librdkafka's retries cannot duplicate or reorder within a partition.
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": delivery_timeout_ms,
            "linger.ms": 5,
            "compression.type": "lz4",
        }
    )
    return config


def is_error(message: Message) -> bool:
    """Whether a consumed ``message`` is an error rather than data: a partition's end
    (passed over) or another error (logged and passed over; librdkafka retries it).

    A fatal error raises KafkaException: the consumer can consume nothing more (e.g.
    its static member was fenced after a session timeout while the coordinator was
    down), so the stream loop ends and the service exits to be restarted with a new
    one, rather than polling a dead consumer forever.
    """
    error = message.error()
    if error is None:
        return False
    if error.code() == KafkaError._PARTITION_EOF:
        return True
    # A consumer hands its fatal error over as a message whose code is _FATAL and whose
    # fatal() flag is not set: both count.
    if error.fatal() or error.code() == KafkaError._FATAL:
        raise KafkaException(error)
    log.warning("consumer error %s", error.str())
    return True


def consumer_config(settings: KafkaSettings, *, client_id: str, group_id: str) -> dict[str, Any]:
    config = client_config(settings, client_id=client_id)
    config.update(
        {
            "group.id": group_id,
            # Offsets are committed by the service after its work is durable.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    return config


def reader_config(settings: KafkaSettings, *, client_id: str) -> dict[str, Any]:
    """A consumer that assigns partitions itself: its group id is never joined and it
    commits nothing; it reads committed data from the earliest offset."""
    return {
        **client_config(settings, client_id=client_id),
        "group.id": client_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    }


class TopicMismatchError(RuntimeError):
    pass


def ensure_topics(settings: KafkaSettings, *, client_id: str = "crmsync-admin") -> list[str]:
    """Create the missing topics; return the names created.

    Existing topics are checked, not altered: a partition count that differs from the
    config is an error an operator must resolve, since keys would move partitions.
    A topic another process created meanwhile ("already exists") is checked too.
    """
    admin = AdminClient(client_config(settings, client_id=client_id))
    specs = topic_specs(settings)
    existing = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    _check_partitions(specs, {name: len(existing[name].partitions) for name in existing})
    missing = [name for name in specs if name not in existing]
    if not missing:
        return []
    created: list[str] = []
    raced: list[str] = []
    requests = [
        NewTopic(
            name,
            num_partitions=specs[name].partitions,
            replication_factor=specs[name].replication_factor,
            config=dict(specs[name].config),
        )
        for name in missing
    ]
    for name, future in admin.create_topics(requests, operation_timeout=ADMIN_TIMEOUT_S).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
            raced.append(name)
    if raced:
        _check_partitions(specs, _partition_counts(admin, raced))
    if created:
        log.info("created topics %s", ",".join(sorted(created)))
    return created


def _partition_counts(admin: AdminClient, names: list[str]) -> dict[str, int]:
    """Partition counts of topics that exist, waiting out metadata propagation."""
    found: dict[str, int] = {}
    with contextlib.suppress(RetryLater):  # past the wait: those known by then
        for attempt in METADATA_RETRY.retrying():
            with attempt:
                topics = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
                found = {name: len(topics[name].partitions) for name in names if name in topics}
                if len(found) < len(names):
                    raise RetryLater("new topics not in the metadata yet")
    return found


def _check_partitions(specs: dict[str, TopicSettings], counts: dict[str, int]) -> None:
    mismatched = [
        f"{name} has {counts[name]} partitions, config says {spec.partitions}"
        for name, spec in specs.items()
        if name in counts and counts[name] != spec.partitions
    ]
    if mismatched:
        raise TopicMismatchError("; ".join(mismatched))


RETRIABLE_OFFSET_ERRORS: Final = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TIMED_OUT,
        # The broker went away under the request (restarted, or killed): ask again.
        KafkaError._DESTROY_BROKER,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    }
)


def watermarks(
    consumer: Consumer, partition: TopicPartition, *, timeout_s: float = ADMIN_TIMEOUT_S
) -> tuple[int, int]:
    """(low, high) offsets of a partition, waiting out leadership moves.

    Right after a topic is created, or while a leader moves, the broker answers "not
    leader"; a service starting at that moment should wait, not crash.
    """
    policy = RetryPolicy(initial_s=0.1, max_s=1.0, within_s=timeout_s)
    for attempt in policy.retrying(on=KafkaException, when=_leader_may_come):
        with attempt:
            low, high = consumer.get_watermark_offsets(partition, timeout=timeout_s)
            return int(low), int(high)
    raise AssertionError("the retry loop ends by returning or raising")


def _leader_may_come(failure: BaseException) -> bool:
    error = kafka_error(failure)
    return error is not None and error.code() in RETRIABLE_OFFSET_ERRORS


def kafka_error(failure: BaseException) -> KafkaError | None:
    """The KafkaError a KafkaException carries, if any."""
    if not isinstance(failure, KafkaException) or not failure.args:
        return None
    error = failure.args[0]
    return error if isinstance(error, KafkaError) else None


def retriable(failure: BaseException) -> bool:
    """A Kafka failure that librdkafka says may pass if the call is made again."""
    error = kafka_error(failure)
    return error is not None and bool(error.retriable())


def end_offsets(
    settings: KafkaSettings, topic: str, *, timeout_s: float = ADMIN_TIMEOUT_S
) -> dict[int, int]:
    """The offset after the last message of each of the topic's partitions (blocking)."""
    consumer = Consumer(reader_config(settings, client_id="crmsync-offsets"))
    try:
        partitions = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        return {
            p: watermarks(consumer, TopicPartition(topic, p), timeout_s=timeout_s)[1]
            for p in partitions
        }
    finally:
        consumer.close()


class ConsumerLag:
    """Keeps ``crmsync_consumer_lag_messages`` current for a consumer's partitions: the
    messages between its position and the partition's end as the last fetch saw it (no
    request to the broker). Called after each batch; it measures every ``every_s`` at
    most. A partition no longer assigned is set to 0, so that the sum over the
    processes of a group counts each partition once."""

    def __init__(self, consumer: Consumer, *, group: str, every_s: float = 5.0) -> None:
        self._consumer = consumer
        self._group = group
        self._every_s = every_s
        self._next_at = 0.0
        self._reported: set[tuple[str, int]] = set()

    def __call__(self) -> None:
        now = time.monotonic()
        if now < self._next_at:
            return
        self._next_at = now + self._every_s
        seen: set[tuple[str, int]] = set()
        for tp in self._consumer.position(self._consumer.assignment()):
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset < 0 or high is None or high < 0:
                continue  # nothing fetched yet
            key = (tp.topic, tp.partition)
            seen.add(key)
            metrics.CONSUMER_LAG.labels(self._group, tp.topic, str(tp.partition)).set(
                max(0, high - tp.offset)
            )
        for topic, partition in self._reported - seen:
            metrics.CONSUMER_LAG.labels(self._group, topic, str(partition)).set(0)
        self._reported = seen


def wait_paused(consumer: Consumer, delay_s: float, stop: threading.Event, *, why: str) -> bool:
    """Wait ``delay_s`` seconds with every partition of ``consumer`` paused, polling so
    that the group keeps the member (max.poll.interval.ms); True when ``stop`` is set.

    No message can arrive while every partition is paused: one would have been skipped
    by the caller, so it is a bug, raised with ``why`` the caller waits."""
    deadline = time.monotonic() + delay_s
    while (left := deadline - time.monotonic()) > 0:
        if stop.is_set():
            return True
        message = consumer.poll(min(left, 0.5))
        if message is not None and message.error() is None:
            where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
            raise RuntimeError(f"message consumed while waiting for {why}: {where}")
    return stop.is_set()
