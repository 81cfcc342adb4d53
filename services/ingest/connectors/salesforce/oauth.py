"""Salesforce OAuth 2.0 access tokens (client credentials or refresh token), renewed
when the API answers 401."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any, Final

from services.core.api_client import ApiError
from services.core.http import TRANSIENT, async_client
from services.core.retry import RetryLater, retry_after_seconds
from services.core.sources.salesforce import (
    TOKEN_PATH,
    SalesforceOAuth,
)

log = logging.getLogger(__name__)

TRANSIENT_TOKEN_STATUS: Final = frozenset({429, 500, 502, 503, 504})


class TokenUnavailable(RetryLater):
    """The token endpoint could not hand out a token just now (throttled or failing)."""


class OAuthSession:
    """Access tokens from ``/services/oauth2/token``, obtained on first use and again
    after the API answered 401 (``ApiClient`` calls ``refresh``): Salesforce's token
    answer has no lifetime, a session ends by the org's timeout policy.

    A token endpoint failure that may pass (429, 5xx, a dropped connection) is a
    ``RetryLater``, which ``ApiClient`` retries with backoff; refused
    credentials are an ``ApiError`` that fails the poll with Salesforce's error code.
    """

    def __init__(
        self,
        *,
        settings: SalesforceOAuth,
        token_url: str,
        timeout_seconds: float,
    ) -> None:
        self._grant = settings.grant_type
        self._form = {"grant_type": settings.grant_type, "client_id": settings.client_id}
        # Resolved once; kept only in this form, never logged.
        self._form["client_secret"] = settings.client_secret.resolve()
        if settings.refresh_token is not None:
            self._form["refresh_token"] = settings.refresh_token.resolve()
        self._url = token_url
        self._timeout_s = timeout_seconds
        self._token: str | None = None
        self._lock = asyncio.Lock()

    async def headers(self) -> Mapping[str, str]:
        async with self._lock:
            if self._token is None:
                await self._obtain()
            return {"Authorization": f"Bearer {self._token}"}

    async def refresh(self) -> bool:
        # The token is only dropped here: the retried request's ``headers`` obtains the
        # next one, where ``ApiClient`` retries a token endpoint that is failing. (When
        # two requests fail at once, the second may drop a token just obtained: one
        # token request too many, never a request sent with a dead token.)
        async with self._lock:
            self._token = None
        return True

    async def _obtain(self) -> None:
        try:
            async with async_client(timeout_s=self._timeout_s) as client:
                response = await client.post(
                    self._url, data=self._form, headers={"Accept": "application/json"}
                )
        except TRANSIENT as exc:
            raise TokenUnavailable(f"{type(exc).__name__} from {TOKEN_PATH}") from exc
        status, body = response.status_code, response.content
        if status in TRANSIENT_TOKEN_STATUS:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            raise TokenUnavailable(f"{status} from {TOKEN_PATH}", retry_after_s=wait)
        document = _json_object(body)
        if status != 200:
            error = str(document.get("error", "unknown error"))[:80]
            raise ApiError(
                status=status,
                path=TOKEN_PATH,
                detail=f"Salesforce refused the {self._grant} grant: {error}",
            )
        token = document.get("access_token")
        if not isinstance(token, str) or not token:
            raise ApiError(status=200, path=TOKEN_PATH, detail="no access_token in the answer")
        rotated = document.get("refresh_token")
        if self._grant == "refresh_token" and isinstance(rotated, str) and rotated:
            # Refresh token rotation: the old token is void now. The new one lives only
            # in memory, so a restart would fail: turn rotation off for this app.
            self._form["refresh_token"] = rotated
            log.warning("salesforce rotated the refresh token; turn rotation off for crmsync")
        self._token = token
        log.info("salesforce access token obtained grant=%s", self._grant)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}
