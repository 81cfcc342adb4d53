"""A generic webhook: one POST of a notice as JSON, Standard Webhooks signed when the
channel has a secret.

The body is ``{"type": "crmsync.notification", "id", "timestamp", "instance", "text",
"incidents": [...]}`` (services/notify/messages.py). ``webhook-id`` is the notice's
id, the same on every attempt, so a receiver can drop a repeat; ``webhook-timestamp``
is the attempt's time. Answers are judged as for Slack.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import orjson

from services.core.http import async_client
from services.core.standard_webhooks import signed_headers, signing_key
from services.notify import messages
from services.notify.channels.http_post import post
from services.notify.incidents import Notice
from services.notify.settings import WebhookChannel


class Webhook:
    def __init__(self, name: str, settings: WebhookChannel) -> None:
        self.name = name
        self._url = settings.url
        self._key = signing_key(settings.secret.resolve()) if settings.secret else None
        self._timeout_s = settings.timeout_seconds
        self._client = async_client(timeout_s=settings.timeout_seconds)

    async def send(self, notice: Notice) -> None:
        body = orjson.dumps(messages.webhook_json(notice, now=datetime.now(UTC)))
        headers = {"Content-Type": "application/json"}
        if self._key is not None:
            headers |= signed_headers(
                self._key, message_id=notice.id, timestamp=int(time.time()), body=body
            )
        await post(self._client, self._url, body=body, headers=headers, timeout_s=self._timeout_s)

    async def close(self) -> None:
        await self._client.aclose()
