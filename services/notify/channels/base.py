"""What a channel is to the notifier: something that sends one notice per call.

``send`` takes the message or raises one of two failures, and that is the whole
contract with the delivery loop (services/notify/delivery.py):

- ``RetryLater`` (services/core/retry.py): a retry may succeed (no answer, a 429 or
  5xx, an SMTP 4xx), with the wait the other side asked for when it said;
- ``ChannelRefused``: the channel answered that it never will (a wrong URL, a revoked
  webhook, a refused login); retrying would only repeat the answer.
"""

from __future__ import annotations

from typing import Protocol

from services.notify.incidents import Notice


class ChannelRefused(Exception):
    """The channel will not take the message; ``reason`` is a short, secret-free text."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Channel(Protocol):
    name: str

    async def send(self, notice: Notice) -> None:
        """Deliver the notice once, or raise RetryLater or ChannelRefused."""

    async def close(self) -> None:
        """Release connections; the channel is not used again."""
