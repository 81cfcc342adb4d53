"""Which destinations an operator paused, read from the barrier topic.

``crmsync destination pause NAME`` (through ingest's admin API) writes SyncControl
PAUSED under the subject ``destination:<name>``; RESUMED lifts it. This reader
follows the barrier topic on a thread of its own: first to its end (``loaded`` is
set then, and no delivery loop takes a change before it, so a destination paused
before a restart stays paused from its first moment), then as new controls come.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from services.core import metrics
from services.core.barrier_controls import control_of
from services.core.codecs import Codec
from services.core.contracts import ControlKind, SyncControl, destination_of
from services.core.kafka import watermarks

log = logging.getLogger(__name__)

POLL_S: Final = 0.5
METADATA_TIMEOUT_S: Final = 30.0


class DestinationPauses:
    def __init__(
        self, *, consumer_config: dict[str, Any], topic: str, codec: Codec[SyncControl]
    ) -> None:
        self._config = consumer_config
        self._topic = topic
        self._codec = codec
        self._paused: set[str] = set()
        self._lock = threading.Lock()
        self.loaded = threading.Event()

    def paused(self, destination: str) -> bool:
        with self._lock:
            return destination in self._paused

    def follow(self, stop: threading.Event) -> None:
        """Read the topic to its end, set ``loaded``, then keep reading until ``stop``."""
        consumer = Consumer({**self._config, "enable.partition.eof": True})
        try:
            metadata = consumer.list_topics(self._topic, timeout=METADATA_TIMEOUT_S)
            partitions = sorted(metadata.topics[self._topic].partitions)
            ends = {p: watermarks(consumer, TopicPartition(self._topic, p))[1] for p in partitions}
            consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in partitions])
            behind = {p for p, end in ends.items() if end > 0}
            if not behind:
                self.loaded.set()
            while not stop.is_set():
                message = consumer.poll(POLL_S)
                if message is None:
                    continue
                partition, offset, error = message.partition(), message.offset(), message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("barrier read error: %s", error)
                else:
                    self._observe(message)
                if partition in behind and offset is not None:
                    # Where the partition stands: after this message, or (at its end)
                    # the offset an EOF names, past any transaction marker.
                    position = offset if error is not None else offset + 1
                    if position >= ends[partition]:
                        behind.discard(partition)
                        if not behind:
                            self.loaded.set()
        finally:
            consumer.close()

    def _observe(self, message: Message) -> None:
        control = control_of(self._codec, message)
        name = destination_of(control.source) if control is not None else None
        if control is None or name is None:
            return
        with self._lock:
            if control.kind is ControlKind.PAUSED:
                self._paused.add(name)
            else:
                self._paused.discard(name)
        paused = control.kind is ControlKind.PAUSED
        metrics.DESTINATION_PAUSED.labels(name).set(1 if paused else 0)
        log.info("destination=%s %s (%s)", name, "paused" if paused else "resumed", control.sync_id)


def hold_while_paused(consumer: Consumer, paused: Any, stop: threading.Event, *, name: str) -> bool:
    """While ``paused()``, keep every assigned partition paused and the group member
    alive; True when ``stop`` was set meanwhile. A message fetched for a partition
    assigned during the wait (a rebalance) is sought back, never skipped."""
    held = False
    while paused() and not stop.is_set():
        if not held:
            log.info("destination=%s paused: its changes wait in Kafka", name)
            held = True
        consumer.pause(consumer.assignment())
        message = consumer.poll(POLL_S)
        if message is not None and message.error() is None:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is not None and partition is not None and offset is not None:
                consumer.seek(TopicPartition(topic, partition, offset))
    if held:
        consumer.resume(consumer.assignment())
        log.info("destination=%s resumed", name)
    return stop.is_set()
