"""Slack's incoming webhooks, as Slack's public documentation describes them.

A webhook is a secret URL, ``/services/T.../B.../<token>``. A POST of JSON with a
``text`` (or ``blocks``) is posted to the channel and answered ``200 ok`` in plain
text; a body that is not JSON is ``400 invalid_payload``, one without text
``400 no_text``, and a URL whose token Slack does not know ``404 no_service``. Errors
are codes in a plain-text body. Tests script answers (a 500, a 429 with Retry-After,
a 410 channel_is_archived) and can hold every answer back to play a hung Slack.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

HOOK_PREFIX = "/services/T0000NOTIFY/B0000NOTIFY/"


@dataclass
class SlackWebhook:
    token: str = "xoxTestHookToken1234567890"
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Payloads posted to the channel, in order."""
    requests: int = 0
    scripted: deque[tuple[int, str, dict[str, str]]] = field(default_factory=deque)
    held: asyncio.Event | None = None
    """While set to an unset event, every request waits for it: a hung Slack."""

    @property
    def path(self) -> str:
        return HOOK_PREFIX + self.token

    def script(self, status: int, body: str, **headers: str) -> None:
        self.scripted.append((status, body, headers))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(HOOK_PREFIX + "{token}", self._receive)
        return app

    async def _receive(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.held is not None:
            await self.held.wait()
        if request.match_info["token"] != self.token:
            return web.Response(status=404, text="no_service")
        if self.scripted:
            status, body, headers = self.scripted.popleft()
            return web.Response(status=status, text=body, headers=headers)
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        if not isinstance(payload, dict) or not (payload.get("text") or payload.get("blocks")):
            return web.Response(status=400, text="no_text")
        self.messages.append(payload)
        return web.Response(text="ok")
