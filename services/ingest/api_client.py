"""Calling a CRM's REST API politely: rate limits, retries, backoff with jitter.

Every pull (poll or full sync) goes through one ``ApiClient`` per source. A request:

1. waits for a token from the source's token bucket (``max_requests_per_second``),
   so crmsync stays under the CRM's published limits instead of hitting them;
2. is sent with the source's credentials and a timeout;
3. on 429 (or the CRM's own throttling signal) waits for ``Retry-After`` when the
   CRM gives one (or its own wait header, read by the connector's ``wait_hint``),
   else backs off exponentially with full jitter, and retries;
4. on 5xx, a timeout or a dropped connection backs off the same way and retries;
5. on 401 asks the credentials to refresh once (expired OAuth tokens), then retries;
6. on any other 4xx raises ``ApiError``: retrying would not change the answer.

After ``max_attempts`` a transient failure raises ``ApiUnavailable``; the poll or
full sync that asked reports it and tries again later. Nothing here logs query
strings or headers, which may carry credentials.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import aiohttp

from services.core import metrics
from services.core.sources import ApiSettings

log = logging.getLogger(__name__)

RETRY_AFTER_CAP_S: Final = 600.0
RETRYABLE_STATUS: Final = frozenset({500, 502, 503, 504})

Sleep = Callable[[float], Awaitable[None]]
ThrottleCheck = Callable[[int, bytes], bool]
WaitHint = Callable[[Mapping[str, str]], float | None]
"""A vendor's own "retry in N seconds" header, read when ``Retry-After`` is absent."""


class ApiError(Exception):
    """The CRM refused the request for a reason a retry would not change."""

    def __init__(self, *, status: int, path: str, detail: str) -> None:
        self.status = status
        self.path = path
        self.detail = detail
        super().__init__(f"{status} from {path}: {detail}")


class ApiUnavailable(ApiError):
    """The CRM kept failing transiently (5xx, 429, timeouts) through every attempt."""


class Credentials(Protocol):
    async def headers(self) -> Mapping[str, str]:
        """Headers that authenticate a request."""

    async def refresh(self) -> bool:
        """Get fresh credentials after a 401; False when there is nothing to refresh."""


class StaticBearer:
    def __init__(self, token: str | None) -> None:
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def headers(self) -> Mapping[str, str]:
        return self._headers

    async def refresh(self) -> bool:
        return False


@dataclass(frozen=True)
class ApiResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ApiError(status=self.status, path="", detail=f"not JSON: {exc}") from None


class TokenBucket:
    """At most ``rate`` requests per second on average, bursts of up to ``burst``."""

    def __init__(self, *, rate: float, burst: float | None = None, sleep: Sleep) -> None:
        self._rate = rate
        self._capacity = burst if burst is not None else max(1.0, rate)
        self._tokens = self._capacity
        self._updated = time.monotonic()
        self._sleep = sleep
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(
                    self._capacity, self._tokens + (now - self._updated) * self._rate
                )
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await self._sleep((1 - self._tokens) / self._rate)


def retry_after_seconds(value: str | None, *, now: datetime) -> float | None:
    """``Retry-After`` as delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - now).total_seconds()), RETRY_AFTER_CAP_S)


class ApiClient:
    def __init__(
        self,
        *,
        source: str,
        settings: ApiSettings,
        session: aiohttp.ClientSession,
        credentials: Credentials,
        is_throttled: ThrottleCheck | None = None,
        wait_hint: WaitHint | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self.base_url = settings.base_url.rstrip("/")
        self._settings = settings
        self._session = session
        self._credentials = credentials
        self._is_throttled = is_throttled or (lambda _status, _body: False)
        self._wait_hint = wait_hint or (lambda _headers: None)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._bucket = TokenBucket(rate=settings.max_requests_per_second, sleep=sleep)
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_seconds)

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return f"{self.base_url}/{path_or_url.lstrip('/')}"

    async def get_json(self, path: str, *, params: Mapping[str, str] | None = None) -> Any:
        return (await self.request("GET", path, params=params)).json()

    async def post_json(
        self, path: str, *, body: Any, params: Mapping[str, str] | None = None
    ) -> Any:
        return (await self.request("POST", path, params=params, json_body=body)).json()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> ApiResponse:
        shown = path.split("?", 1)[0]  # never log a query string: it may hold a key
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            # Step 1
            await self._bucket.acquire()
            # Step 2
            try:
                response = await self._send(method, path, params, json_body, headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason, wait = f"{type(exc).__name__}", None
            else:
                metrics.API_REQUESTS.labels(self.source, str(response.status)).inc()
                if response.status < 400:
                    return response
                # Step 5
                if response.status == 401 and not refreshed:
                    refreshed = True
                    try:
                        renewed = await self._credentials.refresh()
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        # The token endpoint is down: a transient failure like any other.
                        raise ApiUnavailable(
                            status=503, path=shown, detail=f"credentials refresh failed: {exc}"
                        ) from exc
                    if renewed:
                        continue
                # Steps 3 and 4
                throttled = response.status == 429 or self._is_throttled(
                    response.status, response.body
                )
                if not throttled and response.status not in RETRYABLE_STATUS:
                    # Step 6
                    raise ApiError(
                        status=response.status, path=shown, detail=_excerpt(response.body)
                    )
                reason = "throttled" if throttled else f"http {response.status}"
                wait = retry_after_seconds(
                    response.headers.get("Retry-After"), now=datetime.now(UTC)
                )
                if wait is None and throttled:
                    hint = self._wait_hint(response.headers)
                    wait = min(max(0.0, hint), RETRY_AFTER_CAP_S) if hint is not None else None
            if attempt >= self._settings.max_attempts:
                raise ApiUnavailable(
                    status=503, path=shown, detail=f"{reason} after {attempt} attempts"
                )
            delay = wait if wait is not None else self._backoff(attempt)
            metrics.API_RETRIES.labels(self.source, reason.split()[0]).inc()
            log.info(
                "retrying source=%s path=%s reason=%s attempt=%s delay=%.2fs",
                self.source,
                shown,
                reason,
                attempt,
                delay,
            )
            await self._sleep(delay)

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        json_body: Any,
        headers: Mapping[str, str] | None,
    ) -> ApiResponse:
        all_headers = {"Accept": "application/json", **(await self._credentials.headers())}
        if headers:
            all_headers.update(headers)
        async with self._session.request(
            method,
            self.url(path),
            params=params,
            json=json_body,
            headers=all_headers,
            timeout=self._timeout,
        ) as response:
            body = await response.read()
            return ApiResponse(status=response.status, headers=response.headers, body=body)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2^(attempt-1))]."""
        ceiling = min(
            self._settings.backoff_max_seconds,
            self._settings.backoff_initial_seconds * 2 ** (attempt - 1),
        )
        return self._rng.uniform(0, ceiling)


def _excerpt(body: bytes, limit: int = 300) -> str:
    return body[:limit].decode("utf-8", errors="replace")
