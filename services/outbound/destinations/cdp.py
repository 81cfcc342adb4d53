"""The product documents' CDP as a destination: Experiture's public records API.

A chunk of changes becomes one ``POST /records/{object_name}/upsert-batch`` request,
``{"records": [...], "matchKey": "<match_key>"}``, with an ``Idempotency-Key``: the
CDP answers a repeated key and body with its first answer for 24 hours, so a chunk
sent again after a lost answer or a restart is not applied twice. The key is a UUID
(version 4 in form, as the API asks) derived from the chunk's event ids, the same
whenever the same changes are sent.

Each profile of the chunk is one record (its changes in the chunk folded in order,
the later value of a field winning): the profile's identities under their record
fields (``identities``), its mapped attributes and consents. As the CDP's guide
prescribes, a record carries only what changed: an omitted field keeps its value in
the CDP; an attribute its source cleared is left out too, or sent as null (which
clears it) with ``send_clears``.

Answers, as the API documents them:

- 2xx: the batch is taken.
- 429 (``CDP_ETL.RATE.LIMITED`` with ``Retry-After``), 409 (a concurrent write raced,
  "retry with backoff") and 5xx: retried (services/core/api_client.py).
- 401, 403: the credentials are refused, an outage to fix, not a verdict on the
  changes (``refusals``).
- Any other 4xx refuses: when its ``error.details.path`` names a record
  (``records[2].email``) only that record's changes are refused and the rest is sent
  again; otherwise the whole chunk is, and the delivery loop sends it again a change
  at a time to find the culprits.

What the public documentation leaves open (this module keeps to the documented part):
whether ``upsert-batch`` reports per-record outcomes in its 2xx answer (the reference
calls it asynchronous with a job to poll, the batch guide synchronous; a 2xx is taken
as the batch accepted), and a deletion endpoint: an erased profile cannot be erased
in the CDP through this API, so its change is dead-lettered for an operator.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from typing import Final

import orjson

from services.core.api_client import ApiError, ApiUnavailable
from services.core.contracts import FieldValue
from services.core.destinations import CdpDestination
from services.core.profile_changed import ProfileChangeKind
from services.outbound.destinations.base import ApiConnection, Delivered, Refusal, refusals
from services.outbound.outgoing import OutgoingChange

RETRY_TOO: Final = frozenset({409})
"""Statuses the CDP documents as retryable besides 429 and 5xx."""
RECORD_PATH: Final = re.compile(r"^records\[(\d+)\]")


def idempotency_key(chunk: Sequence[OutgoingChange]) -> str:
    digest = hashlib.sha256("\n".join(c.event.event_id for c in chunk).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


class Records:
    """A chunk's records, one per profile, and the changes each carries."""

    def __init__(self, settings: CdpDestination) -> None:
        self._settings = settings
        self.records: list[dict[str, FieldValue]] = []
        self.changes: list[list[OutgoingChange]] = []
        self.unsendable: list[Refusal] = []
        self._by_profile: dict[int, int] = {}

    def add(self, change: OutgoingChange) -> None:
        event = change.event
        if event.kind is ProfileChangeKind.ERASED:
            self.unsendable.append(
                Refusal(
                    change,
                    None,
                    "the CDP's public API has no deletion: erase the profile in the CDP",
                )
            )
            return
        index = self._by_profile.get(event.profile_id)
        if index is None:
            index = self._by_profile[event.profile_id] = len(self.records)
            self.records.append({})
            self.changes.append([])
        record = self.records[index]
        for identity in event.identities:
            field = self._settings.identities.get(
                identity.kind
                if identity.kind != "crm"
                else f"crm:{identity.value.split(':', 1)[0]}"
            )
            if field is not None and field not in record:
                record[field] = (
                    identity.value if identity.kind != "crm" else identity.value.split(":", 1)[1]
                )
        for name, value in change.fields.items():
            if value is not None or self._settings.send_clears:
                record[name] = value
        record.update(change.consents)
        self.changes[index].append(change)

    def without_match_key(self) -> list[Refusal]:
        """Records the CDP could not match (no value for ``match_key``), left out."""
        key = self._settings.match_key
        left: list[Refusal] = []
        for index in reversed(range(len(self.records))):
            if self.records[index].get(key) is None:
                left += [
                    Refusal(change, None, f"the profile has no {key} to match its CDP row by")
                    for change in self.changes[index]
                ]
                del self.records[index], self.changes[index]
        return left


def record_index(answer: str) -> int | None:
    """The record an error answer names (``error.details.path``), if any."""
    try:
        path = orjson.loads(answer)["error"]["details"]["path"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    found = RECORD_PATH.match(str(path))
    return int(found.group(1)) if found else None


class CdpRecords:
    def __init__(self, name: str, settings: CdpDestination) -> None:
        self.name = name
        self.batch_size = settings.batch_size
        self._settings = settings
        self._path = f"records/{settings.object_name}/upsert-batch"
        self._api = ApiConnection(
            name, settings.api, is_throttled=lambda status, _body: status in RETRY_TOO
        )

    async def open(self) -> None:
        await self._api.open()

    async def send(self, chunk: Sequence[OutgoingChange]) -> Delivered:
        records = Records(self._settings)
        for change in chunk:
            records.add(change)
        refused = records.unsendable + records.without_match_key()
        while records.records:
            sending = [change for changes in records.changes for change in changes]
            try:
                await self._post(records.records, idempotency_key(sending))
            except ApiUnavailable:
                raise  # not taken: the loop sends it again
            except ApiError as exc:
                index = record_index(exc.detail)
                if index is None or index >= len(records.records):
                    return Delivered(refused + refusals(exc, sending))
                refused += refusals(exc, records.changes[index])
                del records.records[index], records.changes[index]
                continue
            break
        return Delivered(refused)

    async def _post(self, records: list[dict[str, FieldValue]], key: str) -> None:
        await self._api.client.request(
            "POST",
            self._path,
            json_body={"records": records, "matchKey": self._settings.match_key},
            headers={"Idempotency-Key": key},
        )

    async def close(self) -> None:
        await self._api.close()
