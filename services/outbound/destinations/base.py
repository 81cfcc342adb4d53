"""What every destination does: take a chunk of outgoing changes, say which it refused.

A destination sends changes in chunks of at most ``batch_size`` (its vendor's limit).
``send`` says what became of them (``Delivered``): the changes the destination refused,
with its answer: a refusal a retry would not change (a 4xx), which the delivery loop
dead-letters; and the ids the destination gave profiles it created (a new CRM
contact), which the loop stores as the profiles' identities so that the system's
later webhooks and polls find the same profile. A destination
that does not take the chunk at all (down, throttled past its retries, no answer)
raises ``ApiUnavailable``: the loop waits and sends the same chunk again, skipping
nothing. So does one that refuses crmsync's credentials (401, 403): every change would
meet that answer, so it is an outage to fix, not a verdict on the changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import httpx

from services.core.api_client import (
    ApiClient,
    ApiError,
    ApiUnavailable,
    Credentials,
    StaticBearer,
    ThrottleCheck,
    WaitHint,
)
from services.core.http import async_client
from services.core.sources.common import ApiSettings
from services.outbound.dry_run import RECORDER
from services.outbound.outgoing import OutgoingChange

CREDENTIALS_REFUSED: Final = frozenset({401, 403})
RECORD_REFUSED: Final = 400
"""The status a record refused inside an accepted batch is dead-lettered with (the
batch's own answer is a 200 or 207): what the vendor answers a single record for it."""


@dataclass(frozen=True)
class Refusal:
    change: OutgoingChange
    status: int | None
    """The destination's HTTP status; None for a change crmsync could not send at all."""
    answer: str
    """What the destination said (an excerpt of its response body), or why not sent."""


@dataclass
class Delivered:
    refused: list[Refusal] = field(default_factory=list)
    assigned: dict[int, str] = field(default_factory=dict)
    """Profile id -> the record id the destination holds it under, for the profiles
    it created or first reported an id for (the loop links the ones not yet known)."""


def refusals(error: ApiError, chunk: Sequence[OutgoingChange]) -> list[Refusal]:
    """Every change of ``chunk`` refused with the destination's answer; raises
    ApiUnavailable when the answer refuses the credentials instead."""
    if error.status in CREDENTIALS_REFUSED:
        raise ApiUnavailable(
            status=error.status, path=error.path, detail=f"credentials refused: {error.detail}"
        ) from error
    return [Refusal(change, error.status, error.detail) for change in chunk]


class Destination(Protocol):
    name: str
    batch_size: int

    async def open(self) -> None:
        """Connect (inside the event loop that will send)."""

    async def send(self, chunk: Sequence[OutgoingChange]) -> Delivered:
        """Deliver ``chunk``: the refused changes and the ids assigned. Raises
        ApiUnavailable when the destination did not take it."""

    async def close(self) -> None: ...


class ApiConnection:
    """A destination's API client, opened in the event loop that sends (its pooled
    connections belong to that loop). Credentials: the settings' token as a bearer
    unless the vendor authenticates otherwise (``credentials``)."""

    def __init__(
        self,
        name: str,
        settings: ApiSettings,
        *,
        is_throttled: ThrottleCheck | None = None,
        wait_hint: WaitHint | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self._name = name
        self._settings = settings
        self._is_throttled = is_throttled
        self._wait_hint = wait_hint
        self._credentials = credentials
        self._session: httpx.AsyncClient | None = None
        self._client: ApiClient | None = None

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            raise RuntimeError(f"destination {self._name} not opened")
        return self._client

    async def open(self) -> None:
        api = self._settings
        credentials: Credentials
        recorder = RECORDER.get()
        if recorder is not None:
            # A dry run (services/outbound/dry_run.py): nothing sent, no token fetched.
            self._session = recorder.session(api.timeout_seconds)
            credentials = StaticBearer(None)
        else:
            self._session = async_client(timeout_s=api.timeout_seconds)
            credentials = self._credentials or StaticBearer(
                api.token.resolve() if api.token is not None else None
            )
        self._client = ApiClient(
            source=self._name,
            settings=api,
            session=self._session,
            credentials=credentials,
            is_throttled=self._is_throttled,
            wait_hint=self._wait_hint,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.aclose()
