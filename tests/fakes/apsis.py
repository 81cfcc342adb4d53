"""A fake of APSIS One's public API, as its developer documentation describes it, for
the ``apsis`` destination's tests.

- ``POST /oauth/token`` (JSON ``grant_type`` client_credentials, ``client_id``,
  ``client_secret``) answers ``{"access_token", "expires_in", "token_type": "Bearer"}``;
  other requests need ``Authorization: Bearer <token>``, else 403 ``{"message": "User is
  not authorized to access this resource with an explicit deny"}`` (as the help centre
  documents an invalid or expired token). ``expire_tokens`` makes issued tokens invalid.
- ``PATCH /audience/keyspaces/{keyspace}/profiles/{key}/sections/{section}/attributes``
  (version 1): ``application/merge-patch+json`` (else 415), at most 100 KB (else 413),
  keys the section's attribute version ids (else 400); creates the profile when absent;
  null removes an attribute. 204.
- ``POST /audience/channels/{channel}/addresses/{address}/consents`` (Consent 1.0, topic
  level): ``section_discriminator``, ``consent_list_discriminator``,
  ``topic_discriminator``, ``type`` opt-in|opt-out; 201, or 409 when the address already
  has that type for the topic (as Consent 2.0 documents).
- ``POST /audience/keyspaces/{keyspace}/profiles/{key}/sections/{section}/subscriptions``
  ``{consent_list_discriminator, topic_discriminator}``: 201, 409 when subscribed.
- ``DELETE /audience/keyspaces/{keyspace}/profiles/{key}``: 202, 404 when absent.
- Errors as ``application/problem+json`` (``type``, ``title``, ``status``, ``detail``);
  an unknown keyspace, section or topic is a 404; the shared ``Faults`` throttle (429
  with Retry-After) or fail.

Left open by the documentation, chosen here: the 204 of the attribute PATCH, and
accepting a subscription on a profile that does not exist yet (it is created).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web

from tests.fakes.server import FakeServer, Faults

CLIENT_ID: Final = "b49b39a0-82a1-11ec-8017-5d554e8551d6"
CLIENT_SECRET: Final = "apsis-test-secret"
KEYSPACES: Final = frozenset(
    {"com.apsis1.keyspaces.email", "com.apsis1.keyspaces.mobile", "com.apsis1.keyspaces.crm-id"}
)
MAX_PATCH_BYTES: Final = 100 * 1024
DENY: Final = "User is not authorized to access this resource with an explicit deny"


def problem(status: int, title: str, detail: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(
            {
                "type": f"https://httpstatuses.io/{status}",
                "title": title,
                "status": status,
                "detail": detail,
            }
        ),
        content_type="application/problem+json",
    )


@dataclass
class Account:
    sections: dict[str, set[str]]
    """Section discriminator -> its attributes' version ids."""
    topics: set[tuple[str, str, str]] = field(default_factory=set)
    """(section, consent list, topic) discriminators."""
    expires_in: int = 86400
    profiles: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    """(keyspace, key) -> section -> attribute version id -> value."""
    consents: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """(channel, address, topic) -> opt-in | opt-out."""
    subscriptions: set[tuple[str, str, str, str]] = field(default_factory=set)
    """(keyspace, key, section, topic)."""
    tokens_issued: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    _tokens: set[str] = field(default_factory=set)
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def expire_tokens(self) -> None:
        self._tokens.clear()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * MAX_PATCH_BYTES)
        app.router.add_post("/oauth/token", self._token)
        profile = "/audience/keyspaces/{keyspace}/profiles/{key}"
        app.router.add_patch(profile + "/sections/{section}/attributes", self._attributes)
        app.router.add_post(profile + "/sections/{section}/subscriptions", self._subscribe)
        app.router.add_delete(profile, self._delete)
        app.router.add_post(
            "/audience/channels/{channel}/addresses/{address}/consents", self._consent
        )
        return app

    async def _token(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return problem(400, "Bad Request", "the body is not JSON")
        if (
            body.get("grant_type") != "client_credentials"
            or body.get("client_id") != CLIENT_ID
            or body.get("client_secret") != CLIENT_SECRET
        ):
            return problem(401, "Unauthorized", "invalid client credentials")
        token = f"token-{next(self._serial)}"
        self._tokens.add(token)
        self.tokens_issued += 1
        return web.json_response(
            {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    def _denied(self, request: web.Request) -> web.Response | None:
        presented = request.headers.get("Authorization", "")
        if not presented.startswith("Bearer ") or presented[7:] not in self._tokens:
            return web.json_response({"message": DENY}, status=403)
        return None

    def _profile_path(self, request: web.Request) -> tuple[str, str] | web.Response:
        keyspace = request.match_info["keyspace"]
        if keyspace not in KEYSPACES:
            return problem(404, "Not Found", f"keyspace {keyspace} does not exist")
        return keyspace, request.match_info["key"]

    async def _attributes(self, request: web.Request) -> web.Response:
        self.calls["attributes"] += 1
        if (denied := self._denied(request)) is not None:
            return denied
        found = self._profile_path(request)
        if isinstance(found, web.Response):
            return found
        section = request.match_info["section"]
        if section not in self.sections:
            return problem(404, "Not Found", f"section {section} does not exist")
        if request.content_type != "application/merge-patch+json":
            return problem(415, "Unsupported Media Type", "use application/merge-patch+json")
        raw = await request.read()
        if len(raw) > MAX_PATCH_BYTES:
            return problem(413, "Payload Too Large", "the maximum payload is 100KB")
        try:
            patch = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return problem(400, "Bad Request", "the body is not JSON")
        if not isinstance(patch, dict) or not patch:
            return problem(400, "Bad Request", "a non-empty JSON object is required")
        unknown = sorted(set(patch) - self.sections[section])
        if unknown:
            return problem(400, "Bad Request", f"unknown attribute version id {unknown[0]}")
        attributes = self.profiles.setdefault(found, {}).setdefault(section, {})
        for version_id, value in patch.items():
            if value is None:
                attributes.pop(version_id, None)
            else:
                attributes[version_id] = value
        return web.Response(status=204)

    async def _consent(self, request: web.Request) -> web.Response:
        self.calls["consents"] += 1
        if (denied := self._denied(request)) is not None:
            return denied
        body = await request.json()
        topic = (
            body.get("section_discriminator"),
            body.get("consent_list_discriminator"),
            body.get("topic_discriminator"),
        )
        if body.get("type") not in {"opt-in", "opt-out"}:
            return problem(400, "Bad Request", "type must be opt-in or opt-out")
        if topic not in self.topics:
            return problem(404, "Not Found", "no such section, consent list or topic")
        key = (request.match_info["channel"], request.match_info["address"], topic[2])
        if self.consents.get(key) == body["type"]:
            return problem(409, "Conflict", f"the consent is already {body['type']}")
        self.consents[key] = body["type"]
        return web.Response(status=201)

    async def _subscribe(self, request: web.Request) -> web.Response:
        self.calls["subscriptions"] += 1
        if (denied := self._denied(request)) is not None:
            return denied
        found = self._profile_path(request)
        if isinstance(found, web.Response):
            return found
        body = await request.json()
        section = request.match_info["section"]
        topic = (section, body.get("consent_list_discriminator"), body.get("topic_discriminator"))
        if topic not in self.topics:
            return problem(404, "Not Found", "no such consent list or topic")
        subscription = (*found, section, topic[2])
        if subscription in self.subscriptions:
            return problem(409, "Conflict", "already subscribed")
        self.profiles.setdefault(found, {})
        self.subscriptions.add(subscription)
        return web.Response(status=201)

    async def _delete(self, request: web.Request) -> web.Response:
        self.calls["delete"] += 1
        if (denied := self._denied(request)) is not None:
            return denied
        found = self._profile_path(request)
        if isinstance(found, web.Response):
            return found
        if self.profiles.pop(found, None) is None:
            return problem(404, "Not Found", "profile not found")
        self.subscriptions = {s for s in self.subscriptions if s[:2] != found}
        return web.Response(status=202)


def server(account: Account, faults: Faults | None = None) -> FakeServer:
    return FakeServer(account.app(), faults)
