"""What a stream loop does with a consumed message that is an error, not data."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError, KafkaException, Message

from services.core.kafka import is_error

pytestmark = pytest.mark.unit


def test_data_is_no_error() -> None:
    assert not is_error(Message(topic="t", partition=0, offset=3, value=b"v"))


def test_a_partition_end_is_passed_over_quietly(caplog: pytest.LogCaptureFixture) -> None:
    end = Message(topic="t", partition=0, error=KafkaError(KafkaError._PARTITION_EOF))
    with caplog.at_level(logging.WARNING):
        assert is_error(end)
    assert caplog.records == []


def test_a_passing_error_is_logged_and_passed_over(caplog: pytest.LogCaptureFixture) -> None:
    passing = Message(topic="t", error=KafkaError(KafkaError._TRANSPORT, "broker went away"))
    with caplog.at_level(logging.WARNING):
        assert is_error(passing)
    assert "broker went away" in caplog.text


def test_a_fatal_error_ends_the_loop() -> None:
    # As when a static member was fenced after its session timed out with the
    # coordinator down: the consumer can consume nothing more.
    fenced = KafkaError(KafkaError._FATAL, "Static consumer fenced", fatal=True)
    with pytest.raises(KafkaException, match="Static consumer fenced"):
        is_error(Message(topic="t", error=fenced))


def test_a_fatal_error_as_the_consumer_hands_it_over_ends_the_loop() -> None:
    # The consumer's message carries the _FATAL code without the fatal() flag.
    handed_over = KafkaError(KafkaError._FATAL, "Fatal error: Static consumer fenced")
    assert not handed_over.fatal()
    with pytest.raises(KafkaException, match="Static consumer fenced"):
        is_error(Message(topic="t", error=handed_over))
