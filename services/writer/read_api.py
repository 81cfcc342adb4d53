"""The writer's read API: one profile, with provenance and consent, over HTTP.

``GET /profiles?email=ada@example.com`` or ``GET /profiles?id=hubspot:1001`` answers
the profile as ``crmsync profile get`` prints it (200), 404 when no live profile has
that identity, 400 for a malformed one. Read-only, and only with the bearer token
``services.writer.read_token`` (compared in constant time); without a configured
token the API answers 403. Each request reads through a read-only store connection
of its own, on a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from services.core.bearer import bearer_matches
from services.core.contracts import Identity
from services.writer.lookup import BadLookup, identity_of
from services.writer.stores.base import ProfileStore, StoredProfile
from services.writer.stores.cdp_wire import profile_json


class ReadApi:
    def __init__(self, *, token: str | None, open_reader: Callable[[], ProfileStore]) -> None:
        self._token = token
        self._open_reader = open_reader

    def install(self, app: web.Application) -> None:
        app.router.add_get("/profiles", self.get_profile)

    async def get_profile(self, request: web.Request) -> web.Response:
        if self._token is None:
            return _error(403, "read API disabled: set services.writer.read_token")
        if not bearer_matches(request.headers.get("Authorization", ""), self._token):
            return _error(401, "invalid or missing bearer token")
        try:
            identity = identity_of(email=request.query.get("email"), crm_id=request.query.get("id"))
        except BadLookup as exc:
            return _error(400, str(exc))
        profile = await asyncio.to_thread(self._find, identity)
        if profile is None:
            return _error(404, f"no profile with that {identity.kind} identity")
        return web.json_response(profile_json(profile))

    def _find(self, identity: Identity) -> StoredProfile | None:
        store = self._open_reader()
        try:
            return store.find_profile(identity)
        finally:
            store.close()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
