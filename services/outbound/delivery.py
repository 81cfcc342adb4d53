"""One destination's delivery loop: profile changes from Kafka to the destination, in
order, nothing lost.

Each destination has a loop of its own, on a thread of its own, in a consumer group
of its own (``<prefix>outbound.<destination>``): a destination that is down, slow or
paused holds back only its own changes, which wait in Kafka, and never another's.

The life of a batch:

1. Up to ``batch_max_records`` ProfileChanged messages are consumed, in partition
   order (a profile's changes are on one partition, keyed by its id).
2. Each is decoded; an undecodable one becomes a RejectedEvent (stage ``outbound``).
3. Each change is shaped for the destination (services/outbound/outgoing.py): a
   change from the destination's own system, or one that touches nothing it maps,
   is skipped; so is one of a profile that does not match the destination's
   ``send_if`` as the store holds it now (read once per batch). A value a field's
   transform cannot shape dead-letters its change.
4. The changes go out in chunks of the destination's ``batch_size``, in order. A chunk
   the destination does not take (down, throttled, no answer: ``ApiUnavailable``
   after the client's own retries) is sent again after a backoff, its partitions
   paused meanwhile and the consumer polled so the group keeps this member, until it
   is taken or the service stops; nothing after it goes first. A chunk refused as a
   whole is sent again a change at a time. A change the destination refuses (a 4xx)
   is dead-lettered: a RejectedEvent on ``rejected`` with
   the destination's answer, the destination and status in its attributes, and the
   message's origin to replay it from. An id the destination gave a profile it
   created becomes a link change on the changes topic (services/outbound/links.py).
5. The rejections and links are flushed to Kafka, then the batch's offsets are
   committed.

Delivery is at least once: a crash before step 5 sends the batch again on restart.
A destination dedupes by the event ids (the webhook's ``webhook-id`` is derived from
them; vendors with idempotency keys get them from the event ids).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from services.core import metrics
from services.core.api_client import ApiUnavailable
from services.core.codecs import Codec
from services.core.contracts import ContactChange, RejectedEvent, record_key
from services.core.crash_points import crash_point
from services.core.destinations import DestinationCommon
from services.core.kafka import is_error, wait_paused
from services.core.profile_changed import ProfileChanged, ProfileChangeKind
from services.core.rejections import (
    DEFAULT_MESSAGE_MAX_BYTES,
    consumed_rejection,
    producible_rejection,
)
from services.core.retry import Backoff, RetryPolicy
from services.core.serde import DecodeError
from services.mapper.rules.conditions import matches
from services.mapper.rules.errors import RuleError
from services.outbound.destinations.base import Delivered, Destination, Refusal
from services.outbound.links import link_change
from services.outbound.outgoing import OutgoingChange, outgoing
from services.outbound.pauses import hold_while_paused
from services.writer.stores.base import StoredProfile

log = logging.getLogger(__name__)

# Waits while a destination does not take a chunk: from 1 s doubling to 60 s, with
# jitter (the client has already retried it a few times within seconds).
UNAVAILABLE_RETRY: Final = RetryPolicy(initial_s=1.0, max_s=60.0)
FLUSH_TIMEOUT_S: Final = 30.0
STAGE: Final = "outbound"
FILTERED_OUT: Final = "filtered_out"

ProfileReader = Callable[[Sequence[int]], list[StoredProfile]]
"""The current state of profiles, by id, from the store (for ``send_if``)."""

# Where a kill -9 tests the loop: the destination has the batch, Kafka's offsets do not.
CRASH_AFTER_DELIVERY: Final = "outbound-after-delivery"
CRASH_POINTS: Final = (CRASH_AFTER_DELIVERY,)


class NotDurable(Exception):
    """Rejections or links Kafka did not acknowledge: the batch is not committed."""


@dataclass(frozen=True)
class LoopSettings:
    topic: str
    rejected_topic: str
    batch_max_records: int
    batch_max_wait_ms: int
    rejected_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES


@dataclass(frozen=True)
class LinkSettings:
    """Where the ids a destination assigns go: the changes topic, as changes of the
    destination's own source (whose email field carries the profile's email)."""

    topic: str
    source: str
    email_field: str
    codec: Codec[ContactChange]


class DeliveryLoop:
    def __init__(
        self,
        *,
        destination: Destination,
        settings: DestinationCommon,
        consumer: Consumer,
        producer: Producer,
        changes: Codec[ProfileChanged],
        rejected: Codec[RejectedEvent],
        loop_settings: LoopSettings,
        stop: threading.Event,
        links: LinkSettings | None = None,
        profiles: ProfileReader | None = None,
        paused: Callable[[], bool] = lambda: False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._destination = destination
        self._name = destination.name
        self._settings = settings
        self._consumer = consumer
        self._producer = producer
        self._changes = changes
        self._rejected = rejected
        self._loop = loop_settings
        self._stop = stop
        self._links = links
        self._unlinked_told = False
        self._profiles = profiles
        self._paused = paused
        self._clock = clock
        self.delivered = 0

    def run(self) -> None:
        if self._settings.paused:
            log.info("destination=%s paused: its changes wait in Kafka", self._name)
            self._stop.wait()
            return
        self._consumer.subscribe([self._loop.topic])
        try:
            with asyncio.Runner() as runner:
                runner.run(self._destination.open())
                try:
                    while not self._stop.is_set():
                        if self._paused() and hold_while_paused(
                            self._consumer, self._paused, self._stop, name=self._name
                        ):
                            break
                        # Step 1
                        messages = self._consumer.consume(
                            num_messages=self._loop.batch_max_records,
                            timeout=self._loop.batch_max_wait_ms / 1000,
                        )
                        batch = [m for m in messages if not is_error(m)]
                        if batch and not self._process(batch, runner):
                            break
                finally:
                    runner.run(self._destination.close())
        finally:
            self._producer.flush(FLUSH_TIMEOUT_S)
            self._consumer.close()
            log.info(
                "delivery loop stopped destination=%s delivered=%s", self._name, self.delivered
            )

    def _process(self, batch: Sequence[Message], runner: asyncio.Runner) -> bool:
        """One batch through steps 2 to 5; False when asked to stop before it was all
        delivered (it is consumed again on restart)."""
        # Steps 2 and 3
        rejections, sending = self._shaped(batch)
        # Step 4
        links: list[ContactChange] = []
        size = self._destination.batch_size
        for start in range(0, len(sending), size):
            chunk = sending[start : start + size]
            delivered = self._send_until_taken([change for change, _ in chunk], runner)
            if delivered is None:
                return False
            if len(chunk) > 1 and len(delivered.refused) == len(chunk):
                # Refused as a whole: a change at a time, so that a poison change does
                # not take its neighbours to the dead letter with it.
                delivered = Delivered()
                for change, _message in chunk:
                    alone = self._send_until_taken([change], runner)
                    if alone is None:
                        return False
                    delivered.refused += alone.refused
                    delivered.assigned.update(alone.assigned)
            refused = {id(r.change): r for r in delivered.refused}
            for change, message in chunk:
                refusal = refused.get(id(change))
                if refusal is not None:
                    rejections.append(self._dead_letter(message, refusal))
            links += self._linked(chunk, delivered.assigned)
            self._observe_sent(chunk, refused)
        crash_point(CRASH_AFTER_DELIVERY)
        # Step 5
        if rejections or links:
            self._produce(rejections, links)
        try:
            self._consumer.commit(offsets=_next_offsets(batch), asynchronous=False)
        except KafkaException as exc:
            # The partitions moved to another member meanwhile (a rebalance): it
            # delivers the batch again, which at least once allows.
            log.warning("destination=%s offsets not committed: %s", self._name, exc)
        return True

    def _shaped(
        self, batch: Sequence[Message]
    ) -> tuple[list[RejectedEvent], list[tuple[OutgoingChange, Message]]]:
        """Steps 2 and 3: the batch's rejections, and its changes for the destination."""
        rejections: list[RejectedEvent] = []
        events: list[tuple[ProfileChanged, Message]] = []
        for message in batch:
            try:
                events.append((self._changes.decode(message.value() or b""), message))
            except DecodeError as exc:
                rejections.append(self._rejection(message, f"undecodable ProfileChanged: {exc}"))
        matching = self._matching({event.profile_id for event, _ in events})
        sending: list[tuple[OutgoingChange, Message]] = []
        for event, message in events:
            shaped: OutgoingChange | str
            if (
                matching is not None
                and event.profile_id not in matching
                and event.kind is not ProfileChangeKind.ERASED
            ):
                shaped = FILTERED_OUT
            else:
                try:
                    shaped = outgoing(event, self._settings, destination=self._name)
                except RuleError as exc:
                    reason = f"not sendable to destination {self._name}: {exc}"
                    rejections.append(
                        self._rejection(
                            message, reason, source=event.source, event_id=event.event_id
                        )
                    )
                    continue
            if isinstance(shaped, str):
                metrics.DESTINATION_SKIPPED.labels(self._name, shaped).inc()
                continue
            sending.append((shaped, message))
        return rejections, sending

    def _matching(self, profile_ids: set[int]) -> set[int] | None:
        """Of ``profile_ids``, those whose current attributes match ``send_if`` (None:
        the destination has no filter). An erased profile matches nothing, yet its
        erasure goes out: the destination may hold it from before."""
        condition = self._settings.send_if
        if condition is None or self._profiles is None:
            return None
        return {
            profile.profile_id
            for profile in self._profiles(sorted(profile_ids))
            if matches(condition, {name: a.value for name, a in profile.attributes.items()})
        }

    def _send_until_taken(
        self, chunk: list[OutgoingChange], runner: asyncio.Runner
    ) -> Delivered | None:
        """What became of the chunk once the destination took it; None on stop."""
        backoff = Backoff(UNAVAILABLE_RETRY)
        paused: list[TopicPartition] = []
        try:
            while True:
                try:
                    delivered = runner.run(self._destination.send(chunk))
                except ApiUnavailable as exc:
                    if not paused:
                        paused = self._consumer.assignment()
                        self._consumer.pause(paused)
                    metrics.DESTINATION_UNAVAILABLE.labels(self._name).set(1)
                    metrics.DESTINATION_RETRIES.labels(self._name).inc()
                    delay = backoff.next_wait_s(exc)
                    log.warning(
                        "destination=%s did not take %s changes, retrying in %.1fs: %s",
                        self._name,
                        len(chunk),
                        delay,
                        exc,
                    )
                    if wait_paused(self._consumer, delay, self._stop, why=self._name):
                        return None
                    continue
                metrics.DESTINATION_UNAVAILABLE.labels(self._name).set(0)
                return delivered
        finally:
            if paused:
                self._consumer.resume(paused)

    def _observe_sent(
        self, chunk: list[tuple[OutgoingChange, Message]], refused: dict[int, Refusal]
    ) -> None:
        taken = [change for change, _message in chunk if id(change) not in refused]
        self.delivered += len(taken)
        metrics.DESTINATION_SENT.labels(self._name).inc(len(taken))
        if refused:
            metrics.DESTINATION_DEAD_LETTERED.labels(self._name).inc(len(refused))
        # From the store's commit to the destination's acknowledgement: taken changes only.
        now = self._clock()
        lag = metrics.DESTINATION_LAG.labels(self._name)
        for change in taken:
            lag.observe((now - change.event.committed_at).total_seconds())

    def _dead_letter(self, message: Message, refusal: Refusal) -> RejectedEvent:
        event = refusal.change.event
        log.warning(
            "destination=%s refused profile=%s event=%s status=%s",
            self._name,
            event.profile_id,
            event.event_id,
            refusal.status,
        )
        if refusal.status is None:
            reason = f"not sendable to destination {self._name}: {refusal.answer}"
            attributes = {}
        else:
            reason = f"destination {self._name} refused it ({refusal.status}): {refusal.answer}"
            attributes = {"status": str(refusal.status)}
        return self._rejection(
            message, reason, source=event.source, event_id=event.event_id, attributes=attributes
        )

    def _rejection(
        self,
        message: Message,
        reason: str,
        *,
        source: str | None = None,
        event_id: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> RejectedEvent:
        return consumed_rejection(
            message,
            stage=STAGE,
            reason=reason,
            rejected_at=self._clock(),
            source=source,
            event_id=event_id,
            attributes={"destination": self._name, **(attributes or {})},
        )

    def _linked(
        self, chunk: list[tuple[OutgoingChange, Message]], assigned: dict[int, str]
    ) -> list[ContactChange]:
        """The link changes of the ids ``assigned`` to profiles of ``chunk``."""
        if not assigned:
            return []
        if self._links is None:
            if not self._unlinked_told:
                # Once: a destination without a source always has ids it cannot link.
                log.info(
                    "destination=%s gives ids to the profiles it holds; without a source "
                    "they are not linked to profiles",
                    self._name,
                )
                self._unlinked_told = True
            return []
        latest = {change.event.profile_id: change.event for change, _ in chunk}
        found: list[ContactChange] = []
        for profile_id, record_id in assigned.items():
            event = latest.get(profile_id)
            if event is None:
                continue
            link = link_change(
                event,
                record_id,
                source=self._links.source,
                email_field=self._links.email_field,
                destination=self._name,
                now=self._clock(),
            )
            if link is not None:
                found.append(link)
        return found

    def _produce(self, rejections: list[RejectedEvent], links: list[ContactChange]) -> None:
        failures: list[str] = []

        def on_delivery(error: Any, _message: Any) -> None:
            if error is not None:
                failures.append(str(error))

        if self._links is not None:
            for link in links:
                self._producer.produce(
                    self._links.topic,
                    key=record_key(link.source, link.record_id),
                    value=self._links.codec.encode(link),
                    on_delivery=on_delivery,
                )
            metrics.DESTINATION_LINKED.labels(self._name).inc(len(links))
        for rejection in rejections:
            producible = producible_rejection(
                rejection, codec=self._rejected, max_message_bytes=self._loop.rejected_max_bytes
            )
            self._producer.produce(
                self._loop.rejected_topic,
                key=producible.key,
                value=producible.value,
                on_delivery=on_delivery,
            )
        remaining = self._producer.flush(FLUSH_TIMEOUT_S)
        if remaining or failures:
            raise NotDurable(f"rejections or links not acknowledged: {failures or remaining}")


def _next_offsets(batch: Sequence[Message]) -> list[TopicPartition]:
    """Per partition of ``batch``, the offset after its last message."""
    following: dict[tuple[str, int], int] = {}
    for message in batch:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            raise RuntimeError("consumed message without topic, partition or offset")
        following[(topic, partition)] = offset + 1
    return [TopicPartition(t, p, o) for (t, p), o in following.items()]
