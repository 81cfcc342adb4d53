"""Pipedrive as a destination: profiles written as persons through the persons API v2.

Documented behaviour followed (Pipedrive developer documentation, API v2 reference of
Persons, and the client libraries Pipedrive generates from it):

- ``POST /api/v2/persons`` adds a person, ``PATCH /api/v2/persons/{id}`` changes the
  fields its body names and leaves the rest, ``DELETE /api/v2/persons/{id}`` deletes
  one (answer ``{"success": true, "data": {"id": ...}}``). Add and update answer
  ``{"success": true, "data": <person>}``. ``emails`` and ``phones`` are lists of
  ``{value, primary, label}``; custom fields go in a ``custom_fields`` object under
  their 40-character keys; ``marketing_status`` (with the Campaigns product) is
  ``subscribed`` / ``unsubscribed`` / ``no_consent`` / ``archived``.
- ``GET /api/v2/persons/search?term=&fields=email&exact_match=true`` finds persons by
  email (exact, not case sensitive): ``{"data": {"items": [{"result_score",
  "item": {"id", "emails": [...], ...}}]}}``.
- Errors are ``{"success": false, "error": "...", "error_info": "..."}``: 400 for a
  value Pipedrive refuses, 404 for an unknown person, 401 for a refused token.
- "Authentication": the personal API token in the ``x-api-token`` header (the source's
  ``ApiToken``). "Rate limiting": every token has a burst limit and a daily budget;
  past them the answer is 429 (with ``x-ratelimit-*`` headers). ``ApiClient`` retries
  429 and 5xx, waiting ``Retry-After`` when sent, else ``x-ratelimit-reset`` seconds
  (the source's ``reset_wait``), else backing off; ``api.max_requests_per_second``
  keeps a chunk's requests under the burst limit.

Steps of a chunk: its changes are folded into one write per profile (profiles.py), and
each profile is one request or two, in order:

1. ERASED: the person (by id, else found by email) is deleted; a 404 means it is gone
   already, which a resend after a crash meets.
2. A profile carrying ``crm:<source>:<id>`` (``source`` the crmsync source reading this
   Pipedrive) is that person: ``PATCH`` with what changed. A 404 refuses the profile
   (the person was deleted in Pipedrive, whose webhook tells crmsync).
3. Else the profile's email finds the person (``search``), ``PATCH`` then; none found,
   the person is created with the email as its primary one. Pipedrive has no
   idempotency keys, so this find-before-create is what keeps a resent chunk from
   duplicating persons. The person's id is reported in ``Delivered.assigned``.

A body carries only what changed: the mapped fields, the marketing status, and the
email when the profile is new or gained one (``emails`` replaces the person's list: the
profile's email becomes its only, primary one). A cleared attribute is left out, or
sent as null (which empties the field) with ``send_clears``. A 4xx refuses that profile
only; 401 / 403 is an outage (``refusals``). A profile without an email or a Pipedrive
id is refused: there is nothing to find its person by.

Echoes: Pipedrive marks the Webhooks v2 event of a write made through the API with
``meta.change_source: "api"`` (changelog "New field for webhooks", 2021-06-22: "app"
from the web app, "api" through the API), and ``meta.user_id`` is the user who made the
change (changelog "Bug fixes in webhooks v2 payload", 2023-09-05), here the user whose
token crmsync writes with. A change crmsync wrote comes back as such an event; it
carries no change to the profile (the values are crmsync's own), and the pipedrive
source can recognise it by those two fields.

What the documentation leaves open, and how this module decides: the search index lags
behind writes by an undocumented delay, so a chunk resent within moments of creating a
person might not find it (crmsync then creates a second person; the delivery loop
resends only after a failure); when several persons share the email, the first item
(the best match) is taken. A profile change with nothing for Pipedrive (DETACHED, no
mapped field) sends nothing and counts as delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from services.core.api_client import ApiError, ApiUnavailable
from services.core.contracts import FieldValue
from services.core.destinations.pipedrive import (
    CUSTOM_FIELD,
    MARKETING_STATUS,
    PHONE_FIELD,
    PipedriveDestination,
)
from services.ingest.connectors.pipedrive import ApiToken, reset_wait
from services.outbound.destinations.base import ApiConnection, Delivered
from services.outbound.destinations.profiles import ProfileWrite, Unsendable, write_each
from services.outbound.outgoing import OutgoingChange

PERSONS_PATH: Final = "/api/v2/persons"
SEARCH_PATH: Final = "/api/v2/persons/search"
NOT_FOUND: Final = 404
CONTACT_LABEL: Final = "work"


def contact_points(value: FieldValue) -> list[dict[str, Any]]:
    """A primary email or phone as Pipedrive's list; empty clears it."""
    if value is None or value == "":
        return []
    return [{"value": str(value), "primary": True, "label": CONTACT_LABEL}]


def person_body(write: ProfileWrite, *, send_clears: bool, with_email: bool) -> dict[str, Any]:
    """What changed, as a persons API v2 body."""
    body: dict[str, Any] = {}
    custom: dict[str, FieldValue] = {}
    for name, value in write.fields.items():
        if value is None and not send_clears:
            continue
        key = CUSTOM_FIELD.match(name)
        if key is not None:
            custom[key.group(1)] = value
        elif name == PHONE_FIELD:
            body["phones"] = contact_points(value)
        else:
            body[name] = value
    if custom:
        body["custom_fields"] = custom
    if MARKETING_STATUS in write.consents:
        body[MARKETING_STATUS] = (
            "subscribed" if write.consents[MARKETING_STATUS] else "unsubscribed"
        )
    if with_email and write.email is not None:
        body["emails"] = contact_points(write.email)
    return body


def person_id(document: Any, *, path: str) -> str:
    data = document.get("data") if isinstance(document, dict) else None
    found = data.get("id") if isinstance(data, dict) else None
    if isinstance(found, bool) or not isinstance(found, int):
        raise ApiError(status=200, path=path, detail="no person id in the answer")
    return str(found)


class PipedrivePersons:
    def __init__(self, name: str, settings: PipedriveDestination) -> None:
        self.name = name
        self.batch_size = settings.batch_size
        self._settings = settings
        token = settings.api.token.resolve() if settings.api.token is not None else ""
        self._api = ApiConnection(
            name, settings.api, credentials=ApiToken(token), wait_hint=reset_wait
        )

    async def open(self) -> None:
        await self._api.open()

    async def send(self, chunk: Sequence[OutgoingChange]) -> Delivered:
        return await write_each(
            chunk,
            source=self._settings.source,
            write=self._write,
            limit=self._settings.concurrency,
        )

    async def _write(self, write: ProfileWrite) -> str | None:
        """The profile's person id once written; None when nothing was (erased, or
        nothing for Pipedrive)."""
        if write.erased:
            await self._erase(write)
            return None
        if not write.has_news:
            return None
        if write.record_id is not None:
            return await self._update(write.record_id, write, with_email=write.new_email)
        if write.email is None:
            raise Unsendable("the profile has neither an email nor a Pipedrive person id")
        existing = await self._find(write.email)
        if existing is not None:
            return await self._update(existing, write, with_email=False)
        return await self._create(write)

    async def _erase(self, write: ProfileWrite) -> None:
        target = write.record_id
        if target is None and write.email is not None:
            target = await self._find(write.email)
        if target is None:
            return  # no person in Pipedrive: nothing to erase
        try:
            await self._api.client.request("DELETE", f"{PERSONS_PATH}/{target}")
        except ApiError as exc:
            if exc.status != NOT_FOUND or isinstance(exc, ApiUnavailable):
                raise
            # Deleted already (a resend after a crash, or by someone in Pipedrive).

    async def _update(self, target: str, write: ProfileWrite, *, with_email: bool) -> str:
        body = person_body(write, send_clears=self._settings.send_clears, with_email=with_email)
        if body:
            path = f"{PERSONS_PATH}/{target}"
            await self._api.client.request("PATCH", path, json_body=body)
        return target

    async def _create(self, write: ProfileWrite) -> str:
        body = person_body(write, send_clears=False, with_email=True)
        document = await self._api.client.post_json(PERSONS_PATH, body=body)
        return person_id(document, path=PERSONS_PATH)

    async def _find(self, email: str) -> str | None:
        document = await self._api.client.get_json(
            SEARCH_PATH, params={"term": email, "fields": "email", "exact_match": "true"}
        )
        data = document.get("data") if isinstance(document, dict) else None
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ApiError(status=200, path=SEARCH_PATH, detail="no items in the answer")
        for entry in items:
            item = entry.get("item") if isinstance(entry, dict) else None
            found = item.get("id") if isinstance(item, dict) else None
            if isinstance(found, int) and not isinstance(found, bool):
                return str(found)
        return None

    async def close(self) -> None:
        await self._api.close()
