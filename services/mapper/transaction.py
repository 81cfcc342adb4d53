"""The mapper's transactional producer: every output of a batch in one Kafka
transaction, with no call that can block for ever and no send that can fail alone.

- ``send`` checks a message's size before it is produced (an output the broker would
  refuse is the message's own fault, told as ``OutputTooLarge`` so the engine rejects
  that one input) and, when librdkafka's queue is full, serves it until there is room
  (inside a transaction the queue drains as the broker acknowledges).
- ``commit`` flushes and commits within the transaction timeout; a retriable failure
  is retried, one that needs an abort raises ``TransactionAborted`` after aborting,
  and a fatal one (this producer was fenced) is raised as it is: the process must
  end and be restarted.
- ``init`` retries ``init_transactions`` while the coordinator is busy or unreachable
  (a restarted broker, the previous incarnation's transaction still being aborted),
  saying so in the log, until it succeeds or the engine is stopped.

A call that librdkafka does not return from. ``send_offsets_to_transaction`` can wait
for ever, past its own timeout, when the group coordinator's broker goes away during
the call: librdkafka never checks that request's deadline (librdkafka issues 5456 and
5511, open for the 2.16 series crmsync runs). The commit, abort and offsets calls
therefore run on a helper thread that the engine waits for no longer than the call's
timeout and a grace. A call that outlives that leaves its producer unusable: it is
set aside (never destroyed: destroying it would wait for the stuck call), a new one
with the same transactional id is made and initialised, which fences the old one and
aborts its transaction, and the batch is consumed again. This was the silent stall
of a mapper whose broker restarted during a commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from services.core.crash_points import crash_point
from services.core.kafka import kafka_error, retriable
from services.core.rejections import DEFAULT_MESSAGE_MAX_BYTES, RECORD_OVERHEAD_BYTES
from services.core.retry import Backoff, RetryPolicy, logged

log = logging.getLogger(__name__)

ABORT_TIMEOUT_S: Final = 30.0
INIT_TIMEOUT_S: Final = 30.0
# Waits while the transaction coordinator is not there yet: 0.5 s doubling to 5 s.
INIT_RETRY: Final = RetryPolicy(initial_s=0.5, max_s=5.0)
# A commit or an abort that librdkafka says may pass is made again at once, then after
# waits up to a second.
COMMIT_RETRY: Final = RetryPolicy(initial_s=0.01, max_s=1.0)
ABORT_CALL_RETRY: Final = RetryPolicy(initial_s=0.01, max_s=1.0)
QUEUE_FULL_WAIT_S: Final = 0.05
# How long past its own timeout a transactional call may take before it is given up.
STUCK_GRACE_S: Final = 10.0
# Registering the consumed offsets takes milliseconds with a coordinator at hand; a
# coordinator still loading after a restart is waited for in the next attempt.
OFFSETS_TIMEOUT_S: Final = 15.0


class TransactionAborted(Exception):
    """The batch was rolled back; it is consumed again from the last commit."""


class OutputTooLarge(ValueError):
    """One output is larger than the broker takes: the input that made it is rejected."""


class CallStuck(Exception):
    """librdkafka did not return from a transactional call within its timeout."""


class TransactionalProducer:
    def __init__(
        self,
        make_producer: Callable[[], Producer],
        *,
        transaction_timeout_s: float,
        message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES,
    ) -> None:
        self._make_producer = make_producer
        self._producer = make_producer()
        # Producers stuck in a call: kept referenced, since destroying one would wait
        # for the call that never returns.
        self._set_aside: list[Producer] = []
        self._stop = threading.Event()
        self._timeout_s = transaction_timeout_s
        self.max_value_bytes = message_max_bytes - RECORD_OVERHEAD_BYTES
        self._started = 0.0
        self._delivery_error: KafkaError | None = None
        # The highest offset delivered per (topic, partition): where a committed
        # batch's changelog writes reach.
        self.delivered_offsets: dict[tuple[str, int], int] = {}
        # One bound method for every send's delivery report, made once.
        self._report = self._delivered

    # --- the life of a transaction ----------------------------------------------------

    def init(self, stop: threading.Event) -> bool:
        """Fence earlier incarnations of this transactional id and abort their open
        transaction; False when stopped first."""
        self._stop = stop
        backoff = Backoff(INIT_RETRY)
        while not stop.is_set():
            try:
                self._producer.init_transactions(INIT_TIMEOUT_S)
                return True
            except KafkaException as exc:
                error = kafka_error(exc)
                if error is None or error.fatal():
                    raise
                delay = backoff.next_wait_s(exc)
                log.warning(
                    "transactions not initialised yet (attempt %d), retrying in %.1fs: %s",
                    backoff.failures,
                    delay,
                    exc,
                )
                stop.wait(delay)
        return False

    def begin(self) -> None:
        self._delivery_error = None
        self._started = time.monotonic()
        self._producer.begin_transaction()

    def check_size(self, topic: str, key: bytes, value: bytes | None) -> None:
        """Raises OutputTooLarge when the message is more than the broker takes."""
        size = len(key) + (len(value) if value is not None else 0)
        if size > self.max_value_bytes:
            raise OutputTooLarge(
                f"its {topic} message would be {size} bytes, over the "
                f"{self.max_value_bytes} the broker takes"
            )

    def send(
        self,
        topic: str,
        *,
        key: bytes,
        value: bytes | None,
        partition: int | None = None,
    ) -> None:
        """Send within the open transaction. A send to a given ``partition`` (the
        changelog's) reports its offset to ``delivered_offsets``; the others need no
        report: a failed send fails the commit (librdkafka makes the transaction
        abortable), and a report per message costs a Python call each."""
        self.check_size(topic, key, value)
        while True:
            try:
                if partition is None:
                    self._producer.produce(topic, value, key)
                else:
                    self._producer.produce(
                        topic, value, key, partition=partition, on_delivery=self._report
                    )
                return
            except BufferError:
                # The local queue is full: serve it (delivery reports) until there is room.
                self._producer.poll(QUEUE_FULL_WAIT_S)

    def commit(self, offsets: list[Any], group_metadata: Any) -> None:
        """Commit the transaction with the consumed ``offsets``; raises
        TransactionAborted when it had to be aborted instead."""
        try:
            left = min(self._left_s(), OFFSETS_TIMEOUT_S)
            self._bounded(
                "send_offsets_to_transaction",
                partial(self._producer.send_offsets_to_transaction, offsets, group_metadata, left),
                left,
            )
            # Delivery reports are served before the commit, so the changelog's offsets
            # are known when RocksDB is written.
            if self._producer.flush(self._left_s()) > 0:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "outputs not delivered"))
            if self._delivery_error is not None:
                raise KafkaException(self._delivery_error)
            crash_point("mapper-before-commit")
            self._commit_with_retries()
        except KafkaException as exc:
            self.abort(exc)
        except CallStuck as exc:
            self._replace(exc)

    def _commit_with_retries(self) -> None:
        # Retried while librdkafka says a commit may pass, and time is left in the
        # transaction for one more.
        policy = COMMIT_RETRY.with_time(max(0.0, self._left_s() - 1))
        for attempt in policy.retrying(on=KafkaException, when=retriable):
            with attempt:
                left = self._left_s()
                self._bounded(
                    "commit_transaction", partial(self._producer.commit_transaction, left), left
                )
                return

    def abort(self, exc: BaseException) -> None:
        """Abort the open transaction because of ``exc``; always raises:
        TransactionAborted, or ``exc`` itself when it is fatal (fenced)."""
        error = kafka_error(exc) if isinstance(exc, KafkaException) else None
        if error is not None and error.fatal():
            raise exc
        log.warning("transaction aborted, the batch is consumed again: %s", exc)
        try:
            for attempt in ABORT_CALL_RETRY.retrying(
                on=KafkaException,
                when=retriable,
                before_sleep=logged(log, "abort not complete yet"),
            ):
                with attempt:
                    self._bounded(
                        "abort_transaction",
                        partial(self._producer.abort_transaction, ABORT_TIMEOUT_S),
                        ABORT_TIMEOUT_S,
                    )
        except CallStuck as stuck:
            self._replace(stuck)  # raises TransactionAborted
        raise TransactionAborted(str(exc)) from exc

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)

    # --- calls that may never return ------------------------------------------------

    def _bounded(self, what: str, call: Callable[[], object], timeout_s: float) -> None:
        """``call()`` on a helper thread, waited for ``timeout_s`` and a grace at most;
        raises what it raised, or CallStuck."""
        done = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                call()
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()

        # A daemon: a thread stuck in librdkafka must not keep the process from ending.
        threading.Thread(target=run, name=f"kafka-{what}", daemon=True).start()
        if not done.wait(timeout_s + STUCK_GRACE_S):
            raise CallStuck(f"{what} did not return within {timeout_s + STUCK_GRACE_S:.0f}s")
        if failure:
            raise failure[0]

    def _replace(self, stuck: CallStuck) -> None:
        """Set the stuck producer aside, fence it with a new one, and raise
        TransactionAborted: the batch is consumed again."""
        log.error(
            "%s; a new producer fences this one and aborts its transaction "
            "(librdkafka issue 5456), and the batch is consumed again",
            stuck,
        )
        self._set_aside.append(self._producer)
        self._producer = self._make_producer()
        self.init(self._stop)
        raise TransactionAborted(str(stuck)) from stuck

    # --- delivery reports -------------------------------------------------------------

    def _left_s(self) -> float:
        return max(1.0, self._timeout_s - (time.monotonic() - self._started))

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._delivery_error = error
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is not None and partition is not None and offset is not None:
            key = (topic, partition)
            if offset > self.delivered_offsets.get(key, -1):
                self.delivered_offsets[key] = offset
