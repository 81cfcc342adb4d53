"""A generic REST destination: profiles sent as JSON to an API without a dedicated kind.

There is no vendor documentation to follow: the settings (``RestDestination``) describe
the API. Each profile of a chunk (its changes folded, later values winning) becomes one
JSON object: its identities under their fields (``identities``), its changed mapped
attributes and consents (a cleared attribute left out, or null with ``send_clears``).
It is sent with ``method`` to ``path``, its placeholders filled from the profile
(``{profile_id}``, ``{email}``, ``{crm_id}``: its id in ``source``); a profile whose path
needs a ``crm_id`` it does not have yet goes to ``create_path`` with ``create_method``.
With ``batch_key``, up to ``batch_size`` profiles go in one body ``{batch_key: [...]}``.

Answers: a 2xx is delivery; the created record's id is read at ``id_pointer`` (RFC 6901;
``{index}`` the profile's place in a batch) and reported in ``assigned``. 429, 5xx,
``retry_statuses`` and no answer are retried (services/core/api_client.py); 401/403 are
refused credentials, an outage; any other 4xx refuses the request's changes (a whole
batch: the delivery loop then sends it change by change). An erased profile is
DELETEd at ``delete_path`` (404: already gone) or, without one, refused for an operator.

Idempotency: with ``idempotency_header`` each request carries a key derived from its
event ids, the same whenever the same changes are sent. Without it, a PUT or PATCH to a
record's own path is naturally idempotent; a POST to a create path is only as safe as
the receiving API's de-duplication, which is why the key is offered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

from services.core.api_client import ApiError, ApiResponse, ApiUnavailable
from services.core.contracts import FieldValue
from services.core.destinations.rest import RestDestination, placeholders
from services.core.profile_changed import ProfileChangeKind
from services.outbound.destinations.base import ApiConnection, Delivered, Refusal, refusals
from services.outbound.destinations.profiles import ProfileUpdate, by_profile, side_by_side
from services.outbound.outgoing import OutgoingChange

GONE: Final = 404


def idempotency_key(changes: Sequence[OutgoingChange]) -> str:
    return hashlib.sha256("\n".join(c.event.event_id for c in changes).encode()).hexdigest()


def pointed(document: Any, pointer: str) -> Any:
    """The value at a JSON pointer (RFC 6901), or None."""
    if pointer == "":
        return document
    for escaped in pointer.lstrip("/").split("/"):
        token = escaped.replace("~1", "/").replace("~0", "~")
        if isinstance(document, dict):
            document = document.get(token)
        elif isinstance(document, list) and token.isdigit() and int(token) < len(document):
            document = document[int(token)]
        else:
            return None
    return document


class RestRecords:
    def __init__(self, name: str, settings: RestDestination) -> None:
        self.name = name
        self.batch_size = settings.batch_size
        self._settings = settings
        retried = frozenset(settings.retry_statuses)
        self._api = ApiConnection(
            name, settings.api, is_throttled=lambda status, _body: status in retried
        )

    async def open(self) -> None:
        await self._api.open()

    async def send(self, chunk: Sequence[OutgoingChange]) -> Delivered:
        delivered = Delivered()
        updates = by_profile(c for c in chunk if c.event.kind is not ProfileChangeKind.DETACHED)
        writes: list[ProfileUpdate] = []
        for update in updates:
            if update.event.kind is ProfileChangeKind.ERASED:
                delivered.refused += await self._erase(update)
            else:
                writes.append(update)
        if self._settings.batch_key is not None:
            await self._send_batch(writes, delivered)
        else:
            await side_by_side(
                writes,
                lambda update: self._send_one(update, delivered),
                limit=self._settings.concurrency,
            )
        return delivered

    def _values(self, update: ProfileUpdate) -> dict[str, str]:
        values = {"profile_id": str(update.profile_id)}
        email = update.email()
        if email is not None:
            values["email"] = email
        crm_id = update.crm_id(self._settings.source)
        if crm_id is not None:
            values["crm_id"] = crm_id
        return values

    def _target(self, update: ProfileUpdate) -> tuple[str, str, bool] | str:
        """(method, path, whether it creates) for the profile, or why it cannot be sent."""
        settings = self._settings
        values = self._values(update)
        method, template, creates = settings.method, settings.path, False
        if "crm_id" in placeholders(template) and "crm_id" not in values:
            if settings.create_path is None:
                return "the profile has no record id in the API yet and no create_path is set"
            method, template, creates = settings.create_method, settings.create_path, True
        missing = placeholders(template) - set(values)
        if missing:
            return f"the profile has no {sorted(missing)[0]} for the path"
        return method, _filled(template, values), creates

    def _body(self, update: ProfileUpdate) -> dict[str, FieldValue]:
        body: dict[str, FieldValue] = {}
        values = self._values(update)
        for kind, field in self._settings.identities.items():
            identity = values.get("crm_id" if kind == "crm" else kind)
            if identity is not None:
                body[field] = identity
        for name, value in update.fields.items():
            if value is not None or self._settings.send_clears:
                body[name] = value
        body.update(update.consents)
        return body

    async def _send_one(self, update: ProfileUpdate, delivered: Delivered) -> None:
        target = self._target(update)
        if isinstance(target, str):
            delivered.refused += [Refusal(c, None, target) for c in update.changes]
            return
        method, path, creates = target
        try:
            response = await self._request(method, path, self._body(update), update.changes)
        except ApiUnavailable:
            raise  # not taken: the loop sends it again
        except ApiError as exc:
            delivered.refused += refusals(exc, update.changes)
            return
        pointer = self._settings.id_pointer
        if pointer is not None and (creates or update.crm_id(self._settings.source) is None):
            found = _id_at(response, pointer.replace("{index}", "0"))
            if found is not None:
                delivered.assigned[update.profile_id] = found

    async def _send_batch(self, updates: list[ProfileUpdate], delivered: Delivered) -> None:
        if not updates:
            return
        key = self._settings.batch_key
        assert key is not None
        changes = [c for u in updates for c in u.changes]
        try:
            response = await self._request(
                self._settings.method,
                self._settings.path,
                {key: [self._body(u) for u in updates]},
                changes,
            )
        except ApiUnavailable:
            raise
        except ApiError as exc:
            delivered.refused += refusals(exc, changes)
            return
        pointer = self._settings.id_pointer
        if pointer is None:
            return
        for index, update in enumerate(updates):
            if update.crm_id(self._settings.source) is None:
                found = _id_at(response, pointer.replace("{index}", str(index)))
                if found is not None:
                    delivered.assigned[update.profile_id] = found

    async def _erase(self, update: ProfileUpdate) -> list[Refusal]:
        template = self._settings.delete_path
        if template is None:
            return [
                Refusal(c, None, "no delete_path is set: erase the record in the API")
                for c in update.changes
            ]
        values = self._values(update)
        missing = placeholders(template) - set(values)
        if missing:
            return [
                Refusal(c, None, f"the profile has no {sorted(missing)[0]} to delete by")
                for c in update.changes
            ]
        try:
            await self._request("DELETE", _filled(template, values), None, update.changes)
        except ApiUnavailable:
            raise
        except ApiError as exc:
            if exc.status == GONE:
                return []
            return refusals(exc, update.changes)
        return []

    async def _request(
        self, method: str, path: str, body: Any, changes: Sequence[OutgoingChange]
    ) -> ApiResponse:
        """Raises ApiUnavailable (not taken) or ApiError (refused)."""
        headers = dict(self._settings.headers)
        headers.update({k: v.resolve() for k, v in self._settings.secret_headers.items()})
        if self._settings.idempotency_header is not None:
            headers[self._settings.idempotency_header] = idempotency_key(changes)
        return await self._api.client.request(method, path, json_body=body, headers=headers)

    async def close(self) -> None:
        await self._api.close()


def _filled(template: str, values: Mapping[str, str]) -> str:
    # Each value is one path segment: an email's '@' or a '/' in an id stays inside it.
    return template.format_map({k: quote(v, safe="") for k, v in values.items()})


def _id_at(response: ApiResponse, pointer: str) -> str | None:
    try:
        found = pointed(response.json(), pointer)
    except ApiError:
        return None
    return None if found is None or isinstance(found, dict | list) else str(found)
