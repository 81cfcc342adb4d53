"""What a connector is: the part of ingest that knows one CRM's webhook format.

A connector proves who sent a request and turns its body into ContactChanges. It
does no I/O: the webhook handler reads the request and publishes the result. Errors
are values the handler maps to HTTP answers: ``AuthError`` -> 401, ``PayloadError``
-> 400 naming the field and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from services.core.contracts import ContactChange


class AuthError(Exception):
    """The request cannot be shown to come from the configured sender."""


class PayloadError(Exception):
    """The body is not a valid payload; ``where`` names the field, ``problem`` says why."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}" if where else problem)


class WebhookConnector(Protocol):
    source: str

    def authenticate(self, *, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        """Raise AuthError unless the request is proven to come from the source."""

    def parse(
        self, *, headers: Mapping[str, str], body: bytes, received_at: datetime
    ) -> Sequence[ContactChange]:
        """The changes in the body, in the order the source sent them."""
