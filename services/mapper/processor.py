"""One message in, the messages to emit out: the mapper's logic without the broker.

The faust agent hands every message of the changes topic to ``ChangeProcessor`` and
sends what it returns. Undecodable messages and changes from unknown sources become
RejectedEvents carrying the original bytes and position, and the stream goes on
(an invalid entry still moves the offset). Keeping this free of faust makes every
rule testable with in-memory messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from services.core import metrics
from services.core.config import Settings
from services.core.contracts import RejectedEvent, WireContracts
from services.core.serde import DecodeError
from services.mapper.rules.mapping import map_change

OutputTopic = Literal["profile_updates", "rejected"]


@dataclass(frozen=True)
class Position:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Emit:
    topic: OutputTopic
    key: bytes
    value: bytes


class ChangeProcessor:
    def __init__(
        self,
        *,
        settings: Settings,
        contracts: WireContracts,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sources = settings.sources
        self._contracts = contracts
        self._clock = clock

    def process(self, *, key: bytes | None, value: bytes | None, position: Position) -> list[Emit]:
        if value is None:
            return [self._reject(key, value, position, reason="empty message value")]
        try:
            change = self._contracts.contact_change.decode(value)
        except DecodeError as exc:
            return [self._reject(key, value, position, reason=f"undecodable ContactChange: {exc}")]
        source = self._sources.get(change.source)
        if source is None:
            return [
                self._reject(
                    key,
                    value,
                    position,
                    reason=f"source {change.source!r} is not configured",
                    source=change.source,
                    event_id=change.event_id,
                )
            ]
        update = map_change(change, source)
        metrics.PROFILE_UPDATES.labels(change.source).inc()
        return [Emit("profile_updates", update.key, self._contracts.profile_update.encode(update))]

    def _reject(
        self,
        key: bytes | None,
        value: bytes | None,
        position: Position,
        *,
        reason: str,
        source: str | None = None,
        event_id: str | None = None,
    ) -> Emit:
        metrics.EVENTS_REJECTED.labels("mapper", source or "", "invalid").inc()
        rejected = RejectedEvent(
            stage="mapper",
            reason=reason,
            rejected_at=self._clock(),
            source=source,
            event_id=event_id,
            key=key,
            value=value,
            origin_topic=position.topic,
            origin_partition=position.partition,
            origin_offset=position.offset,
        )
        return Emit("rejected", key or b"", self._contracts.rejected_event.encode(rejected))
