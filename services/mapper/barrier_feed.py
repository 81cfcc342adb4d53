"""The barrier topic as the mapper's loop reads it: everything on it before the first
change is mapped, new controls between batches, and up to the end its reader last
heard of before a batch with real-time changes. Each control it reads goes to the
``Barriers`` (barrier.py), which decide what is held and released."""

from __future__ import annotations

import logging
import threading
from typing import Final

from confluent_kafka import Consumer, Message, TopicPartition

from services.core import metrics
from services.core.barrier_controls import control_of
from services.core.codecs import Codec
from services.core.contracts import ControlKind, SyncControl, destination_of
from services.core.kafka import watermarks
from services.core.topic_reader import read_to_end
from services.mapper.barrier import Barriers

log = logging.getLogger(__name__)

# How long the barrier's history may take to read at start-up before each warning.
BARRIER_WARN_S: Final = 30.0
# The longest a batch waits for the barrier's newest controls before it is mapped.
BARRIER_CATCH_UP_S: Final = 10.0


class BarrierFeed:
    def __init__(
        self,
        reader: Consumer,
        *,
        topic: str,
        codec: Codec[SyncControl],
        barriers: Barriers,
    ) -> None:
        """``reader`` must report partition EOF (``enable.partition.eof``)."""
        self._reader = reader
        self._topic = topic
        self._codec = codec
        self._barriers = barriers
        # Per partition, the next offset to read.
        self._positions: dict[int, int] = {}

    def start(self, stop: threading.Event) -> bool:
        """Read everything already on the barrier; False when stopped first. It never
        gives up: until it is done the loop makes no progress, which /healthz shows."""
        topic = self._topic
        partitions = self._reader.list_topics(topic, timeout=30).topics[topic].partitions
        # Every partition stays assigned: the barrier is read on as the loop runs.
        self._reader.assign([TopicPartition(topic, p, 0) for p in partitions])
        self._positions = dict.fromkeys(partitions, 0)
        ends = {p: watermarks(self._reader, TopicPartition(topic, p))[1] for p in partitions}
        left = read_to_end(
            self._reader,
            topic,
            self._observe,
            starts=self._positions.copy(),
            ends=ends,
            assign=False,
            deadline_s=None,
            stopped=stop.is_set,
            waiting=lambda reading: log.warning(
                "barrier partitions %s not read to their end yet", sorted(reading)
            ),
            waiting_every_s=BARRIER_WARN_S,
        )
        if left:
            return False
        self._read_up_to(ends)
        return True

    def poll(self) -> None:
        """Whatever new controls have arrived, without waiting."""
        for message in self._reader.consume(100, 0):
            if not message.error():
                self._observe(message)

    def catch_up(self) -> None:
        """Read the barrier up to the end its reader last heard of, before mapping
        real-time changes.

        A change is held by its offset against STARTED's, so STARTED should be known
        before any change after it is mapped. The reader long-polls the barrier, so
        the end it knows trails a new control by a fetch round trip; a change mapped
        in that window before its STARTED was seen is applied rather than held, which
        the per-field version rule keeps correct. (Asking the broker for the end on
        every batch would close the window at ~100 ms a batch.)
        """
        ends: dict[int, int] = {}
        for partition, position in self._positions.items():
            end = self._reader.get_watermark_offsets(
                TopicPartition(self._topic, partition), cached=True
            )[1]
            if end is not None and end > position:
                ends[partition] = end
        if not ends:
            return
        left = read_to_end(
            self._reader,
            self._topic,
            self._observe,
            starts={p: self._positions[p] for p in ends},
            ends=ends,
            assign=False,
            deadline_s=BARRIER_CATCH_UP_S,
        )
        for partition in sorted(left):
            # Nothing readable up to the end (e.g. a transaction still open): go on.
            log.warning(
                "barrier partition %d: not read up to offset %d", partition, ends[partition]
            )
        self._read_up_to(ends)

    def close(self) -> None:
        self._reader.close()

    def _read_up_to(self, ends: dict[int, int]) -> None:
        """The barrier is read up to ``ends``, whether its last offsets held a control
        or only a transaction's marker."""
        for partition, end in ends.items():
            self._positions[partition] = max(self._positions[partition], end)

    def _observe(self, message: Message) -> None:
        partition, offset = message.partition(), message.offset()
        if partition is not None and offset is not None:
            self._positions[partition] = offset + 1
        control = control_of(self._codec, message)
        if control is None:
            return
        if destination_of(control.source) is not None:
            return  # a destination's pause: the outbound service's, not the mapper's
        starts = {p.partition: p.offset for p in control.changes_start_offsets}
        pausing = control.kind in (ControlKind.PAUSED, ControlKind.RESUMED)
        log.info(
            "%s %s of %s: %s%s",
            "pause" if pausing else "full sync",
            control.sync_id,
            control.source,
            control.kind.value.lower(),
            f" (holding changes from offsets {starts})" if starts else "",
        )
        metrics.SOURCE_PAUSED.labels(control.source).set(
            1 if control.kind is ControlKind.PAUSED else 0
        )
        self._barriers.observe(control)
