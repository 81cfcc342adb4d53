"""Version order of changes: a newer change wins, an older or equal one never does.

A change's version is (source modification time, sequence). Comparing versions is
what keeps redeliveries, retries and out-of-order paths (webhook vs poll vs full sync)
from regressing a value (guarantees 2 and 3).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

Version = tuple[int, int]


def to_micros(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def version_of(source_modified_at: datetime, sequence: int) -> Version:
    return (to_micros(source_modified_at), sequence)
