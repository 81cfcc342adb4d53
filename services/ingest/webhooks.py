"""``POST /webhooks/{source}``: from an HTTP request to acknowledged ContactChanges.

Steps, and the answer each failure gets:

1. Find the source's connector: unknown source -> 404.
2. Read the body up to the configured cap: larger -> 413.
3. Authenticate with the connector, against the URL the CRM called (behind a proxy:
   public_base_url, or what a trusted proxy forwarded): unproven sender -> 401.
4. Parse into ContactChanges: invalid -> 400 naming the field and problem; the raw
   body also goes to the rejected topic, since an authenticated sender sent it.
5. Publish every change durably: Kafka unavailable -> 503 with Retry-After.
6. Answer as the CRM expects (the connector decides; most take 200 and any body).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from aiohttp import web

from services.core import metrics
from services.core.codecs import Codec
from services.core.contracts import ContactChange, RejectedEvent
from services.ingest.connectors.base import (
    AuthError,
    InboundRequest,
    PayloadError,
    WebhookConnector,
)
from services.ingest.forwarded import Network, Origin, public_origin
from services.ingest.publisher import BrokerUnavailable, OutgoingMessage

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class BodyTooLarge(Exception):
    pass


class Publisher(Protocol):
    """Where accepted changes go (KafkaPublisher): returns once every message is durable,
    raises BrokerUnavailable otherwise."""

    async def publish(self, messages: Sequence[OutgoingMessage]) -> dict[int, int]: ...


class WebhookHandler:
    def __init__(
        self,
        *,
        connectors: Mapping[str, WebhookConnector],
        publisher: Publisher,
        changes: Codec[ContactChange],
        rejected: Codec[RejectedEvent],
        changes_topic: str,
        rejected_topic: str,
        body_caps: Mapping[str, int],
        retry_after_seconds: int,
        accepting: Callable[[], bool],
        public_base_url: str | None = None,
        trusted_proxies: Sequence[Network] = (),
        clock: Clock = utc_now,
    ) -> None:
        self._connectors = connectors
        self._publisher = publisher
        self._changes = changes
        self._rejected = rejected
        self._changes_topic = changes_topic
        self._rejected_topic = rejected_topic
        self._body_caps = body_caps
        self._retry_after = str(retry_after_seconds)
        self._accepting = accepting
        self._public_base_url = public_base_url
        self._trusted_proxies = tuple(trusted_proxies)
        self._clock = clock

    def install(self, app: web.Application) -> None:
        app.router.add_post("/webhooks/{source}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        source = request.match_info["source"]
        started = time.perf_counter()
        response = await self._handle(request, source)
        if source in self._connectors:
            metrics.WEBHOOK_SECONDS.labels(source).observe(time.perf_counter() - started)
            metrics.WEBHOOK_REQUESTS.labels(source, str(response.status)).inc()
        return response

    async def _handle(self, request: web.Request, source: str) -> web.Response:
        # Step 1
        connector = self._connectors.get(source)
        if connector is None:
            if source in self._body_caps:
                return _error(404, f"source {source!r} does not receive webhooks")
            return _error(404, f"unknown source {source!r}")
        if not self._accepting():
            return _error(503, "starting up", retry_after=self._retry_after)
        # Step 2
        cap = self._body_caps[source]
        try:
            body = await self._read_body(request, cap)
        except BodyTooLarge:
            return _error(413, f"body larger than {cap} bytes")
        # Step 3
        received_at = self._clock()
        inbound = InboundRequest(
            method=request.method,
            url=self._public_url(request),
            headers=request.headers,
            body=body,
            query=request.query,
        )
        try:
            connector.authenticate(inbound, now=received_at)
        except AuthError as exc:
            log.info("webhook refused source=%s reason=%s", source, exc)
            metrics.EVENTS_REJECTED.labels("ingest", source, "auth").inc()
            return _error(401, str(exc))
        # Step 4
        try:
            changes = connector.parse(inbound, received_at=received_at)
        except PayloadError as exc:
            return await self._reject_payload(request, source=source, body=body, error=exc)
        # Step 5
        messages = [
            OutgoingMessage(self._changes_topic, change.key, self._changes.encode(change))
            for change in changes
        ]
        try:
            await self._publisher.publish(messages)
        except BrokerUnavailable as exc:
            log.warning("webhook deferred source=%s events=%s reason=%s", source, len(changes), exc)
            return _error(
                503, "temporarily unable to accept changes", retry_after=self._retry_after
            )
        # Step 6
        metrics.EVENTS_RECEIVED.labels(source, "WEBHOOK").inc(len(changes))
        answer = connector.answer(inbound, len(changes))
        return web.Response(
            body=answer.body, status=answer.status, content_type=answer.content_type
        )

    def _public_url(self, request: web.Request) -> str:
        """The URL as the CRM addressed it: behind a proxy, the configured public base,
        else the scheme and host a trusted proxy forwarded (services.ingest.forwarded)."""
        if self._public_base_url is not None:
            return self._public_base_url.rstrip("/") + request.path_qs
        if not self._trusted_proxies:
            return str(request.url)
        own = Origin(scheme=request.scheme, host=request.host)
        # request.remote is the TCP peer: nothing in this app clones it from a header.
        origin = public_origin(
            own, peer=request.remote, headers=request.headers, trusted_proxies=self._trusted_proxies
        )
        if origin == own:
            return str(request.url)
        return str(request.clone(scheme=origin.scheme, host=origin.host).url)

    async def _read_body(self, request: web.Request, cap: int) -> bytes:
        if request.content_length is not None and request.content_length > cap:
            raise BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > cap:
                raise BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def _reject_payload(
        self, request: web.Request, *, source: str, body: bytes, error: PayloadError
    ) -> web.Response:
        metrics.EVENTS_REJECTED.labels("ingest", source, "payload").inc()
        rejected = RejectedEvent(
            stage="ingest",
            reason=str(error),
            rejected_at=self._clock(),
            source=source,
            key=source.encode(),
            value=body,
            attributes={"path": request.path, "content_type": request.content_type},
        )
        message = OutgoingMessage(
            self._rejected_topic, source.encode(), self._rejected.encode(rejected)
        )
        try:
            await self._publisher.publish([message])
        except BrokerUnavailable:
            # The sender still gets the precise 400 and keeps its copy of the body.
            log.warning("rejected body not kept: Kafka unavailable source=%s", source)
        return _error(400, str(error), field=error.where)


def _error(
    status: int, message: str, *, field: str | None = None, retry_after: str | None = None
) -> web.Response:
    body: dict[str, str] = {"error": message}
    if field:
        body["field"] = field
    headers = {"Retry-After": retry_after} if retry_after else None
    return web.json_response(body, status=status, headers=headers)
