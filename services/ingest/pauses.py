"""Pausing a source: its changes keep arriving and queue durably until it is resumed.

A pause is a barrier only an operator lifts. ``pause`` writes SyncControl PAUSED to
the barrier topic, naming where each changes partition ended: from there the mapper
holds the source's real-time changes (the full-sync barrier's mechanism, in
services/mapper/barrier.py). ``resume`` writes RESUMED with the pause's id, and the
mapper applies what it held, in the order it arrived. Webhooks are still answered and
polls still run meanwhile: nothing a CRM sends is refused or lost.

The barrier topic is the one record of a pause: each source's latest control there
says whether it is paused, so ingest reads it at start-up and the mapper, the console
and a restarted ingest agree. A full sync cannot start while its source is paused
(its COMPLETED would release the paused changes), nor a pause begin while one runs.

A destination is paused the same way, under the subject ``destination:<name>``: the
outbound service reads the barrier topic too and stops taking that destination's
profile changes, which wait in Kafka (its consumer group's place) until resumed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.core.codecs import Codec
from services.core.contracts import ControlKind, PartitionOffset, SyncControl, destination_of
from services.core.serde import DecodeError
from services.core.topic_reader import read_compacted
from services.ingest.publisher import KafkaPublisher, OutgoingMessage

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class AlreadyPaused(Exception):
    pass


class NotPaused(Exception):
    pass


@dataclass(frozen=True)
class Pause:
    pause_id: str
    since: datetime


class SourcePauses:
    """Which sources are paused, and the pausing and resuming of them."""

    def __init__(
        self,
        *,
        publisher: KafkaPublisher,
        codec: Codec[SyncControl],
        barrier_topic: str,
        changes_end: Callable[[], Awaitable[Mapping[int, int]]],
        clock: Clock = utc_now,
    ) -> None:
        self._publisher = publisher
        self._codec = codec
        self._topic = barrier_topic
        self._changes_end = changes_end
        self._clock = clock
        self._paused: dict[str, Pause] = {}

    def load(self, reader_config: dict[str, Any]) -> None:
        """Read each source's latest control from the barrier topic (blocking)."""
        for key, value in read_compacted(reader_config, topic=self._topic).items():
            try:
                control = self._codec.decode(value)
            except DecodeError as exc:
                log.error("undecodable SyncControl for %r ignored: %s", key, exc)
                continue
            self._observe(control)

    def paused(self, source: str) -> Pause | None:
        return self._paused.get(source)

    async def pause(self, source: str) -> Pause:
        """Pause a source, or a destination by its subject (``destination_subject``)."""
        if source in self._paused:
            raise AlreadyPaused(f"{source} is already paused")
        now = self._clock()
        name = destination_of(source) or source
        pause = Pause(pause_id=f"pause-{name}-{now.strftime('%Y%m%dT%H%M%S%fZ')}", since=now)
        # Where the changes partitions end now: what arrived before the pause is applied.
        # A destination's changes wait in Kafka from wherever its loop stands.
        starts = await self._changes_end() if destination_of(source) is None else {}
        await self._write(
            SyncControl(
                source=source,
                sync_id=pause.pause_id,
                kind=ControlKind.PAUSED,
                at=now,
                changes_start_offsets=tuple(
                    PartitionOffset(p, o) for p, o in sorted(starts.items())
                ),
            )
        )
        log.info("source paused source=%s pause=%s", source, pause.pause_id)
        return pause

    async def resume(self, source: str) -> Pause:
        pause = self._paused.get(source)
        if pause is None:
            raise NotPaused(f"{source} is not paused")
        await self._write(
            SyncControl(
                source=source, sync_id=pause.pause_id, kind=ControlKind.RESUMED, at=self._clock()
            )
        )
        log.info("source resumed source=%s pause=%s", source, pause.pause_id)
        return pause

    async def _write(self, control: SyncControl) -> None:
        # Acknowledged before the caller hears of it, and only then remembered here.
        await self._publisher.publish(
            [OutgoingMessage(self._topic, control.key, self._codec.encode(control))]
        )
        self._observe(control)

    def _observe(self, control: SyncControl) -> None:
        if control.kind is ControlKind.PAUSED:
            self._paused[control.source] = Pause(pause_id=control.sync_id, since=control.at)
        else:
            self._paused.pop(control.source, None)
