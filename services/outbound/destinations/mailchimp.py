"""Mailchimp as a destination: profiles as members of one audience, by email.

Follows the Marketing API 3.0 reference (mailchimp.com/developer/marketing/api/):

- "Batch subscribe or unsubscribe", ``POST /lists/{list_id}`` with
  ``{"members": [...], "update_existing": true}``, at most 500 members a request. Its
  200 answer names what became of each member: ``new_members`` and ``updated_members``
  (list members, ``id`` the subscriber hash), ``errors`` (``email_address``, ``error``,
  ``error_code`` such as ``ERROR_CONTACT_EXISTS`` or ``ERROR_GENERIC``, and ``field``,
  ``field_message`` when a merge field is at issue), ``total_created``,
  ``total_updated``, ``error_count``.
- "Delete list member permanently", ``POST /lists/{list_id}/members/{subscriber_hash}
  /actions/delete-permanent`` (204), the subscriber hash the MD5 of the lower-cased
  email. It erases the member's personal data; Mailchimp will not let the address be
  imported again (the person must sign up anew), which is what an erasure asks.
- Authentication: HTTP Basic, any user name and the API key as password; the API is
  served from the key's data center (``https://us6.api.mailchimp.com/3.0`` for a key
  ending in ``-us6``), checked when the destination opens.
- Errors: ``application/problem+json`` (``type``, ``title``, ``status``, ``detail``,
  ``instance``); 429 when the account has more than 10 connections open (retried,
  services/core/api_client.py), 401/403 a refused key (``refusals``: an outage).

A member is keyed by its email, so each profile of a chunk (its changes folded in
order, the later value winning) is one member: ``email_address``, its mapped
attributes as ``merge_fields`` (tags from ``attributes``), and a status only when its
consent changed (opted in: ``subscribed``; out: ``unsubscribed``); otherwise
``status_if_new`` says what a member crmsync adds is, and an existing member's status
is left as it is. A profile created in crmsync becomes a member even with nothing
mapped. An upsert keyed by email: a chunk sent twice leaves the same members.

Per-member errors in the 200 answer refuse only that member's changes; any other 4xx
refuses the request's. A 404 to ``delete-permanent`` means the member is gone
already (a retry after a lost answer): delivered.

What the documentation leaves open, and what this module does:

- Whether a batch member may omit ``status``: members without a consent change carry
  ``status_if_new`` only, so that crmsync never overwrites a status someone set in
  Mailchimp (``update_existing`` is about statuses; merge fields are updated either
  way).
- Clearing a merge field: an empty string, sent only with ``send_clears``; by default
  a cleared attribute is left out.
- A profile whose email changes: its member is keyed by the new address; the member
  under the old one stays, for an operator to archive (Mailchimp's own "change email"
  is a per-member PATCH crmsync does not make).
- ``assigned`` stays empty: the member id is the MD5 of the email, which crmsync has
  already, and no crmsync source reads Mailchimp, so there is nothing to link it to.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from services.core.api_client import ApiError, ApiUnavailable
from services.core.contracts import FieldValue
from services.core.destinations.mailchimp import (
    MAX_MEMBERS,
    STATUS_FIELD,
    MailchimpDestination,
    data_center,
)
from services.core.profile_changed import ProfileChangeKind
from services.outbound.destinations.base import (
    RECORD_REFUSED,
    ApiConnection,
    Delivered,
    Refusal,
    refusals,
)
from services.outbound.destinations.profiles import email_of
from services.outbound.outgoing import OutgoingChange

EMAIL: Final = "email"
GONE: Final = 404


def subscriber_hash(email: str) -> str:
    """A member's id in the API: the MD5 of its lower-cased email."""
    return hashlib.md5(email.lower().encode(), usedforsecurity=False).hexdigest()


class ApiKeyBasic:
    """HTTP Basic with any user name and the API key as the password."""

    def __init__(self, api_key: str) -> None:
        token = base64.b64encode(f"crmsync:{api_key}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}

    async def headers(self) -> Mapping[str, str]:
        return self._headers

    async def refresh(self) -> bool:
        return False


def check_data_center(base_url: str, api_key: str) -> None:
    """A key ending in ``-us6`` is served by us6 only: say so rather than meet 401s."""
    served_by = data_center(base_url)
    _, _, key_dc = api_key.rpartition("-")
    if served_by is not None and key_dc and key_dc != served_by:
        raise ValueError(
            f"the Mailchimp API key belongs to data center {key_dc}, but base_url is "
            f"served by {served_by}: use https://{key_dc}.api.mailchimp.com/3.0"
        )


def merge_value(value: FieldValue) -> FieldValue:
    """Merge fields hold text, numbers and dates; several values become one text."""
    return ", ".join(value) if isinstance(value, list) else value


class Members:
    """A chunk as members (one per email) and erasures, with the changes of each."""

    def __init__(self, settings: MailchimpDestination) -> None:
        self._settings = settings
        self.members: dict[str, dict[str, Any]] = {}
        self.changes: dict[str, list[OutgoingChange]] = {}
        self.erasures: dict[str, list[OutgoingChange]] = {}
        self.unsendable: list[Refusal] = []

    def add(self, change: OutgoingChange) -> None:
        kind = change.event.kind
        if kind is ProfileChangeKind.DETACHED:
            return
        email = email_of(change.event)
        if email is None:
            self.unsendable.append(
                Refusal(change, None, "the profile has no email: Mailchimp keys members by it")
            )
            return
        key = email.lower()
        if kind is ProfileChangeKind.ERASED:
            # An erasure supersedes whatever the chunk would have written first.
            self.erasures.setdefault(key, []).extend(self.changes.pop(key, []))
            self.members.pop(key, None)
            self.erasures[key].append(change)
            return
        member = self._member(key, email)
        merge_fields: dict[str, FieldValue] = member.setdefault("merge_fields", {})
        for tag, value in change.fields.items():
            if value is not None:
                merge_fields[tag] = merge_value(value)
            elif self._settings.send_clears:
                merge_fields[tag] = ""
        if not merge_fields:
            del member["merge_fields"]
        opted_in = change.consents.get(STATUS_FIELD)
        if opted_in is not None:
            member["status"] = "subscribed" if opted_in else "unsubscribed"
            member.pop("status_if_new", None)
        self.changes[key].append(change)

    def _member(self, key: str, email: str) -> dict[str, Any]:
        member = self.members.get(key)
        if member is None:
            member = {"email_address": email, "status_if_new": self._settings.status_if_new}
            self.members[key] = member
            self.changes[key] = []
        return member

    def sendable(self) -> list[str]:
        """The members with something to write; the changes of the rest are delivered
        (nothing for Mailchimp): a change that only touched unmapped parts."""
        keep = []
        for key, member in self.members.items():
            created = any(c.event.kind is ProfileChangeKind.CREATED for c in self.changes[key])
            if created or "merge_fields" in member or "status" in member:
                keep.append(key)
        return keep


def batches(keys: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


def error_answer(error: Mapping[str, Any]) -> str:
    """A member error as the refusal's answer, its email left out (PII)."""
    email = str(error.get("email_address") or "")
    message = str(error.get("error") or "").replace(email, "<member>") if email else ""
    parts = [str(error.get("error_code") or "ERROR_GENERIC"), message]
    if error.get("field"):
        parts.append(f"field {error['field']}: {error.get('field_message') or ''}".strip())
    return ": ".join(part for part in parts if part)


class MailchimpAudience:
    def __init__(self, name: str, settings: MailchimpDestination) -> None:
        self.name = name
        self.batch_size = settings.batch_size
        self._settings = settings
        self._path = f"lists/{settings.list_id}"
        self._api: ApiConnection | None = None

    async def open(self) -> None:
        api = self._settings.api
        # The settings validator made sure there is a token.
        key = api.token.resolve() if api.token is not None else ""
        check_data_center(api.base_url, key)
        self._api = ApiConnection(self.name, api, credentials=ApiKeyBasic(key))
        await self._api.open()

    @property
    def _connection(self) -> ApiConnection:
        if self._api is None:
            raise RuntimeError(f"destination {self.name} not opened")
        return self._api

    async def send(self, chunk: Sequence[OutgoingChange]) -> Delivered:
        members = Members(self._settings)
        for change in chunk:
            members.add(change)
        refused = list(members.unsendable)
        size = min(self._settings.batch_size, MAX_MEMBERS)
        for keys in batches(members.sendable(), size):
            refused += await self._upsert(members, keys)
        for key, changes in members.erasures.items():
            refused += await self._erase(key, changes)
        return Delivered(refused)

    async def _upsert(self, members: Members, keys: Sequence[str]) -> list[Refusal]:
        sending = [change for key in keys for change in members.changes[key]]
        try:
            answer = await self._connection.client.post_json(
                self._path,
                body={"members": [members.members[k] for k in keys], "update_existing": True},
            )
        except ApiUnavailable:
            raise  # not taken: the loop sends it again
        except ApiError as exc:
            return refusals(exc, sending)
        errors = (answer.get("errors") if isinstance(answer, dict) else None) or []
        refused: list[Refusal] = []
        for error in errors:
            key = str(error.get("email_address") or "").lower()
            refused += [
                Refusal(change, RECORD_REFUSED, error_answer(error))
                for change in members.changes.get(key, [])
            ]
        return refused

    async def _erase(self, key: str, changes: list[OutgoingChange]) -> list[Refusal]:
        path = f"{self._path}/members/{subscriber_hash(key)}/actions/delete-permanent"
        try:
            await self._connection.client.request("POST", path)
        except ApiUnavailable:
            raise
        except ApiError as exc:
            if exc.status == GONE:
                return []  # erased already, or never a member: nothing to erase
            return refusals(exc, changes)
        return []

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
