"""Rejected events that always fit the rejected topic.

A RejectedEvent carries the raw bytes it rejects. Input near the producer's
``message.max.bytes`` (1,000,000 bytes by default) would make its rejection too large
to produce: the produce fails (MSG_SIZE_TOO_LARGE), and a stage that must make its
rejections durable before moving on would retry it forever. So every stage encodes
its rejections here, within the limit:

1. The event is encoded as it is; when it fits, that is what goes out.
2. Otherwise its raw value is cut to the prefix that fits. The reason says so, with
   the original size, and the attributes ``value_truncated`` and ``value_bytes`` say
   it to tools. The origin topic, partition and offset still go out, so the whole
   message can be replayed from its origin while that topic retains it.
3. Should even an empty value not fit (a huge key or reason), the key and the
   reason are cut too, and other attributes are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from confluent_kafka import Message

from services.core.codecs import Codec
from services.core.config import KafkaSettings
from services.core.contracts import RejectedEvent

# librdkafka's default message.max.bytes, and what a broker takes by default.
DEFAULT_MESSAGE_MAX_BYTES: Final = 1_000_000
# What a record adds to its key and value on the wire (record and batch headers, with
# room to spare), since both librdkafka and the broker count it against the limit.
RECORD_OVERHEAD_BYTES: Final = 1024
# Step 3: what is kept of a key or a reason that left no room for anything else.
KEY_PREFIX_BYTES: Final = 1024
REASON_PREFIX_CHARS: Final = 2000
# Each shrinking attempt subtracts exactly the excess, so it converges in one or two
# more (a shorter value can also shorten its length prefix).
MAX_ATTEMPTS: Final = 4


class RejectionTooLarge(ValueError):
    """Even the smallest form of the rejection exceeds the limit (a limit far too low)."""


@dataclass(frozen=True)
class ProducibleRejection:
    """A rejection ready to produce: ``key`` and ``value`` go to the rejected topic."""

    event: RejectedEvent
    """What was encoded: the input rejection, or its cut form."""
    key: bytes | None
    value: bytes
    truncated: bool


def rejection_message_limit(settings: KafkaSettings) -> int:
    """The largest message a producer built from ``settings`` can put on the rejected
    topic: the producer's ``message.max.bytes``, or the topic's ``max.message.bytes``
    when the config sets a lower one."""
    limit = _as_int(settings.client.get("message.max.bytes"), DEFAULT_MESSAGE_MAX_BYTES)
    topic_limit = settings.topics.rejected.config.get("max.message.bytes")
    if topic_limit is not None:
        limit = min(limit, _as_int(topic_limit, limit))
    return limit


def producible_rejection(
    rejection: RejectedEvent, *, codec: Codec[RejectedEvent], max_message_bytes: int
) -> ProducibleRejection:
    """``rejection`` encoded with ``codec`` so that its key and value together stay
    within ``max_message_bytes`` (see the steps above).

    Produce ``key`` and ``value`` of the result; raises RejectionTooLarge only when
    even a cut rejection cannot fit (a limit of a few kilobytes)."""
    budget = max_message_bytes - RECORD_OVERHEAD_BYTES
    # Step 1
    encoded = codec.encode(rejection)
    if _size(rejection, encoded) <= budget:
        return ProducibleRejection(rejection, rejection.key, encoded, truncated=False)
    # Step 2
    original = rejection.value or b""
    kept = len(original)
    excess = _size(rejection, encoded) - budget
    for _attempt in range(MAX_ATTEMPTS):
        kept = max(0, kept - excess)
        cut = _with_value_prefix(rejection, original, kept)
        encoded = codec.encode(cut)
        excess = _size(cut, encoded) - budget
        if excess <= 0:
            return ProducibleRejection(cut, cut.key, encoded, truncated=True)
        if kept == 0:
            break
    # Step 3
    key = rejection.key[:KEY_PREFIX_BYTES] if rejection.key is not None else None
    cut = _with_value_prefix(
        replace(rejection, key=key, reason=rejection.reason[:REASON_PREFIX_CHARS], attributes={}),
        original,
        0,
    )
    encoded = codec.encode(cut)
    if _size(cut, encoded) > budget:
        raise RejectionTooLarge(
            f"a rejection needs {_size(cut, encoded) + RECORD_OVERHEAD_BYTES} bytes even "
            f"cut, over the limit of {max_message_bytes}"
        )
    return ProducibleRejection(cut, cut.key, encoded, truncated=True)


def _with_value_prefix(rejection: RejectedEvent, original: bytes, kept: int) -> RejectedEvent:
    return replace(
        rejection,
        value=original[:kept],
        reason=(
            f"{rejection.reason} [value truncated to its first {kept} of {len(original)} "
            "bytes to fit the rejected topic; the whole message is at its origin]"
        ),
        attributes={
            **rejection.attributes,
            "value_truncated": "true",
            "value_bytes": str(len(original)),
        },
    )


def _size(rejection: RejectedEvent, encoded: bytes) -> int:
    """What counts against the limit: the key (produced as the message key) and value."""
    return len(rejection.key or b"") + len(encoded)


def _as_int(value: Any, default: int) -> int:
    """A librdkafka size property as the int it means; ``default`` when unset."""
    if value is None:
        return default
    return int(value)


def consumed_rejection(
    message: Message,
    *,
    stage: str,
    reason: str,
    rejected_at: datetime,
    source: str | None = None,
    event_id: str | None = None,
    attributes: dict[str, str] | None = None,
) -> RejectedEvent:
    """The rejection of a consumed ``message``: its key and value as they came, and its
    origin to replay it from."""
    return RejectedEvent(
        stage=stage,
        reason=reason,
        rejected_at=rejected_at,
        source=source,
        event_id=event_id,
        key=message.key(),
        value=message.value(),
        origin_topic=message.topic(),
        origin_partition=message.partition(),
        origin_offset=message.offset(),
        attributes=attributes or {},
    )
