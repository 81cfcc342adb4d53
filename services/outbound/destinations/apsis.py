"""APSIS One as a destination: profile attributes, consents and deletions.

What the public documentation says, and this module follows:

- Authentication (developer.apsis.com/reference/authentication-1,
  help.apsis.one "Getting an Access Token"): ``POST /oauth/token`` with JSON
  ``{"grant_type": "client_credentials", "client_id", "client_secret"}`` answers
  ``{"access_token", "expires_in": 86400, "token_type": "Bearer"}``; the token is cached
  and asked again when close to expiry (the endpoint is rate limited more strictly); an
  invalid or expired token is answered 403 ("User is not authorized to access this
  resource with an explicit deny"). ``ApsisToken`` renews it a minute before
  ``expires_in`` runs out, and once more after a 403 before taking the 403 as refused
  credentials (an outage, ``refusals``).
- Attributes (developer.apsis.com, "Set attributes on a profile", version 1):
  ``PATCH /audience/keyspaces/{keyspace}/profiles/{profile_key}/sections/{section}/
  attributes``, JSON Merge Patch (``application/merge-patch+json``) with attribute
  version ids as keys, at most 100 KB; version 1 creates the profile when the keyspace
  and key find none (version 2, keyed by discriminators, does not, so it is not used).
  In the email keyspace the profile key is the email address; in the CRM-ID keyspace,
  the CRM's id (here the profile's ``crm:<crm_id_source>:<id>``). A value null removes
  the attribute: sent only with ``send_clears``.
- Consents (developer.apsis.com "Create a consent", Consent 1.0):
  ``POST /audience/channels/{channel}/addresses/{address}/consents`` with
  ``{"section_discriminator", "consent_list_discriminator", "topic_discriminator",
  "type": "opt-in" | "opt-out"}`` (topic level); for communication to reach a profile
  it must also be subscribed to the topic: ``POST /audience/keyspaces/{keyspace}/
  profiles/{profile_key}/sections/{section}/subscriptions`` with
  ``{"consent_list_discriminator", "topic_discriminator"}``, sent after an opt-in. The
  address of the email channel is the profile's email.
- Deletion: ``DELETE /audience/keyspaces/{keyspace}/profiles/{profile_key}`` (named by
  "Lock a profile" as the way to remove a profile; help.apsis.one "Deleting profiles":
  permanent, all sections, done within minutes). An erased profile is deleted; a 404
  (already gone) counts as done.
- Answers (help.apsis.com "API Responses"): 2xx success (200, 201, 202, 204); 400, 404,
  410 and other 4xx a verdict; 429 and 5xx retried (services/core/api_client.py).

Each profile of a chunk (its changes folded, later values winning) is its own
requests, so a 4xx refuses only that profile's changes. What the documentation leaves
open, and how this module decides: Consent 1.0 is marked deprecated in favour of
Consent 2.0, whose request body the stored reference does not show, so the documented
1.0 shape is used; a consent already of the sent type may be answered 409 (as version
2 documents), taken as done, which also keeps a chunk sent twice harmless (attributes
are a merge, deletion of a deleted profile a 404). APSIS returns no record id: the
profile key is crmsync's own email or CRM id, so nothing is reported in ``assigned``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

import httpx

from services.core.api_client import TOKEN_FAILURES, ApiError, ApiResponse, ApiUnavailable
from services.core.contracts import FieldValue
from services.core.destinations.apsis import CRM_ID_KEYSPACE, ApsisDestination
from services.core.http import async_client
from services.core.profile_changed import ProfileChangeKind
from services.core.retry import RetryLater, retry_after_seconds
from services.outbound.destinations.base import ApiConnection, Delivered, Refusal, refusals
from services.outbound.destinations.profiles import ProfileUpdate, by_profile, side_by_side
from services.outbound.outgoing import OutgoingChange

TOKEN_PATH: Final = "/oauth/token"  # noqa: S105 (a path, not a secret)
RENEW_BEFORE_S: Final = 60.0
MERGE_PATCH: Final = "application/merge-patch+json"
ALREADY: Final = frozenset({409})
"""A consent already of the type sent."""
GONE: Final = frozenset({404})
"""A profile to delete that is not there."""


class ApsisToken:
    """An OAuth 2.0 client-credentials token, cached until a minute before it expires."""

    def __init__(self, settings: ApsisDestination) -> None:
        self._settings = settings
        self._url = f"{settings.api.base_url.rstrip('/')}{TOKEN_PATH}"
        self._session: httpx.AsyncClient | None = None
        self._token: str | None = None
        self._renew_at = 0.0

    async def open(self) -> None:
        self._session = async_client(timeout_s=self._settings.api.timeout_seconds)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.aclose()

    async def headers(self) -> Mapping[str, str]:
        if self._token is None or time.monotonic() >= self._renew_at:
            await self._fetch()
        return {"Authorization": f"Bearer {self._token}"}

    async def refresh(self) -> bool:
        await self._fetch()
        return True

    async def _fetch(self) -> None:
        if self._session is None:
            raise RuntimeError("the APSIS token is not opened")
        response = await self._session.post(
            self._url,
            json={
                "grant_type": "client_credentials",
                "client_id": self._settings.client_id,
                "client_secret": self._settings.client_secret.resolve(),
            },
            headers={"Accept": "application/json"},
        )
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryLater(
                f"token endpoint http {response.status_code}",
                retry_after_s=retry_after_seconds(response.headers.get("Retry-After")),
            )
        if response.status_code >= 400:
            # The client credentials themselves are refused: an outage to fix.
            raise ApiError(
                status=401, path=TOKEN_PATH, detail=response.content[:300].decode(errors="replace")
            )
        answer = response.json()
        self._token = str(answer["access_token"])
        lifetime = float(answer.get("expires_in", 3600))
        self._renew_at = time.monotonic() + max(0.0, lifetime - RENEW_BEFORE_S)


def _segment(value: str) -> str:
    """A path segment, every reserved character encoded (an email's ``@`` too)."""
    return quote(value, safe="")


class ApsisProfiles:
    def __init__(self, name: str, settings: ApsisDestination) -> None:
        self.name = name
        self.batch_size = settings.batch_size
        self._settings = settings
        self._token = ApsisToken(settings)
        self._api = ApiConnection(name, settings.api, credentials=self._token)

    async def open(self) -> None:
        await self._token.open()
        await self._api.open()

    async def send(self, chunk: Sequence[OutgoingChange]) -> Delivered:
        delivered = Delivered()

        async def deliver(update: ProfileUpdate) -> None:
            delivered.refused += await self._deliver(update)

        await side_by_side(
            by_profile(c for c in chunk if c.event.kind is not ProfileChangeKind.DETACHED),
            deliver,
            limit=self._settings.concurrency,
        )
        return delivered

    async def _deliver(self, update: ProfileUpdate) -> list[Refusal]:
        erased = update.event.kind is ProfileChangeKind.ERASED
        key = self._profile_key(update)
        if key is None:
            return [
                Refusal(c, None, f"the profile has no key in {self._settings.keyspace}")
                for c in update.changes
            ]
        if update.consents and not erased and update.email() is None:
            return [
                Refusal(c, None, "a consent needs the profile's email address")
                for c in update.changes
            ]
        keyspace = _segment(self._settings.keyspace)
        profile = f"audience/keyspaces/{keyspace}/profiles/{_segment(key)}"
        try:
            if erased:
                await self._call("DELETE", profile, ok=GONE)
                return []
            await self._set_attributes(update, profile)
            await self._set_consents(update, profile)
        except ApiUnavailable:
            raise  # not taken: the loop sends it again
        except ApiError as exc:
            return refusals(exc, update.changes)
        return []

    def _profile_key(self, update: ProfileUpdate) -> str | None:
        if self._settings.keyspace == CRM_ID_KEYSPACE:
            return update.crm_id(self._settings.crm_id_source)
        return update.email()

    async def _set_attributes(self, update: ProfileUpdate, profile: str) -> None:
        settings = self._settings
        values: dict[str, FieldValue] = {
            name: value
            for name, value in update.fields.items()
            if value is not None or settings.send_clears
        }
        email = update.email()
        if values and settings.email_attribute is not None and email is not None:
            values.setdefault(settings.email_attribute, email)
        if not values:
            return
        await self._call(
            "PATCH",
            f"{profile}/sections/{_segment(settings.section)}/attributes",
            body=values,
            content_type=MERGE_PATCH,
        )

    async def _set_consents(self, update: ProfileUpdate, profile: str) -> None:
        if not update.consents:
            return
        settings = self._settings
        email = update.email() or ""
        for field, opted_in in update.consents.items():
            topic = settings.topics[field]
            await self._call(
                "POST",
                f"audience/channels/{_segment(topic.channel_discriminator)}"
                f"/addresses/{_segment(email)}/consents",
                body={
                    "section_discriminator": settings.section,
                    "consent_list_discriminator": topic.consent_list_discriminator,
                    "topic_discriminator": topic.topic_discriminator,
                    "type": "opt-in" if opted_in else "opt-out",
                },
                ok=ALREADY,
            )
            if opted_in:
                await self._call(
                    "POST",
                    f"{profile}/sections/{_segment(settings.section)}/subscriptions",
                    body={
                        "consent_list_discriminator": topic.consent_list_discriminator,
                        "topic_discriminator": topic.topic_discriminator,
                    },
                    ok=ALREADY,
                )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        ok: frozenset[int] = frozenset(),
    ) -> ApiResponse | None:
        """One request; ``ok`` statuses count as done. A 403 is what APSIS answers an
        expired token: the token is renewed and the request sent once more."""
        headers = {"Content-Type": content_type} if body is not None else None
        for renewed in (False, True):
            try:
                return await self._api.client.request(method, path, json_body=body, headers=headers)
            except ApiUnavailable:
                raise
            except ApiError as exc:
                if exc.status in ok:
                    return None
                if exc.status == 403 and not renewed:
                    await self._renew()
                    continue
                raise
        raise AssertionError("the loop returns or raises")

    async def _renew(self) -> None:
        try:
            await self._token.refresh()
        except TOKEN_FAILURES as exc:
            raise ApiUnavailable(
                status=503, path=TOKEN_PATH, detail=f"credentials refresh failed: {exc}"
            ) from exc

    async def close(self) -> None:
        await self._api.close()
        await self._token.close()
