"""What the notifier's tests send to, all served on loopback inside the test: a
receiver of signed webhooks and an SMTP mailbox (aiosmtpd); plus a clock the test
moves and a wait for a condition.

The webhook receiver checks Standard Webhooks signatures by the spec's own recipe
(HMAC-SHA256 over ``id.timestamp.body``, keyed by the base64 of the ``whsec_``
secret), not with the code under test, so a wrong signature cannot pass by agreeing
with itself.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


class FakeClock:
    """A monotonic clock that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def until(condition: Callable[[], bool], *, timeout_s: float = 5.0) -> None:
    """Wait for ``condition``, failing the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@dataclass
class SignedReceiver:
    """A generic webhook endpoint; with a secret it answers 401 to a bad signature."""

    secret: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    bad_signatures: int = 0
    held: asyncio.Event | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        return app

    async def _receive(self, request: web.Request) -> web.Response:
        if self.held is not None:
            await self.held.wait()
        body = await request.read()
        if self.secret is not None and not self._signed(request, body):
            self.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        self.headers.append(dict(request.headers))
        self.messages.append(json.loads(body))
        return web.json_response({"ok": True})

    def _signed(self, request: web.Request, body: bytes) -> bool:
        assert self.secret is not None
        message_id = request.headers.get("webhook-id", "")
        stamp = request.headers.get("webhook-timestamp", "0")
        if abs(time.time() - int(stamp)) > 300:
            return False
        key = base64.b64decode(self.secret.removeprefix("whsec_"))
        digest = hmac.new(key, f"{message_id}.{stamp}.".encode() + body, hashlib.sha256)
        expected = "v1," + base64.b64encode(digest.digest()).decode()
        presented = request.headers.get("webhook-signature", "").split()
        return any(hmac.compare_digest(expected, p) for p in presented)


@dataclass
class Mailbox:
    """An SMTP server's message store; ``replies`` answer the next DATA commands
    instead of accepting (e.g. ``451 4.3.0 try again later``)."""

    login: tuple[str, str] | None = None
    mails: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    replies: deque[str] = field(default_factory=deque)
    logins: int = 0
    """AUTH exchanges (a client may try one mechanism after another in a session)."""
    greetings: int = 0
    """EHLOs: one per connection, two with STARTTLS."""
    attempts: int = 0
    """DATA commands."""

    async def handle_EHLO(
        self, _server: SMTP, session: Session, _envelope: Envelope, name: str, responses: list[str]
    ) -> list[str]:
        self.greetings += 1
        session.host_name = name  # what aiosmtpd does itself when there is no hook
        return responses

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        self.attempts += 1
        if self.replies:
            return self.replies.popleft()
        assert isinstance(envelope.content, bytes)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.mails.append(parsed)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 2.0.0 OK"

    def authenticate(
        self, _server: SMTP, _session: Session, _envelope: Envelope, _mechanism: str, data: Any
    ) -> AuthResult:
        self.logins += 1
        # handled=False: aiosmtpd answers 235 or 535 itself.
        if self.login is None or not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        expected = (self.login[0].encode(), self.login[1].encode())
        return AuthResult(success=(data.login, data.password) == expected, handled=False)
