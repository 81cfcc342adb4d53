"""Durable publishing for ingest: a webhook's answer waits on this (guarantee 1).

The life of one request's events:

1. The webhook handler hands ``publish`` every event of the request at once.
2. If librdkafka reports every broker down, or its queue cannot take the whole
   request, nothing is enqueued and ``BrokerUnavailable`` is raised (the handler
   answers 503 with Retry-After). Refusing up front means such a request leaves
   nothing half-written.
3. Each event is produced by the idempotent producer (``acks=all``) with a delivery
   callback. Callbacks run on this publisher's poll thread and count down a
   per-request tracker.
4. When the last event is acknowledged, or the first one fails, the tracker wakes
   the request on the event loop, once per request rather than once per event.
5. Any failure raises ``BrokerUnavailable``. Events of that request that did reach
   Kafka are sent again when the CRM retries; event ids and per-record versions make
   those duplicates harmless downstream (guarantee 2).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import KafkaError, Producer

log = logging.getLogger(__name__)

POLL_INTERVAL_S: Final = 0.05
QUEUE_CAPACITY: Final = 100_000
BROKER_STATES_UP: Final = frozenset({"UP"})


class BrokerUnavailable(Exception):
    """Kafka cannot take the events now; the caller should retry later."""


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    key: bytes
    value: bytes


class _RequestTracker:
    """Counts one request's deliveries down on the poll thread; resolves its future once.

    It also keeps, per partition, the offset after the last delivered message: a full
    sync tells the mapper how far into the fullsync topic its records go.
    """

    __slots__ = ("_future", "_loop", "_pending", "_settled", "end_offsets")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self._loop = loop
        self._future: asyncio.Future[KafkaError | None] = loop.create_future()
        self._pending = count
        self._settled = False
        self.end_offsets: dict[int, int] = {}

    @property
    def future(self) -> asyncio.Future[KafkaError | None]:
        return self._future

    def on_delivery(self, error: KafkaError | None, message: Any) -> None:
        if self._settled:
            return
        self._pending -= 1
        if error is None:
            partition, offset = message.partition(), message.offset()
            if offset + 1 > self.end_offsets.get(partition, 0):
                self.end_offsets[partition] = offset + 1
        if error is not None or self._pending == 0:
            self._settled = True
            self._loop.call_soon_threadsafe(self._settle, error)

    def _settle(self, error: KafkaError | None) -> None:
        if not self._future.done():
            self._future.set_result(error)


class KafkaPublisher:
    def __init__(self, *, producer_config: dict[str, Any]) -> None:
        config = {
            **producer_config,
            "queue.buffering.max.messages": QUEUE_CAPACITY,
            "statistics.interval.ms": 1000,
            "error_cb": self._on_error,
            "stats_cb": self._on_stats,
        }
        self._producer = Producer(config)
        self._brokers_up = True  # optimistic until librdkafka says otherwise
        self._fatal: str | None = None
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True)
        self._poller.start()

    def unavailable_reason(self) -> str | None:
        if self._fatal is not None:
            return f"producer failed: {self._fatal}"
        if not self._brokers_up:
            return "no Kafka broker reachable"
        return None

    async def publish(self, messages: Sequence[OutgoingMessage]) -> dict[int, int]:
        """Return once Kafka acknowledged every message; raise BrokerUnavailable otherwise.

        Returns, per partition, the offset after the last of these messages (the
        callbacks wrote it before the future resolved, on the loop, so it is complete).
        """
        if not messages:
            return {}
        reason = self.unavailable_reason()
        if reason is not None:
            raise BrokerUnavailable(reason)
        if len(self._producer) + len(messages) > QUEUE_CAPACITY:
            raise BrokerUnavailable("producer queue full")
        tracker = _RequestTracker(asyncio.get_running_loop(), len(messages))
        for index, message in enumerate(messages):
            try:
                self._producer.produce(
                    message.topic,
                    key=message.key,
                    value=message.value,
                    on_delivery=tracker.on_delivery,
                )
            except BufferError:
                # Only reachable when concurrent requests filled the queue after the
                # capacity check. The part already enqueued is delivered or not; the
                # CRM's retry and downstream idempotency cover both (step 5).
                log.warning("producer queue filled mid-request enqueued=%s", index)
                raise BrokerUnavailable("producer queue full") from None
        error = await tracker.future
        if error is not None:
            raise BrokerUnavailable(f"Kafka did not acknowledge: {error.str()}")
        return tracker.end_offsets

    def flush(self, timeout_s: float) -> int:
        """Deliver what is queued; return how many messages are still undelivered."""
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float = 30.0) -> None:
        remaining = self.flush(timeout_s)
        if remaining:
            log.error("producer closed with undelivered messages count=%s", remaining)
        self._stop.set()
        self._poller.join(timeout=5)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(POLL_INTERVAL_S)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error.str()
            log.error("fatal producer error %s", error.str())
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._brokers_up = False
            log.warning("all Kafka brokers down")
        else:
            log.info("producer notice %s", error.str())

    def _on_stats(self, stats_json: str) -> None:
        stats = json.loads(stats_json)
        brokers = stats.get("brokers", {}).values()
        up = any(broker.get("state") in BROKER_STATES_UP for broker in brokers)
        if up != self._brokers_up:
            log.info("Kafka brokers %s", "reachable" if up else "unreachable")
        self._brokers_up = up
