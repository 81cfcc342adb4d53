"""A fake of Klaviyo's REST API (profiles, email marketing consent, profile deletion), as
its reference and OpenAPI documents (revision 2026-07-15) describe it, for the
``klaviyo`` destination's tests.

- Every request: ``Authorization: Klaviyo-API-Key <private key>`` (else 401
  ``not_authenticated``), a ``revision`` header (else 400), a JSON body.
- ``POST /api/profile-import``: ``{"data": {"type": "profile", "id"?, "attributes":
  {...}, "meta"?: {"patch_properties": {"unset": ...}}}}``. With an ``id``, that
  profile (404 if none); else the profile with the email (then external_id, then
  phone number); else a new one. 201 created, 200 updated, with ``{"data":
  {"type": "profile", "id", "attributes", "links"}}``. A null field is cleared, an
  absent one kept; ``properties`` merge key by key; an email held by another profile
  than the ``id`` named is a 409 ``duplicate_profile``; no identifier, or an email
  that is not one, is a 400 ``invalid`` pointing at the attribute.
- ``POST /api/profile-subscription-bulk-create-jobs`` (at most 1000 profiles) and
  ``POST /api/profile-subscription-bulk-delete-jobs`` (at most 100): email marketing
  consent ``SUBSCRIBED`` / ``UNSUBSCRIBED`` for the profiles named by email, joining
  or leaving the list of ``relationships.list`` (404 for an unknown list). The whole
  job is checked before any of it applies; a bad profile is a 400 whose
  ``source.pointer`` names it (``/data/attributes/profiles/data/2/attributes/email``).
  202, no body. (The jobs are asynchronous in Klaviyo; this fake applies them at once.)
- ``POST /api/data-privacy-deletion-jobs``: exactly one of ``id`` or the attributes
  ``email``, ``phone_number`` (else 400); every matching profile is deleted; 202.
- Errors: ``{"errors": [{"id", "status", "code", "title", "detail", "source":
  {"pointer"}, "links", "meta"}]}``. Throttled (the shared ``Faults``): 429
  ``throttled`` with ``Retry-After``.

The reference leaves open the error code of a missing revision header (this fake:
400 ``invalid``) and what a deletion job for no profile answers (this fake: 202, as
the deletion is asynchronous).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiohttp import web

from tests.fakes.server import FakeServer, Faults, run_standalone, standalone_arguments

PRIVATE_KEY: Final = "pk_0123456789abcdef0123456789abcdef01"
JSON_API: Final = "application/vnd.api+json"
MAX_SUBSCRIBE: Final = 1000
MAX_UNSUBSCRIBE: Final = 100
EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
STANDARD: Final = (
    "email",
    "phone_number",
    "external_id",
    "first_name",
    "last_name",
    "organization",
    "locale",
    "title",
    "image",
)
IDENTIFIERS: Final = ("email", "external_id", "phone_number")


class Failed(Exception):
    def __init__(
        self, status: int, code: str, title: str, detail: str, pointer: str = "/data/"
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.title, self.detail, self.pointer = (
            status,
            code,
            title,
            detail,
            pointer,
        )


def _invalid(detail: str, pointer: str) -> Failed:
    return Failed(400, "invalid", "Invalid input.", detail, pointer)


@dataclass
class Account:
    lists: set[str] = field(default_factory=lambda: {"Y6nRLr"})
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Profile id -> its attributes, ``properties``, ``location`` and ``consent``."""
    members: dict[str, set[str]] = field(default_factory=dict)
    """List id -> the ids of the profiles on it."""
    imports: int = 0
    jobs: list[tuple[str, int]] = field(default_factory=list)
    """Each subscription job taken: its type and number of profiles."""
    deleted: list[str] = field(default_factory=list)

    def by(self, name: str, value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        return next((p for p in self.profiles.values() if p.get(name) == value), None)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/profile-import", self._import)
        app.router.add_post("/api/profile-subscription-bulk-create-jobs", self._subscribe)
        app.router.add_post("/api/profile-subscription-bulk-delete-jobs", self._unsubscribe)
        app.router.add_post("/api/data-privacy-deletion-jobs", self._delete)
        return app

    async def _import(self, request: web.Request) -> web.Response:
        try:
            data = await _data(request, "profile")
            attributes = data.get("attributes")
            if not isinstance(attributes, dict):
                raise _invalid("attributes: required", "/data/attributes")
            email = attributes.get("email")
            if email is not None and not (isinstance(email, str) and EMAIL.match(email)):
                raise _invalid("Invalid email address", "/data/attributes/email")
            profile_id = data.get("id")
            if profile_id is not None:
                profile = self.profiles.get(profile_id)
                if profile is None:
                    raise Failed(
                        404, "not_found", "Not found.", "A profile with this id does not exist"
                    )
                holder = self.by("email", email)
                if holder is not None and holder is not profile:
                    raise Failed(
                        409,
                        "duplicate_profile",
                        "Conflict.",
                        "A profile already exists with one of these identifiers.",
                        "/data/attributes",
                    )
            else:
                if not any(attributes.get(name) for name in IDENTIFIERS):
                    raise _invalid(
                        "One of email, phone_number or external_id is required",
                        "/data/attributes",
                    )
                profile = next(
                    (
                        found
                        for name in IDENTIFIERS
                        if (found := self.by(name, attributes.get(name))) is not None
                    ),
                    None,
                )
        except Failed as failed:
            return _failed(failed)
        created = profile is None
        if profile is None:
            profile = self._new()
        _apply(profile, attributes, data.get("meta"))
        self.imports += 1
        return _json(201 if created else 200, {"data": _resource(profile)})

    def _new(self) -> dict[str, Any]:
        profile_id = uuid.uuid4().hex[:26].upper()
        profile: dict[str, Any] = {
            "id": profile_id,
            "properties": {},
            "location": {},
            "consent": "NEVER_SUBSCRIBED",
            "created": datetime.now(UTC).isoformat(),
        }
        self.profiles[profile_id] = profile
        return profile

    async def _subscribe(self, request: web.Request) -> web.Response:
        return await self._job(request, "profile-subscription-bulk-create-job", "SUBSCRIBED")

    async def _unsubscribe(self, request: web.Request) -> web.Response:
        return await self._job(request, "profile-subscription-bulk-delete-job", "UNSUBSCRIBED")

    async def _job(self, request: web.Request, kind: str, consent: str) -> web.Response:
        limit = MAX_SUBSCRIBE if consent == "SUBSCRIBED" else MAX_UNSUBSCRIBE
        try:
            data = await _data(request, kind)
            profiles = ((data.get("attributes") or {}).get("profiles") or {}).get("data")
            if not isinstance(profiles, list):
                raise _invalid("profiles: required", "/data/attributes/profiles/data")
            if len(profiles) > limit:
                raise _invalid(
                    f"At most {limit} profiles per job", "/data/attributes/profiles/data"
                )
            list_id = (((data.get("relationships") or {}).get("list") or {}).get("data") or {}).get(
                "id"
            )
            if list_id is not None and list_id not in self.lists:
                raise Failed(404, "not_found", "Not found.", "The list does not exist")
            emails = [_job_email(index, item, consent) for index, item in enumerate(profiles)]
        except Failed as failed:
            return _failed(failed)
        for email in emails:
            profile = self.by("email", email)
            if profile is None:
                profile = self._new()
                profile["email"] = email
            profile["consent"] = consent
            if list_id is not None:
                on_list = self.members.setdefault(list_id, set())
                if consent == "SUBSCRIBED":
                    on_list.add(profile["id"])
                else:
                    on_list.discard(profile["id"])
        self.jobs.append((kind, len(emails)))
        return web.Response(status=202)

    async def _delete(self, request: web.Request) -> web.Response:
        try:
            data = await _data(request, "data-privacy-deletion-job")
            who = (((data.get("attributes") or {}).get("profile") or {}).get("data")) or {}
            given = {
                name: value
                for name, value in {
                    "id": who.get("id"),
                    **{n: (who.get("attributes") or {}).get(n) for n in ("email", "phone_number")},
                }.items()
                if value is not None
            }
            if len(given) != 1:
                raise _invalid(
                    "Exactly one of id, email or phone_number is required",
                    "/data/attributes/profile/data",
                )
        except Failed as failed:
            return _failed(failed)
        [(name, value)] = given.items()
        for profile in [p for p in self.profiles.values() if p.get(name) == value]:
            del self.profiles[profile["id"]]
            for on_list in self.members.values():
                on_list.discard(profile["id"])
            self.deleted.append(profile["id"])
        return web.Response(status=202)


def _apply(profile: dict[str, Any], attributes: dict[str, Any], meta: Any) -> None:
    for name in STANDARD:
        if name in attributes:
            if attributes[name] is None:
                profile.pop(name, None)
            else:
                profile[name] = attributes[name]
    for name, value in (attributes.get("location") or {}).items():
        if value is None:
            profile["location"].pop(name, None)
        else:
            profile["location"][name] = value
    profile["properties"].update(attributes.get("properties") or {})
    unset = ((meta or {}).get("patch_properties") or {}).get("unset") or []
    for name in [unset] if isinstance(unset, str) else unset:
        profile["properties"].pop(name, None)


def _job_email(index: int, item: Any, consent: str) -> str:
    where = f"/data/attributes/profiles/data/{index}"
    attributes = item.get("attributes") if isinstance(item, dict) else None
    if not isinstance(attributes, dict) or item.get("type") != "profile":
        raise _invalid("A profile resource is required", where)
    marketing = (((attributes.get("subscriptions") or {}).get("email")) or {}).get("marketing")
    if not isinstance(marketing, dict) or marketing.get("consent") != consent:
        raise _invalid(
            f"subscriptions.email.marketing.consent must be {consent}",
            f"{where}/attributes/subscriptions",
        )
    email = attributes.get("email")
    if not (isinstance(email, str) and EMAIL.match(email)):
        raise _invalid("Invalid email address", f"{where}/attributes/email")
    return email


def _resource(profile: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "profile",
        "id": profile["id"],
        "attributes": {
            **{name: profile.get(name) for name in STANDARD},
            "location": profile["location"],
            "properties": profile["properties"],
            "created": profile["created"],
        },
        "links": {"self": f"https://a.klaviyo.com/api/profiles/{profile['id']}/"},
    }


async def _data(request: web.Request, kind: str) -> dict[str, Any]:
    if request.headers.get("Authorization") != f"Klaviyo-API-Key {PRIVATE_KEY}":
        raise Failed(
            401,
            "not_authenticated",
            "Authentication credentials were not provided.",
            "Missing or invalid private key.",
        )
    if not request.headers.get("revision"):
        raise Failed(400, "invalid", "Invalid input.", "The revision header is required")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise Failed(400, "parse_error", "Malformed request.", str(exc)) from exc
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or data.get("type") != kind:
        raise _invalid(f"data.type must be {kind}", "/data/type")
    return data


def _failed(failed: Failed) -> web.Response:
    return _json(
        failed.status,
        {
            "errors": [
                {
                    "id": str(uuid.uuid4()),
                    "status": failed.status,
                    "code": failed.code,
                    "title": failed.title,
                    "detail": failed.detail,
                    "source": {"pointer": failed.pointer},
                    "links": {},
                    "meta": {},
                }
            ]
        },
    )


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type=JSON_API)


def _throttled(_status: int) -> web.Response:
    response = _failed(
        Failed(
            429,
            "throttled",
            "Request was throttled.",
            "Request was throttled. Expected available in 1 second.",
        )
    )
    response.headers["Retry-After"] = "1"
    return response


def server(account: Account, faults: Faults | None = None) -> FakeServer:
    faults = faults or Faults()
    faults.throttle_response = _throttled
    return FakeServer(account.app(), faults)


def main() -> None:
    args = standalone_arguments("A fake of Klaviyo's REST API (profiles, consent)").parse_args()
    run_standalone(server(Account()), args.port)


if __name__ == "__main__":
    main()
