"""A generic destination: any HTTP endpoint, sent Standard Webhooks.

Each chunk of changes is one POST of a JSON message, signed as Standard Webhooks 1.0
prescribes (services/core/standard_webhooks.py):

    {"type": "profile.changed", "timestamp": "<ISO 8601>",
     "data": {"changes": [{"event_id", "profile_id", "kind", "source", "record_id",
       "source_modified_at", "identities", "identities_added", "identities_removed",
       "merged_profile_ids", "fields", "previous", "consents"}, ...]}}

``webhook-id`` is derived from the chunk's event ids, so a chunk sent again (a retry,
or a redelivery after a restart) carries the same id and the receiver can drop it;
``webhook-timestamp`` is the time of the attempt. A 2xx is delivery; a 429 or 5xx (or
no answer) is retried with backoff, honouring Retry-After (services/core/api_client.py);
any other status refuses the whole chunk, each change dead-lettered with the answer.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from services.core.api_client import ApiError, ApiUnavailable
from services.core.destinations import WebhookDestination
from services.core.standard_webhooks import signed_headers, signing_key
from services.outbound.destinations.base import ApiConnection, Delivered, refusals
from services.outbound.outgoing import OutgoingChange

MESSAGE_TYPE: Final = "profile.changed"


def message_id(chunk: Sequence[OutgoingChange]) -> str:
    """The same for the same changes, whenever they are sent."""
    digest = hashlib.sha256("\n".join(c.event.event_id for c in chunk).encode()).hexdigest()
    return f"msg_{digest[:32]}"


def change_json(change: OutgoingChange) -> dict[str, Any]:
    event = change.event
    return {
        "event_id": event.event_id,
        "profile_id": event.profile_id,
        "kind": event.kind.value.lower(),
        "source": event.source,
        "record_id": event.record_id,
        "source_modified_at": event.source_modified_at.isoformat(),
        "identities": [f"{i.kind}:{i.value}" for i in event.identities],
        "identities_added": [f"{i.kind}:{i.value}" for i in event.identities_added],
        "identities_removed": [f"{i.kind}:{i.value}" for i in event.identities_removed],
        "merged_profile_ids": list(event.merged_profile_ids),
        "fields": change.fields,
        "previous": change.previous,
        "consents": change.consents,
    }


def message_body(chunk: Sequence[OutgoingChange], *, now: datetime) -> bytes:
    return orjson.dumps(
        {
            "type": MESSAGE_TYPE,
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "data": {"changes": [change_json(c) for c in chunk]},
        }
    )


class StandardWebhook:
    def __init__(self, name: str, settings: WebhookDestination) -> None:
        self.name = name
        self.batch_size = settings.batch_size
        self._settings = settings
        self._key = signing_key(settings.secret.resolve())
        self._api = ApiConnection(name, settings.api)

    async def open(self) -> None:
        await self._api.open()

    async def send(self, chunk: Sequence[OutgoingChange]) -> Delivered:
        body = message_body(chunk, now=datetime.now(UTC))
        headers = {
            "Content-Type": "application/json",
            **signed_headers(
                self._key, message_id=message_id(chunk), timestamp=int(time.time()), body=body
            ),
        }
        try:
            await self._api.client.request(
                "POST", self._settings.api.base_url, content=body, headers=headers
            )
        except ApiUnavailable:
            raise  # not taken: the loop sends it again
        except ApiError as exc:
            return Delivered(refusals(exc, chunk))
        return Delivered()

    async def close(self) -> None:
        await self._api.close()
