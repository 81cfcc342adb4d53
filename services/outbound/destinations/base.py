"""What every destination does: take a chunk of outgoing changes, say which it refused.

A destination sends changes in chunks of at most ``batch_size`` (its vendor's limit).
``send`` returns the changes the destination refused, with its answer: a refusal a
retry would not change (a 4xx), which the delivery loop dead-letters. A destination
that does not take the chunk at all (down, throttled past its retries, no answer)
raises ``ApiUnavailable``: the loop waits and sends the same chunk again, skipping
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.outbound.outgoing import OutgoingChange


@dataclass(frozen=True)
class Refusal:
    change: OutgoingChange
    status: int
    answer: str
    """What the destination said (an excerpt of its response body)."""


class Destination(Protocol):
    name: str
    batch_size: int

    async def open(self) -> None:
        """Connect (inside the event loop that will send)."""

    async def send(self, chunk: Sequence[OutgoingChange]) -> list[Refusal]:
        """Deliver ``chunk``; the refused changes. Raises ApiUnavailable when the
        destination did not take it."""

    async def close(self) -> None: ...
