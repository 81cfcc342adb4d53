"""What a connector is: the part of ingest that knows one CRM.

A connector does no I/O of its own. For **push**, the webhook handler reads the HTTP
request and hands it over as an ``InboundRequest``; the connector proves who sent it
and turns it into ContactChanges. For **pull** (polls and full syncs), the connector
is given an ``ApiClient`` (retries, rate limits) and pages through the CRM's API.

Errors are values the caller maps to answers: ``AuthError`` -> 401, ``PayloadError``
-> 400 naming the field and the problem.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from services.core.contracts import ContactChange, Origin, RejectedEvent

if TYPE_CHECKING:
    from services.core.api_client import ApiClient, Credentials, ThrottleCheck, WaitHint
    from services.core.sources.common import ApiSettings, PollSettings


class AuthError(Exception):
    """The request cannot be shown to come from the configured sender."""


class PayloadError(Exception):
    """The body is not a valid payload; ``where`` names the field, ``problem`` says why."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}" if where else problem)


@dataclass(frozen=True)
class InboundRequest:
    """A webhook request as the CRM sent it."""

    method: str
    url: str
    """The URL the CRM addressed (scheme, host, path and query), which some CRMs sign."""
    headers: Mapping[str, str]
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WebhookAnswer:
    """What the CRM expects back when every change was accepted."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"


def json_answer(accepted: int) -> WebhookAnswer:
    return WebhookAnswer(body=json.dumps({"accepted": accepted}).encode())


class WebhookConnector(Protocol):
    source: str

    def authenticate(self, request: InboundRequest, *, now: datetime) -> None:
        """Raise AuthError unless the request is proven to come from the source."""

    def parse(self, request: InboundRequest, *, received_at: datetime) -> Sequence[ContactChange]:
        """The changes in the request, in the order the source sent them."""

    def answer(self, request: InboundRequest, accepted: int) -> WebhookAnswer:
        """The success response the CRM expects for this request (most: 200, any body)."""


@dataclass(frozen=True)
class Stamp:
    """How pulled changes are marked: which path delivered them, for which full sync."""

    origin: Origin
    sync_id: str | None = None


@dataclass(frozen=True)
class Checkpoint:
    """Where a pull can resume: the CRM's modification-time high-water mark of what
    was delivered, and the connector's own opaque position inside the current query."""

    watermark: datetime | None = None
    cursor: str | None = None


@dataclass(frozen=True)
class PullPage:
    changes: Sequence[ContactChange]
    checkpoint: Checkpoint
    total: int | None = None
    """Records in the whole result, when the API says."""
    rejected: Sequence[RejectedEvent] = ()
    """Records of this page that could not become changes, with the reason."""


class PullConnector(Protocol):
    source: str

    def pages(
        self,
        api: ApiClient,
        *,
        since: datetime | None,
        resume: Checkpoint | None,
        stamp: Stamp,
    ) -> AsyncIterator[PullPage]:
        """Every record modified at or after ``since`` (all records when None), oldest
        first where the API can sort, one page at a time. ``resume`` continues a pull
        that stopped after the page whose checkpoint it is."""


@dataclass(frozen=True)
class SourceConnectors:
    """What one configured source offers: push, pull, or both, and how to call its API."""

    webhook: WebhookConnector | None = None
    pull: PullConnector | None = None
    api: ApiSettings | None = None
    poll: PollSettings | None = None
    credentials: Credentials | None = None
    """How API requests authenticate; by default a bearer token from ``api.token``."""
    is_throttled: ThrottleCheck | None = None
    """The CRM's own throttling signal besides 429 (e.g. Salesforce REQUEST_LIMIT_EXCEEDED)."""
    wait_hint: WaitHint | None = None
    """The CRM's own "retry in N seconds" header when it sends no Retry-After."""
