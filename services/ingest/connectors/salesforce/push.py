"""The Salesforce webhook: one URL for outbound messages (XML) and relayed change
events (JSON); the Content-Type says which, and the answer follows the kind."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from services.core.contracts import ContactChange
from services.ingest.connectors.base import (
    AuthError,
    InboundRequest,
    PayloadError,
    WebhookAnswer,
    json_answer,
)
from services.ingest.connectors.salesforce.events import ChangeEvents
from services.ingest.connectors.salesforce.outbound import ACK, OutboundMessages
from services.ingest.connectors.salesforce.times import header_value

PushKind = Literal["outbound_message", "change_events"]


def push_kind(request: InboundRequest) -> PushKind:
    """SOAP (text/xml) is an outbound message, JSON a relay's change events; without a
    telling Content-Type, the body's first character decides."""
    content_type = (header_value(request.headers, "Content-Type") or "").lower()
    if "xml" in content_type:
        return "outbound_message"
    if "json" in content_type:
        return "change_events"
    return "outbound_message" if request.body.lstrip()[:1] == b"<" else "change_events"


class SalesforceWebhookConnector:
    def __init__(
        self,
        *,
        source: str,
        accepted: frozenset[str],
        outbound: OutboundMessages | None,
        events: ChangeEvents | None,
    ) -> None:
        self.source = source
        self._accepted = accepted
        self._outbound = outbound
        self._events = events

    def authenticate(self, request: InboundRequest, *, now: datetime) -> None:
        kind = push_kind(request)
        if kind == "outbound_message":
            if self._outbound is None:
                raise AuthError("this source does not take outbound messages")
            self._outbound.authenticate(request)
        else:
            if self._events is None:
                raise AuthError("this source does not take change events")
            self._events.authenticate(request, now=now)

    def parse(self, request: InboundRequest, *, received_at: datetime) -> Sequence[ContactChange]:
        kind = push_kind(request)
        if kind == "outbound_message" and self._outbound is not None:
            return self._outbound.changes(request, accepted=self._accepted, received_at=received_at)
        if kind == "change_events" and self._events is not None:
            return self._events.changes(request, accepted=self._accepted, received_at=received_at)
        raise PayloadError("body", f"this source does not take {kind.replace('_', ' ')}s")

    def answer(self, request: InboundRequest, accepted: int) -> WebhookAnswer:
        if push_kind(request) == "change_events":
            return json_answer(accepted)
        # Salesforce retries any message not acknowledged with exactly this.
        return WebhookAnswer(body=ACK, content_type="text/xml")
