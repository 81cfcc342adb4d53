"""Reading a topic to its end: the one loop behind every "read it all, then go on" in
crmsync (a compacted topic's latest values, the mapper's barrier at start and before
each batch, a partition's state restored from its changelog).

The end of a partition is its end offset when the read starts (or an end the caller
already knows). For a ``read_committed`` consumer (all but the schemas topic's), that
is the last stable offset: a transaction still open then is not waited for, and what
follows it is for a later read. A partition is read to its end when a message at or
after its last offset has been seen, or when the consumer reports the partition's end
(EOF) at or past it: the last offset is often a transaction's commit marker, which is
no message to read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from services.core.kafka import ADMIN_TIMEOUT_S, watermarks

POLL_S: Final = 0.2


def never() -> bool:
    return False


def read_to_end(
    consumer: Consumer,
    topic: str,
    on_message: Callable[[Message], None],
    *,
    starts: Mapping[int, int] | None = None,
    ends: Mapping[int, int] | None = None,
    assign: bool = True,
    deadline_s: float | None = ADMIN_TIMEOUT_S,
    stopped: Callable[[], bool] = never,
    waiting: Callable[[set[int]], None] | None = None,
    waiting_every_s: float = 10.0,
) -> set[int]:
    """Pass every message of ``topic`` from ``starts`` (default: every partition from
    its first offset) to ``on_message``, until each partition is read to its end
    (``ends``, default: the high watermarks now). ``consumer`` must report partition
    EOF (``enable.partition.eof``). With ``assign`` False the consumer is already
    assigned and stands at ``starts``. Returns the partitions not read to their end:
    none, unless ``deadline_s`` passed or ``stopped()`` said so first. While it
    reads, ``waiting`` hears every ``waiting_every_s`` which partitions are left; a
    consumer error other than EOF raises."""
    if starts is None or ends is None:
        # One request per partition gives both bounds.
        if starts is None:
            metadata = consumer.list_topics(topic, timeout=ADMIN_TIMEOUT_S)
            partitions = list(metadata.topics[topic].partitions)
        else:
            partitions = list(starts)
        bounds = {p: watermarks(consumer, TopicPartition(topic, p)) for p in partitions}
        starts = starts if starts is not None else {p: low for p, (low, _) in bounds.items()}
        ends = ends if ends is not None else {p: high for p, (_, high) in bounds.items()}
    reading = {p for p, start in starts.items() if ends.get(p, 0) > start}
    if assign:
        consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items() if p in reading])
    give_up = None if deadline_s is None else time.monotonic() + deadline_s
    tell_at = time.monotonic() + waiting_every_s
    while reading:
        now = time.monotonic()
        if stopped() or (give_up is not None and now > give_up):
            break
        if waiting is not None and now > tell_at:
            waiting(reading)
            tell_at = now + waiting_every_s
        message = consumer.poll(POLL_S)
        if message is None:
            continue
        partition, offset, error = message.partition(), message.offset(), message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                raise KafkaException(error)
            if partition is not None and offset is not None and offset >= ends[partition]:
                reading.discard(partition)
            continue
        on_message(message)
        if partition in reading and offset is not None and offset + 1 >= ends[partition]:
            reading.discard(partition)
    return reading


def not_read(topic: str, left: set[int], within_s: float) -> KafkaException:
    """The error of a read that did not reach the end of partitions ``left`` in time."""
    return KafkaException(
        KafkaError(
            KafkaError._TIMED_OUT,
            f"{topic} partitions {sorted(left)} not read to their end within {within_s:.0f}s",
        )
    )


def read_compacted(
    config: dict[str, Any], *, topic: str, timeout_s: float = ADMIN_TIMEOUT_S
) -> dict[bytes, bytes]:
    """The latest value of every key of a (compacted) topic, read from start to end.

    No consumer group: the whole topic is read each time and nothing is committed.
    A key whose latest value is a tombstone (None) is absent from the result.
    """
    consumer = Consumer(
        {
            **config,
            "group.id": "crmsync-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    latest: dict[bytes, bytes] = {}

    def keep(message: Message) -> None:
        key, value = message.key(), message.value()
        if key is None:
            return
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value

    try:
        left = read_to_end(consumer, topic, keep, deadline_s=timeout_s)
        if left:
            raise not_read(topic, left, timeout_s)
    finally:
        consumer.close()
    return latest
