"""A JSON API that receives contacts, as a generic REST destination's system would.

- ``POST /v1/contacts`` creates a contact (201 ``{"data": {"id": ...}}``);
- ``PUT /v1/contacts/{id}`` replaces one, or creates it under that id (200, 201: PUT's
  meaning in RFC 9110); ``PATCH`` merges into one (200, 404 when unknown);
- ``DELETE /v1/contacts/{id}`` (204, 404 when unknown);
- ``POST /v1/contacts/batch`` ``{"contacts": [...]}``, at most ``MAX_BATCH`` (else 400),
  each item created or, with an ``id``, merged; answers ``{"results": [{"id"}...]}``.

A bearer token and an ``X-Api-Key`` are required (401 otherwise). An ``Idempotency-Key``
seen before is answered with its first answer without writing again. ``refuse`` names
contacts to refuse (422 ``{"error": ...}``). Every request is recorded (method, path,
body) for tests to assert what was sent; the shared ``Faults`` throttle or fail.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from tests.fakes.server import FakeServer, Faults

TOKEN: Final = "rest-dest-token"
API_KEY: Final = "rest-dest-key"
MAX_BATCH: Final = 3


@dataclass
class Receiver:
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    """(method, path, JSON body or None) of every authenticated request."""
    refuse: Callable[[dict[str, Any]], str | None] = lambda _contact: None
    replayed: int = 0
    _answers: dict[str, tuple[int, Any]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/contacts/batch", self._batch)
        app.router.add_post("/v1/contacts", self._create)
        app.router.add_put("/v1/contacts/{id}", self._replace)
        app.router.add_patch("/v1/contacts/{id}", self._merge)
        app.router.add_delete("/v1/contacts/{id}", self._delete)
        return app

    @web.middleware
    async def guard(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if (
            request.headers.get("Authorization") != f"Bearer {TOKEN}"
            or request.headers.get("X-Api-Key") != API_KEY
        ):
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, body))
        key = request.headers.get("Idempotency-Key")
        if key is not None and key in self._answers:
            self.replayed += 1
            status, payload = self._answers[key]
            return web.json_response(payload, status=status)
        response: web.Response = await handler(request)
        if key is not None and response.status < 500:
            self._answers[key] = (response.status, _payload(response))
        return response

    def _refused(self, contact: dict[str, Any]) -> web.Response | None:
        why = self.refuse(contact)
        return web.json_response({"error": why}, status=422) if why else None

    async def _create(self, request: web.Request) -> web.Response:
        contact = await request.json()
        if (refused := self._refused(contact)) is not None:
            return refused
        contact_id = str(next(self._ids))
        self.contacts[contact_id] = contact
        return web.json_response({"data": {"id": contact_id}}, status=201)

    async def _replace(self, request: web.Request) -> web.Response:
        return await self._write(request, merge=False)

    async def _merge(self, request: web.Request) -> web.Response:
        return await self._write(request, merge=True)

    async def _write(self, request: web.Request, *, merge: bool) -> web.Response:
        contact_id = request.match_info["id"]
        known = contact_id in self.contacts
        if merge and not known:
            return web.json_response({"error": "not found"}, status=404)
        contact = await request.json()
        if (refused := self._refused(contact)) is not None:
            return refused
        self.contacts[contact_id] = {**self.contacts[contact_id], **contact} if merge else contact
        return web.json_response({"data": {"id": contact_id}}, status=200 if known else 201)

    async def _delete(self, request: web.Request) -> web.Response:
        if self.contacts.pop(request.match_info["id"], None) is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(status=204)

    async def _batch(self, request: web.Request) -> web.Response:
        items = (await request.json()).get("contacts")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            return web.json_response({"error": f"contacts: 1 to {MAX_BATCH} items"}, status=400)
        for item in items:
            if (refused := self._refused(item)) is not None:
                return refused
        results = []
        for item in items:
            contact_id = str(item.get("id") or next(self._ids))
            self.contacts[contact_id] = {**self.contacts.get(contact_id, {}), **item}
            results.append({"id": contact_id})
        return web.json_response({"results": results})


def _payload(response: web.Response) -> Any:
    return json.loads(response.body) if isinstance(response.body, bytes) else None


def server(receiver: Receiver, faults: Faults | None = None) -> FakeServer:
    app = receiver.app()
    fake = FakeServer(app, faults)
    # Inside the injected faults: an injected answer is never kept as a key's answer.
    app.middlewares.append(receiver.guard)
    return fake
