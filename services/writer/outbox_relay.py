"""The outbox relay: committed ProfileChanged events from the store to Kafka.

A batch's events are written to the store's outbox in the batch's own transaction, so
an event exists exactly when its change is committed. The relay then, on the writer's
loop thread between batches:

1. reads the oldest outbox rows (``RELAY_ROWS`` at most), in commit order;
2. produces each row's messages to the ``profile-changes`` topic (keyed by profile id,
   encoded by the writer that stored them) with the idempotent producer, which keeps
   their order per partition through its retries;
3. waits until Kafka has acknowledged all of them (acks=all);
4. deletes those rows.

A crash between 3 and 4 sends those events again after the restart, each with its
event id: readers drop ids they have seen. A crash anywhere else loses nothing, as
the events stay in the outbox until step 4. Kafka not answering leaves them there for
the next round; the batches go on meanwhile. An outbox row that cannot be read
(nothing crmsync writes, but a store can be edited by hand) goes to ``rejected`` with
the reason, so one bad row never holds the others back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from confluent_kafka import Producer

from services.core import metrics
from services.core.codecs import Codec
from services.core.contracts import RejectedEvent
from services.core.crash_points import crash_point
from services.writer.stores.base import OutboxEntry, ProfileStore, TransientStoreError
from services.writer.stores.outbox import UnreadableRow, unpack

log = logging.getLogger(__name__)

# Outbox rows read and sent per round (a row is one written part of a batch); a round
# waits for all of their messages before deleting them.
RELAY_ROWS: Final = 16
DELIVERY_TIMEOUT_S: Final = 30.0

# Where a kill -9 tests the relay: Kafka has the events, the outbox still holds them.
CRASH_AFTER_RELAY_PRODUCE: Final = "writer-after-relay-produce"


class RelayNotDelivered(Exception):
    pass


class OutboxRelay:
    def __init__(
        self,
        *,
        store: ProfileStore,
        producer: Producer,
        topic: str,
        rejected: Codec[RejectedEvent],
        rejected_topic: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._producer = producer
        self._topic = topic
        self._rejected = rejected
        self._rejected_topic = rejected_topic
        self._clock = clock
        self.relayed = 0
        # When the outbox was last seen empty (for crmsync_outbox_lag_seconds).
        self._empty_at = time.monotonic()

    def relay(self) -> bool:
        """Relay what the outbox holds; False when the store or Kafka did not let it
        finish (what is left stays for the next call)."""
        try:
            while True:
                entries = self._store.pending_changes(RELAY_ROWS)
                if not entries:
                    self._observe_empty()
                    return True
                sent = self._send(entries)
                crash_point(CRASH_AFTER_RELAY_PRODUCE)
                self._store.changes_relayed(entries[-1].seq)
                metrics.PROFILE_CHANGES_RELAYED.inc(sent)
                self.relayed += sent
                if len(entries) < RELAY_ROWS:
                    self._observe_empty()
                    return True
        except (TransientStoreError, RelayNotDelivered) as exc:
            metrics.OUTBOX_LAG.set(time.monotonic() - self._empty_at)
            log.warning("profile changes not relayed yet, kept in the outbox: %s", exc)
            return False

    def _send(self, entries: list[OutboxEntry]) -> int:
        failures: list[str] = []

        def on_delivery(error: Any, _message: Any) -> None:
            if error is not None:
                failures.append(str(error))

        produce, topic, sent = self._producer.produce, self._topic, 0
        for entry in entries:
            try:
                messages = unpack(entry.messages)
            except UnreadableRow as exc:
                self._reject(entry, f"outbox row is not a list of messages: {exc}", on_delivery)
                continue
            for key, value in messages:
                produce(topic, key=key, value=value, on_delivery=on_delivery)
            sent += len(messages)
        remaining = self._producer.flush(DELIVERY_TIMEOUT_S)
        if remaining or failures:
            raise RelayNotDelivered(f"Kafka did not acknowledge: {failures or remaining}")
        return sent

    def _reject(
        self, entry: OutboxEntry, reason: str, on_delivery: Callable[[Any, Any], None]
    ) -> None:
        log.error("outbox row rejected seq=%s: %s", entry.seq, reason)
        rejection = RejectedEvent(
            stage="outbox",
            reason=reason,
            rejected_at=self._clock(),
            key=str(entry.seq).encode(),
            value=entry.messages,
        )
        self._producer.produce(
            self._rejected_topic,
            key=rejection.key,
            value=self._rejected.encode(rejection),
            on_delivery=on_delivery,
        )
        metrics.EVENTS_REJECTED.labels("outbox", "", "invalid").inc()

    def _observe_empty(self) -> None:
        self._empty_at = time.monotonic()
        metrics.OUTBOX_LAG.set(0)
