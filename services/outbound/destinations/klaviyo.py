"""Klaviyo as a destination: profiles, their email marketing consent, their erasure.

Follows Klaviyo's API reference (developers.klaviyo.com/en/reference, the OpenAPI
documents of revision 2026-07-15); every request names its ``revision`` and carries
``Authorization: Klaviyo-API-Key <private key>``, JSON:API bodies
(``application/vnd.api+json``):

- "Create or Update Profile", ``POST /api/profile-import``: one profile, found by its
  ``id`` when given, else by its identifiers (email...), else created; answers 201
  (created) or 200 (updated) with the profile and its ``id``. A field set to null is
  cleared, a field left out keeps its value; custom ``properties`` are merged key by
  key and ``meta.patch_properties.unset`` removes keys. Rate limits 75/s burst, 750/m
  steady; a body of at most 100 KB.
- "Bulk Subscribe Profiles", ``POST /api/profile-subscription-bulk-create-jobs``
  (at most 1000 profiles, 202) and "Bulk Unsubscribe Profiles",
  ``POST /api/profile-subscription-bulk-delete-jobs`` (at most 100, 202), email
  marketing consent ``SUBSCRIBED`` / ``UNSUBSCRIBED``, for the configured list.
- "Request Profile Deletion", ``POST /api/data-privacy-deletion-jobs`` (202): deletes
  every profile with the one identifier given (id or email), asynchronously.
- Errors: ``{"errors": [{"id", "status", "code", "title", "detail", "source":
  {"pointer"}}]}``; 429 when a burst or steady window is exhausted, with
  ``Retry-After`` (retried, services/core/api_client.py); 401/403 a refused key
  (``refusals``: an outage).

Why profile-import and not the bulk import job (``POST /api/profile-bulk-import-jobs``,
10,000 profiles, 5 MB): the job answers 202 and reports failures per profile only
later, through the job's resources, and it cannot clear a field (its guide: null is
not supported). profile-import answers each profile at once with its id, so a refused
profile is refused alone and every created profile's id is reported (``assigned``).

Each profile of a chunk (its changes folded in order, the later value winning) is one
profile-import request, sent only when an attribute changed or the profile was
created: by id when its identities carry ``crm:<source>:<id>`` (``source`` the
destination's), else by its email. Attributes go under their Klaviyo names: the
standard fields, ``location.<field>``, or, any other name, a custom property. A
consent change goes in a bulk job after the profile's import; a profile whose import
was refused is left out of the jobs. An erased profile gets a deletion job by id (when
known) or email instead of anything else the chunk held for it.

Idempotency: profile-import is an upsert (by id, else by email) and subscription
changes set a state, so a chunk sent twice leaves the same profiles and consents; a
second deletion job for a profile already deleted deletes nothing more.

What the reference leaves open, and what this module does: how a bulk job's 4xx names
the culprit (``source.pointer`` ``/data/attributes/profiles/data/<n>/...`` is taken to
name that profile, which alone is refused and the job sent again without it; any other
answer refuses the job's changes); and what a consent-only change does to a profile
that does not exist yet (the subscribe job creates it, as its description implies).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from services.core.api_client import ApiError, ApiUnavailable
from services.core.contracts import FieldValue
from services.core.destinations.klaviyo import (
    EMAIL_MARKETING,
    LOCATION,
    MAX_SUBSCRIBE,
    MAX_UNSUBSCRIBE,
    STANDARD_FIELDS,
    KlaviyoDestination,
)
from services.core.profile_changed import ProfileChangeKind
from services.outbound.destinations.base import ApiConnection, Delivered, Refusal, refusals
from services.outbound.destinations.profiles import email_of, record_id, side_by_side
from services.outbound.outgoing import OutgoingChange

JSON_API: Final = "application/vnd.api+json"
PROFILE_POINTER: Final = re.compile(r'"pointer"\s*:\s*"/data/attributes/profiles/data/(\d+)[/"]')
SUBSCRIBE: Final = "profile-subscription-bulk-create-job"
UNSUBSCRIBE: Final = "profile-subscription-bulk-delete-job"


class PrivateKey:
    """``Klaviyo-API-Key`` authentication, and the revision every request names."""

    def __init__(self, key: str, revision: str) -> None:
        self._headers = {
            "Authorization": f"Klaviyo-API-Key {key}",
            "revision": revision,
            "Accept": JSON_API,
        }

    async def headers(self) -> Mapping[str, str]:
        return self._headers

    async def refresh(self) -> bool:
        return False


@dataclass
class Profile:
    """One profile's changes in a chunk, folded."""

    profile_id: int
    email: str | None
    klaviyo_id: str | None
    attributes: dict[str, FieldValue] = field(default_factory=dict)
    location: dict[str, FieldValue] = field(default_factory=dict)
    properties: dict[str, FieldValue] = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)
    subscribed: bool | None = None
    created: bool = False
    erased: bool = False
    changes: list[OutgoingChange] = field(default_factory=list)

    def set(self, name: str, value: FieldValue, *, send_clears: bool) -> None:
        if value is None and not send_clears:
            return
        if name in STANDARD_FIELDS:
            self.attributes[name] = value
        elif name.startswith(LOCATION):
            self.location[name[len(LOCATION) :]] = value
        elif value is None:
            self.properties.pop(name, None)
            self.unset.append(name)
        else:
            self.properties[name] = value
            if name in self.unset:
                self.unset.remove(name)

    @property
    def has_update(self) -> bool:
        return bool(
            self.created or self.attributes or self.location or self.properties or self.unset
        )

    def import_body(self) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        if self.email is not None:
            attributes["email"] = self.email
        attributes.update(self.attributes)
        if self.location:
            attributes["location"] = self.location
        if self.properties:
            attributes["properties"] = self.properties
        data: dict[str, Any] = {"type": "profile", "attributes": attributes}
        if self.klaviyo_id is not None:
            data["id"] = self.klaviyo_id
        if self.unset:
            data["meta"] = {"patch_properties": {"unset": self.unset}}
        return {"data": data}


def fold(chunk: Sequence[OutgoingChange], settings: KlaviyoDestination) -> list[Profile]:
    """The chunk's profiles in order of first appearance, their changes folded."""
    profiles: dict[int, Profile] = {}
    for change in chunk:
        event = change.event
        if event.kind is ProfileChangeKind.DETACHED:
            continue
        profile = profiles.get(event.profile_id)
        if profile is None:
            profile = profiles[event.profile_id] = Profile(
                event.profile_id, email_of(event), record_id(event, settings.source)
            )
        profile.changes.append(change)
        if event.kind is ProfileChangeKind.ERASED:
            # An erasure supersedes whatever the chunk would have written first.
            erased = Profile(event.profile_id, profile.email, profile.klaviyo_id, erased=True)
            erased.changes = profile.changes
            profiles[event.profile_id] = erased
            continue
        if profile.erased:
            continue  # nothing outlives an erasure in the same chunk
        profile.created |= event.kind is ProfileChangeKind.CREATED
        for name, value in change.fields.items():
            profile.set(name, value, send_clears=settings.send_clears)
        if EMAIL_MARKETING in change.consents:
            profile.subscribed = change.consents[EMAIL_MARKETING]
    return list(profiles.values())


def job_body(kind: str, profiles: Sequence[Profile], list_id: str | None) -> dict[str, Any]:
    consent = "SUBSCRIBED" if kind == SUBSCRIBE else "UNSUBSCRIBED"
    data: dict[str, Any] = {
        "type": kind,
        "attributes": {
            "profiles": {
                "data": [
                    {
                        "type": "profile",
                        "attributes": {
                            "email": p.email,
                            "subscriptions": {"email": {"marketing": {"consent": consent}}},
                        },
                    }
                    for p in profiles
                ]
            }
        },
    }
    if list_id is not None:
        data["relationships"] = {"list": {"data": {"type": "list", "id": list_id}}}
    return {"data": data}


def named_profile(answer: str) -> int | None:
    """The job's profile an error answer points at (``source.pointer``), if any. Read
    from the text: the answer may be an excerpt, cut before its JSON closes."""
    found = PROFILE_POINTER.search(answer)
    return int(found.group(1)) if found else None


class KlaviyoProfiles:
    def __init__(self, name: str, settings: KlaviyoDestination) -> None:
        self.name = name
        self.batch_size = settings.batch_size
        self._settings = settings
        self._api: ApiConnection | None = None

    async def open(self) -> None:
        api = self._settings.api
        # The settings validator made sure there is a token.
        key = api.token.resolve() if api.token is not None else ""
        self._api = ApiConnection(
            self.name, api, credentials=PrivateKey(key, self._settings.revision)
        )
        await self._api.open()

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        if self._api is None:
            raise RuntimeError(f"destination {self.name} not opened")
        response = await self._api.client.request(
            "POST", path, content=orjson.dumps(body), headers={"Content-Type": JSON_API}
        )
        return response.json() if response.body else None

    async def send(self, chunk: Sequence[OutgoingChange]) -> Delivered:
        delivered = Delivered()
        subscribing: list[Profile] = []
        unsubscribing: list[Profile] = []

        async def one(profile: Profile) -> None:
            if profile.email is None and profile.klaviyo_id is None:
                delivered.refused += [
                    Refusal(c, None, "the profile has no email or Klaviyo id to be found by")
                    for c in profile.changes
                ]
            elif profile.erased:
                delivered.refused += await self._erase(profile)
            elif await self._imported(profile, delivered) and profile.subscribed is not None:
                if profile.email is None:
                    delivered.refused += [
                        Refusal(c, None, "email consent needs the profile's email")
                        for c in profile.changes
                    ]
                else:
                    (subscribing if profile.subscribed else unsubscribing).append(profile)

        await side_by_side(fold(chunk, self._settings), one, limit=self._settings.concurrency)
        delivered.refused += await self._jobs(SUBSCRIBE, subscribing, MAX_SUBSCRIBE)
        delivered.refused += await self._jobs(UNSUBSCRIBE, unsubscribing, MAX_UNSUBSCRIBE)
        return delivered

    async def _imported(self, profile: Profile, delivered: Delivered) -> bool:
        """Import the profile when it has an update; False when it was refused."""
        if not profile.has_update:
            return True
        try:
            answer = await self._post("api/profile-import", profile.import_body())
        except ApiUnavailable:
            raise  # not taken: the loop sends it again
        except ApiError as exc:
            delivered.refused += refusals(exc, profile.changes)
            return False
        klaviyo_id = answer.get("data", {}).get("id") if isinstance(answer, dict) else None
        if isinstance(klaviyo_id, str) and klaviyo_id != profile.klaviyo_id:
            delivered.assigned[profile.profile_id] = klaviyo_id
        return True

    async def _jobs(self, kind: str, profiles: list[Profile], limit: int) -> list[Refusal]:
        refused: list[Refusal] = []
        for start in range(0, len(profiles), limit):
            batch = profiles[start : start + limit]
            while batch:
                try:
                    await self._post(f"api/{kind}s", job_body(kind, batch, self._settings.list_id))
                except ApiUnavailable:
                    raise
                except ApiError as exc:
                    index = named_profile(exc.detail)
                    if index is None or index >= len(batch):
                        refused += refusals(exc, [c for p in batch for c in p.changes])
                        break
                    refused += refusals(exc, batch[index].changes)
                    del batch[index]
                    continue
                break
        return refused

    async def _erase(self, profile: Profile) -> list[Refusal]:
        who: dict[str, Any] = {"type": "profile", "attributes": {}}
        if profile.klaviyo_id is not None:
            who["id"] = profile.klaviyo_id
        else:
            who["attributes"]["email"] = profile.email
        body = {
            "data": {
                "type": "data-privacy-deletion-job",
                "attributes": {"profile": {"data": who}},
            }
        }
        try:
            await self._post("api/data-privacy-deletion-jobs", body)
        except ApiUnavailable:
            raise
        except ApiError as exc:
            return refusals(exc, profile.changes)
        return []

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
