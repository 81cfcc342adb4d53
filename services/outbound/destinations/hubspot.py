"""HubSpot as a destination: profiles written to contacts with the CRM v3 batch API.

Documented behaviour followed (developers.hubspot.com, CRM API "Contacts", reference
pages "Upsert contacts", "Update contacts", "Permanently delete a contact
(GDPR-compliant)", and "Error handling"):

- ``POST /crm/v3/objects/contacts/batch/upsert``: ``{"inputs": [{"id": <email>,
  "idProperty": "email", "objectWriteTraceId", "properties": {...}}]}`` creates the
  contacts whose email is unknown and updates the others; every result carries the
  contact's ``id``. A profile without a HubSpot contact id is written this way, so a
  chunk sent twice updates the same contacts instead of creating twins.
- ``POST /crm/v3/objects/contacts/batch/update``: ``{"inputs": [{"id": <contact id>,
  "objectWriteTraceId", "properties": {...}}]}`` for a profile that carries
  ``crm:<source>:<contact id>`` (``source`` is the crmsync source reading this
  account). "Properties values can be cleared by passing an empty string."
- Both take at most 100 inputs (``batch_size``). Every property value is a string:
  booleans (checkboxes, the mapped consents) are ``"true"`` / ``"false"``, lists
  (multiple checkboxes) are joined with ``;``.
- Answers: 200 with ``results``, or 207 Multi-Status with ``results`` and ``errors``
  (``numErrors``), each error ``{status, category, message, context}``. A
  ``objectWriteTraceId`` per input makes HubSpot name the failed input in the error's
  ``context``; an update of an unknown id is ``OBJECT_NOT_FOUND`` with the id in
  ``context.ids``. Only the profiles an error names are refused. A 4xx answer (a
  ``VALIDATION_ERROR`` HubSpot reports for the whole batch) refuses the whole request,
  and the delivery loop sends its changes again one by one to find the culprit.
- ``POST /crm/v3/objects/contacts/gdpr-delete`` with ``{"objectId": <contact id>}`` or
  ``{"objectId": <email>, "idProperty": "email"}`` permanently deletes an erased
  profile's contact (an unknown email is blocklisted). 404 means the contact is
  already gone: delivered.
- 429 (HubSpot's rate limit policies) and 5xx are retried by ``ApiClient``, as are
  the other "pause, then retry" statuses HubSpot documents (``is_throttled``, shared
  with the HubSpot source); 401 and 403 are an outage (``refusals``).

What the documentation leaves open, and what this module does:

- The order of ``results``: each is matched to its profile by its
  ``objectWriteTraceId`` (the profile id), else by its email or id.
- Clearing: a cleared attribute is left out (HubSpot keeps its value) unless
  ``send_clears``, which sends ``""``.
- A profile with several emails is upserted by the first one its identities list.
- The echo of crmsync's own writes: HubSpot marks the webhook events of a write made
  with an app's token with ``changeSource`` "INTEGRATION" and the app's id as
  ``sourceId``; the HubSpot source drops events whose ``sourceId`` is in its
  ``own_source_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

from services.core.api_client import ApiError, ApiUnavailable
from services.core.contracts import FieldValue
from services.core.destinations.hubspot import MAX_BATCH_INPUTS, HubSpotDestination
from services.ingest.connectors.hubspot.pull import is_throttled
from services.outbound.destinations.base import (
    RECORD_REFUSED,
    ApiConnection,
    Delivered,
    Refusal,
    refusals,
)
from services.outbound.destinations.profiles import RecordWrite, batches, fold_records
from services.outbound.outgoing import OutgoingChange

CONTACTS: Final = "/crm/v3/objects/contacts"
UPSERT_PATH: Final = f"{CONTACTS}/batch/upsert"
UPDATE_PATH: Final = f"{CONTACTS}/batch/update"
GDPR_DELETE_PATH: Final = f"{CONTACTS}/gdpr-delete"
EMAIL: Final = "email"
GONE: Final = 404


def property_text(value: FieldValue) -> str:
    """A value as HubSpot takes it: a string ("" clears)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(value)
    return str(value)


Contact = RecordWrite
"""One profile's write in a chunk: its contact id (``record_id``), else its email."""


def trace(contact: Contact) -> str:
    return str(contact.profile_id)


def key(contact: Contact) -> str | None:
    """How HubSpot names the input in answers: its contact id, else its email (HubSpot
    keeps emails in lower case)."""
    if contact.record_id is not None:
        return contact.record_id
    return contact.email.lower() if contact.email is not None else None


def properties(contact: Contact) -> dict[str, str]:
    return {name: property_text(value) for name, value in contact.values.items()}


def named(error: dict[str, Any], contacts: Sequence[Contact]) -> list[Contact]:
    """The inputs a batch error names in its ``context``: by trace id, or by id."""
    context = error.get("context")
    if not isinstance(context, dict):
        return []
    traces = {str(t) for t in context.get("objectWriteTraceId") or ()}
    ids = {str(i).lower() for i in context.get("ids") or ()}
    return [c for c in contacts if trace(c) in traces or key(c) in ids]


class HubSpotContacts:
    def __init__(self, name: str, settings: HubSpotDestination) -> None:
        self.name = name
        self.batch_size = settings.batch_size
        self._settings = settings
        self._api = ApiConnection(name, settings.api, is_throttled=is_throttled)

    async def open(self) -> None:
        await self._api.open()

    async def send(self, chunk: Sequence[OutgoingChange]) -> Delivered:
        delivered = Delivered()
        updates: list[Contact] = []
        upserts: list[Contact] = []
        erasures: list[Contact] = []
        for contact in fold_records(
            chunk, source=self._settings.source, send_clears=self._settings.send_clears
        ):
            if contact.erase:
                erasures.append(contact)
            elif not contact.values:
                continue  # nothing for HubSpot: delivered
            elif contact.record_id is not None:
                updates.append(contact)
            elif contact.email is not None:
                upserts.append(contact)
            else:
                delivered.refused += [
                    Refusal(c, None, "the profile has no HubSpot contact id or email to match")
                    for c in contact.changes
                ]
        for batch in batches(updates, MAX_BATCH_INPUTS):
            await self._write(UPDATE_PATH, batch, delivered)
        for batch in batches(upserts, MAX_BATCH_INPUTS):
            await self._write(UPSERT_PATH, batch, delivered)
        for contact in erasures:
            await self._erase(contact, delivered)
        return delivered

    async def _write(self, path: str, contacts: Sequence[Contact], delivered: Delivered) -> None:
        body = {"inputs": [self._input(c) for c in contacts]}
        try:
            response = await self._api.client.request("POST", path, json_body=body)
        except ApiUnavailable:
            raise  # not taken: the loop sends the chunk again
        except ApiError as exc:
            delivered.refused += refusals(exc, [ch for c in contacts for ch in c.changes])
            return
        answer = response.json()
        failed: set[int] = set()
        unattributed: list[str] = []
        for error in answer.get("errors") or ():
            text = orjson.dumps(error).decode()[:300]
            culprits = named(error, contacts)
            if not culprits:
                unattributed.append(text)
            for contact in culprits:
                failed.add(contact.profile_id)
                delivered.refused += [Refusal(c, RECORD_REFUSED, text) for c in contact.changes]
        by_trace = {trace(c): c for c in contacts}
        by_key = {key(c): c for c in contacts}
        for result in answer.get("results") or ():
            owner = by_trace.get(str(result.get("objectWriteTraceId"))) or by_key.get(
                self._result_key(result, path)
            )
            if owner is not None and owner.profile_id not in failed:
                delivered.assigned[owner.profile_id] = str(result["id"])
        if unattributed:
            # An error HubSpot did not tie to an input: the inputs without a result
            # are the ones it is about.
            for contact in contacts:
                if contact.profile_id not in failed | delivered.assigned.keys():
                    delivered.refused += [
                        Refusal(c, RECORD_REFUSED, unattributed[0]) for c in contact.changes
                    ]

    @staticmethod
    def _input(contact: Contact) -> dict[str, Any]:
        if contact.record_id is not None:
            return {
                "id": contact.record_id,
                "objectWriteTraceId": trace(contact),
                "properties": properties(contact),
            }
        return {
            "id": contact.email,
            "idProperty": EMAIL,
            "objectWriteTraceId": trace(contact),
            "properties": properties(contact),
        }

    @staticmethod
    def _result_key(result: dict[str, Any], path: str) -> str | None:
        if path == UPDATE_PATH:
            return str(result.get("id"))
        email = (result.get("properties") or {}).get(EMAIL)
        return str(email).lower() if email else None

    async def _erase(self, contact: Contact, delivered: Delivered) -> None:
        if contact.record_id is not None:
            body: dict[str, str] = {"objectId": contact.record_id}
        elif contact.email is not None:
            body = {"objectId": contact.email, "idProperty": EMAIL}
        else:
            delivered.refused += [
                Refusal(c, None, "the profile has no HubSpot contact id or email to erase")
                for c in contact.changes
            ]
            return
        try:
            await self._api.client.request("POST", GDPR_DELETE_PATH, json_body=body)
        except ApiUnavailable:
            raise
        except ApiError as exc:
            if exc.status != GONE:  # already deleted: the erasure holds
                delivered.refused += refusals(exc, contact.changes)

    async def close(self) -> None:
        await self._api.close()
