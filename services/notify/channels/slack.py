"""Slack through an incoming webhook: one POST of ``{"text": ...}`` per notice.

Slack answers 200 ``ok``; 400 ``invalid_payload``, 403 ``action_prohibited``, 404
``no_service`` (the webhook was removed) and 410 ``channel_is_archived`` are final;
429 (with Retry-After) and 5xx pass (services/notify/channels/http_post.py). The
webhook URL is the credential: it is resolved from its secret reference when the
channel is built and never shown.
"""

from __future__ import annotations

import orjson

from services.core.http import async_client
from services.notify import messages
from services.notify.channels.http_post import post
from services.notify.incidents import Notice
from services.notify.settings import SlackChannel

# Slack's mrkdwn gives these three characters meaning; the text says them literally.
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def slack_body(notice: Notice) -> bytes:
    return orjson.dumps({"text": messages.text(notice).translate(_ESCAPES)})


class Slack:
    def __init__(self, name: str, settings: SlackChannel) -> None:
        self.name = name
        self._url = settings.url.resolve()
        self._timeout_s = settings.timeout_seconds
        self._client = async_client(timeout_s=settings.timeout_seconds)

    async def send(self, notice: Notice) -> None:
        await post(
            self._client,
            self._url,
            body=slack_body(notice),
            headers={"Content-Type": "application/json"},
            timeout_s=self._timeout_s,
        )

    async def close(self) -> None:
        await self._client.aclose()
