"""Where each source's pulls stand, kept on the compacted connector-state topic.

Poll watermarks and full-sync progress must survive restarts, and Kafka is already
the durable store every service depends on, so the state lives there: key
``<source>:poll`` or ``<source>:fullsync``, value a ``ConnectorState`` (Avro). At
start-up ingest reads the topic to its end; each save is an acknowledged produce
(acks=all), so a state that was saved is never lost and a restart resumes from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from services.core.codecs import Codec, schemas_dir
from services.core.serde import Converter, SchemaCatalog, load_schema_file
from services.core.topic_reader import read_compacted
from services.ingest.publisher import KafkaPublisher, OutgoingMessage

POLL: Final = "poll"
FULLSYNC: Final = "fullsync"


class SyncStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class PollState:
    watermark: datetime | None = None
    cursor: str | None = None
    boundary: tuple[str, ...] = ()
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    changes_delivered: int = 0


@dataclass(frozen=True)
class FullSyncState:
    sync_id: str
    status: SyncStatus
    origin: str
    owner: str
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    records_done: int = 0
    records_rejected: int = 0
    records_total: int | None = None
    cursor: str | None = None
    end_offsets: Mapping[int, int] = field(default_factory=dict)
    reason: str | None = None

    @property
    def running(self) -> bool:
        return self.status is SyncStatus.RUNNING


def _poll_record(state: PollState) -> dict[str, Any]:
    record = dataclasses.asdict(state)
    record["boundary"] = list(state.boundary)
    return record


def _fullsync_record(state: FullSyncState) -> dict[str, Any]:
    record = dataclasses.asdict(state)
    record["status"] = state.status.value
    record["end_offsets"] = {str(p): o for p, o in state.end_offsets.items()}
    return record


def _encode_record(value: tuple[str, PollState | FullSyncState]) -> dict[str, Any]:
    source, state = value
    return {
        "source": source,
        "poll": _poll_record(state) if isinstance(state, PollState) else None,
        "fullsync": _fullsync_record(state) if isinstance(state, FullSyncState) else None,
    }


def _decode_record(record: Mapping[str, Any]) -> tuple[str, PollState | FullSyncState]:
    if record["poll"] is not None:
        poll = dict(record["poll"])
        poll["boundary"] = tuple(poll["boundary"])
        return record["source"], PollState(**poll)
    sync = dict(record["fullsync"])
    sync["status"] = SyncStatus(sync["status"])
    sync["end_offsets"] = {int(p): o for p, o in sync["end_offsets"].items()}
    return record["source"], FullSyncState(**sync)


def state_codec(catalog: SchemaCatalog) -> Codec[tuple[str, PollState | FullSyncState]]:
    converter = Converter(
        schema=load_schema_file(schemas_dir() / "connector_state.avsc"), catalog=catalog
    )
    return Codec(converter=converter, to_record=_encode_record, from_record=_decode_record)


class StateStore:
    def __init__(
        self,
        *,
        topic: str,
        publisher: KafkaPublisher,
        codec: Codec[tuple[str, PollState | FullSyncState]],
    ) -> None:
        self._topic = topic
        self._publisher = publisher
        self._codec = codec
        self._polls: dict[str, PollState] = {}
        self._syncs: dict[str, FullSyncState] = {}

    def load(self, consumer_config: dict[str, Any]) -> None:
        """Read every saved state (blocking; run it before serving)."""
        for value in read_compacted(consumer_config, topic=self._topic).values():
            source, state = self._codec.decode(value)
            if isinstance(state, PollState):
                self._polls[source] = state
            else:
                self._syncs[source] = state

    def poll(self, source: str) -> PollState | None:
        return self._polls.get(source)

    def fullsync(self, source: str) -> FullSyncState | None:
        return self._syncs.get(source)

    def fullsyncs(self) -> dict[str, FullSyncState]:
        return dict(self._syncs)

    async def save_poll(self, source: str, state: PollState) -> None:
        await self._save(f"{source}:{POLL}", source, state)
        self._polls[source] = state

    async def save_fullsync(self, source: str, state: FullSyncState) -> None:
        await self._save(f"{source}:{FULLSYNC}", source, state)
        self._syncs[source] = state

    async def _save(self, key: str, source: str, state: PollState | FullSyncState) -> None:
        value = self._codec.encode((source, state))
        await self._publisher.publish([OutgoingMessage(self._topic, key.encode(), value)])
