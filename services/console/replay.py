"""Replaying rejected events, once the config (or the CRM's data) is fixed.

A rejection the mapper made (a value its rules refused) carries the change it
rejected; replaying it produces that change again to the changes topic, marked with
the origin REPLAY, so the mapper maps it with the rules it runs now. A rejection the
writer made carries a profile update; replaying it produces the update again to
profile-updates. When the rejected topic kept only a prefix of a large value, the
whole message is read from its origin topic (while that topic retains it).

What cannot be replayed says why: a webhook or CSV row refused at ingest never
became a change (the CRM resends it, or a full sync brings it), and a destination's
dead letter is sent again by pushing the profile (``crmsync destination push``).

Each replay is acknowledged by Kafka before it is marked replayed in the index.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from services.core.codecs import WireContracts
from services.core.contracts import Origin
from services.core.kafka import TopicNames
from services.core.serde import DecodeError

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S: Final = 30.0
FETCH_TIMEOUT_S: Final = 10.0


class NotReplayable(Exception):
    pass


@dataclass
class Replayed:
    replayed: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)


class Replayer:
    def __init__(
        self,
        *,
        topics: TopicNames,
        contracts: WireContracts,
        producer_config: dict[str, Any],
        reader_config: dict[str, Any],
    ) -> None:
        self._topics = topics
        self._contracts = contracts
        self._producer = Producer(producer_config)
        self._reader_config = reader_config

    def close(self) -> None:
        self._producer.flush(FLUSH_TIMEOUT_S)

    def why_not(self, row: sqlite3.Row) -> str | None:
        """Why this rejection cannot be replayed, or None when it can."""
        origin = row["origin_topic"]
        if row["stage"] == "ingest":
            return (
                "refused at ingest, it never became a change: the CRM resends it or a full "
                "sync brings it"
            )
        if row["destination"]:
            return (
                "a destination's dead letter: send the profile again with crmsync destination push"
            )
        if origin not in (
            self._topics.changes,
            self._topics.fullsync,
            self._topics.profile_updates,
        ):
            return f"its origin {origin or 'unknown'} is not a topic crmsync replays into"
        if row["value"] is None and row["origin_offset"] is None:
            return "the rejection kept neither the message nor where it came from"
        return None

    def replay(self, rows: Sequence[sqlite3.Row]) -> Replayed:
        """Produce each replayable row's message again; wait for Kafka's acks."""
        result = Replayed()
        failures: dict[int, str] = {}
        pending: list[int] = []
        for row in rows:
            reason = self.why_not(row)
            if reason is None:
                try:
                    topic, key, value = self._message(row)
                except NotReplayable as exc:
                    reason = str(exc)
            if reason is not None:
                result.refused[row["id"]] = reason
                continue
            rejection_id = int(row["id"])

            def delivered(
                error: KafkaError | None, _message: Message, rejection_id: int = rejection_id
            ) -> None:
                if error is not None:
                    failures[rejection_id] = f"Kafka did not take it: {error}"

            self._producer.produce(topic, key=key, value=value, on_delivery=delivered)
            pending.append(rejection_id)
        if self._producer.flush(FLUSH_TIMEOUT_S) > 0:
            for rejection_id in pending:
                failures.setdefault(rejection_id, "Kafka did not acknowledge it in time")
        for rejection_id in pending:
            if rejection_id in failures:
                result.refused[rejection_id] = failures[rejection_id]
            else:
                result.replayed.append(rejection_id)
        log.info("replayed %s rejections, %s refused", len(result.replayed), len(result.refused))
        return result

    def _message(self, row: sqlite3.Row) -> tuple[str, bytes | None, bytes]:
        value = self._original(row)
        if row["origin_topic"] == self._topics.profile_updates:
            return self._topics.profile_updates, row["key"], value
        try:
            change = self._contracts.contact_change.decode(value)
        except DecodeError as exc:
            raise NotReplayable(f"its message is not a change crmsync reads: {exc}") from None
        replayed = change._replace(origin=Origin.REPLAY, received_at=datetime.now(UTC))
        return self._topics.changes, replayed.key, self._contracts.contact_change.encode(replayed)

    def _original(self, row: sqlite3.Row) -> bytes:
        if row["value"] is not None and not row["truncated"]:
            return bytes(row["value"])
        if row["origin_offset"] is None:
            raise NotReplayable("only a prefix of the message was kept, and not where it came from")
        consumer = Consumer({**self._reader_config, "enable.partition.eof": True})
        try:
            consumer.assign(
                [TopicPartition(row["origin_topic"], row["origin_partition"], row["origin_offset"])]
            )
            message = consumer.poll(FETCH_TIMEOUT_S)
        finally:
            consumer.close()
        if (
            message is None
            or message.error() is not None
            or message.offset() != row["origin_offset"]
            or message.value() is None
        ):
            raise NotReplayable(
                f"{row['origin_topic']} no longer holds offset {row['origin_offset']}"
            )
        return bytes(message.value() or b"")
