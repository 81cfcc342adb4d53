"""A receiver of Standard Webhooks, as a destination's endpoint would be.

It checks every message as Standard Webhooks 1.0 prescribes (the ``webhook-id``,
``webhook-timestamp`` within five minutes, and a ``v1,`` HMAC-SHA256 signature over
``id.timestamp.body`` with the ``whsec_`` secret's key), answering 401 to one that
fails, and keeps each accepted message once by its ``webhook-id``, as receivers are
told to. Tests read what arrived; ``refuse`` makes it answer 422, with a body saying
why, to a message holding a change it names; the shared ``Faults`` make it throttle
or fail.

``GET /received`` lists the changes received, in order (the demo of ``make run``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from services.core.standard_webhooks import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
    signing_key,
)
from tests.fakes.server import FakeServer, Faults, run_standalone, standalone_arguments

TOLERANCE_S: Final = 300
DEMO_SECRET: Final = "whsec_Y3Jtc3luYy1kZW1vLXdlYmhvb2stc2VjcmV0"


@dataclass
class Receiver:
    secret: str
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """webhook-id -> the message, first delivery only, in arrival order."""
    deliveries: int = 0
    """Messages accepted, repeats included."""
    refuse: Callable[[dict[str, Any]], str | None] = lambda _change: None
    """Why a change is refused (the message answered 422), or None."""

    def changes(self) -> list[dict[str, Any]]:
        return [c for m in self.messages.values() for c in m["data"]["changes"]]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        app.router.add_get("/received", self._received)
        app.router.add_get("/", self._hello)
        return app

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        problem = self._check(request, body)
        if problem is not None:
            return web.json_response({"error": problem}, status=401)
        message = json.loads(body)
        refused = [why for c in message["data"]["changes"] if (why := self.refuse(c))]
        if refused:
            return web.json_response({"error": "; ".join(refused)}, status=422)
        self.deliveries += 1
        self.messages.setdefault(request.headers[ID_HEADER], message)
        return web.json_response({"ok": True})

    def _check(self, request: web.Request, body: bytes) -> str | None:
        try:
            message_id = request.headers[ID_HEADER]
            stamp = request.headers[TIMESTAMP_HEADER]
            presented = request.headers[SIGNATURE_HEADER].split()
        except KeyError as exc:
            return f"missing header {exc}"
        if abs(time.time() - int(stamp)) > TOLERANCE_S:
            return "timestamp out of tolerance"
        expected = signature(
            signing_key(self.secret), message_id=message_id, timestamp=stamp, body=body
        ).decode()
        if f"v1,{expected}" not in presented:
            return "no valid signature"
        return None

    async def _hello(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _received(self, _request: web.Request) -> web.Response:
        return web.json_response({"changes": self.changes()})


def server(receiver: Receiver, faults: Faults | None = None) -> FakeServer:
    return FakeServer(receiver.app(), faults)


def main() -> None:
    args = standalone_arguments(
        "A Standard Webhooks receiver (a destination's endpoint)"
    ).parse_args()
    # The demo's destination signs with this variable's secret (the Makefile sets it).
    secret = os.environ.get("CRMSYNC_DEMO_WEBHOOK_SECRET", DEMO_SECRET)
    run_standalone(server(Receiver(secret)), args.port)


if __name__ == "__main__":
    main()
