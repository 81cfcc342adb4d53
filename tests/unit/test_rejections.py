"""Rejected events always fit the rejected topic: a value too large is cut to a prefix,
and the reason, the attributes and the origin say so and where the whole message is."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from services.core.codecs import load_contracts
from services.core.config import KafkaSettings
from services.core.contracts import RejectedEvent
from services.core.rejections import (
    DEFAULT_MESSAGE_MAX_BYTES,
    RejectionTooLarge,
    producible_rejection,
    rejection_message_limit,
)

pytestmark = pytest.mark.unit

CODEC = load_contracts().rejected_event
LIMIT = DEFAULT_MESSAGE_MAX_BYTES


def rejection(*, value: bytes, key: bytes = b"hubspot:1", reason: str = "bad") -> RejectedEvent:
    return RejectedEvent(
        stage="writer",
        reason=reason,
        rejected_at=datetime(2026, 1, 2, tzinfo=UTC),
        source="hubspot",
        event_id="e-1",
        key=key,
        value=value,
        origin_topic="crmsync.profile-updates",
        origin_partition=2,
        origin_offset=41,
        attributes={"path": "/webhooks/hubspot"},
    )


def test_a_rejection_that_fits_goes_out_as_it_is() -> None:
    small = rejection(value=b"x" * 1000)
    out = producible_rejection(small, codec=CODEC, max_message_bytes=LIMIT)
    assert not out.truncated
    assert out.event == small
    assert out.key == small.key
    assert CODEC.decode(out.value) == small


@pytest.mark.parametrize("size", [LIMIT - 1000, LIMIT - 10, LIMIT, 5 * LIMIT])
def test_a_value_too_large_is_cut_to_a_prefix_that_fits(size: int) -> None:
    # Random bytes: what the limit counts is the uncompressed size anyway.
    value = os.urandom(size)
    out = producible_rejection(rejection(value=value), codec=CODEC, max_message_bytes=LIMIT)
    assert out.truncated
    assert len(out.key or b"") + len(out.value) <= LIMIT - 1024
    sent = CODEC.decode(out.value)
    assert sent.value is not None and value.startswith(sent.value)
    assert len(sent.value) > LIMIT - 4096, "much more was cut than needed"
    assert sent.reason.startswith("bad [value truncated to its first ")
    assert f"of {size} bytes" in sent.reason
    assert sent.attributes == {
        "path": "/webhooks/hubspot",
        "value_truncated": "true",
        "value_bytes": str(size),
    }
    assert (sent.origin_topic, sent.origin_partition, sent.origin_offset) == (
        "crmsync.profile-updates",
        2,
        41,
    )
    assert (sent.stage, sent.source, sent.event_id, sent.key) == (
        "writer",
        "hubspot",
        "e-1",
        b"hubspot:1",
    )


def test_a_huge_key_and_reason_are_cut_too() -> None:
    huge = rejection(value=b"v" * 10, key=b"k" * LIMIT, reason="r" * LIMIT)
    out = producible_rejection(huge, codec=CODEC, max_message_bytes=LIMIT)
    assert out.truncated
    assert len(out.key or b"") + len(out.value) <= LIMIT - 1024
    sent = CODEC.decode(out.value)
    assert sent.key == out.key == b"k" * 1024
    assert sent.reason.startswith("r" * 2000 + " [value truncated to its first 0 of 10 bytes")
    assert sent.origin_offset == 41


def test_a_limit_too_low_for_any_rejection_is_an_error() -> None:
    with pytest.raises(RejectionTooLarge):
        producible_rejection(
            rejection(value=b"v", reason="r" * 5000), codec=CODEC, max_message_bytes=2048
        )


@pytest.mark.parametrize(
    ("client", "topic", "limit"),
    [
        ({}, {}, DEFAULT_MESSAGE_MAX_BYTES),
        ({"message.max.bytes": 5_000_000}, {}, 5_000_000),
        ({"message.max.bytes": "200000"}, {}, 200_000),
        ({}, {"max.message.bytes": "300000"}, 300_000),
        ({"message.max.bytes": 200_000}, {"max.message.bytes": "300000"}, 200_000),
    ],
)
def test_the_limit_is_the_producers_or_the_rejected_topics_lower_one(
    client: dict[str, int | str], topic: dict[str, str], limit: int
) -> None:
    settings = KafkaSettings.model_validate(
        {
            "bootstrap_servers": "127.0.0.1:9092",
            "client": client,
            "topics": {"rejected": {"partitions": 3, "config": topic}},
        }
    )
    assert rejection_message_limit(settings) == limit
