"""Calling a vendor's REST API politely: rate limits, retries, backoff with jitter.

Every pull (poll or full sync) goes through one ``ApiClient`` per source, and every
delivery to a destination through one per destination. A request:

1. waits for its turn under the source's rate limit (``max_requests_per_second``,
   an ``aiolimiter`` leaky bucket), so crmsync stays under the CRM's published
   limits instead of hitting them;
2. is sent with the source's credentials and a timeout;
3. on 429 (or the CRM's own throttling signal) waits for ``Retry-After`` when the
   CRM gives one (or its own wait header, read by the connector's ``wait_hint``),
   else backs off exponentially with full jitter, and retries (the one retry policy,
   ``services.core.retry``);
4. on 5xx, a timeout or a dropped connection backs off the same way and retries;
5. on 401 asks the credentials to refresh once (expired OAuth tokens), then retries;
6. on any other 4xx raises ``ApiError``: retrying would not change the answer.

After ``max_attempts`` a transient failure raises ``ApiUnavailable``; the poll or
full sync that asked reports it and tries again later. Nothing here logs query
strings or headers, which may carry credentials.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx
from aiolimiter import AsyncLimiter

from services.core import metrics
from services.core.http import TRANSIENT
from services.core.retry import (
    BeforeSleep,
    RetryLater,
    RetryPolicy,
    RetryState,
    failure_of,
    next_wait_s,
    retry_after_seconds,
)
from services.core.sources.common import ApiSettings

log = logging.getLogger(__name__)

RETRYABLE_STATUS: Final = frozenset({500, 502, 503, 504})
# A credentials refresh that failed this way may pass (the token endpoint is down).
TOKEN_FAILURES: Final[tuple[type[Exception], ...]] = (*TRANSIENT, RetryLater)

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


def rate_limit(per_second: float) -> AsyncLimiter:
    """At most ``per_second`` requests a second on average, in bursts of up to
    ``max(1, per_second)``: the one rate limiter of outbound calls."""
    burst = max(1.0, per_second)
    return AsyncLimiter(burst, time_period=burst / per_second)


@dataclass(frozen=True)
class _Call:
    """One request as the caller asked for it, tried once or more."""

    method: str
    path: str
    params: Mapping[str, str] | None
    json_body: Any
    headers: Mapping[str, str] | None
    content: bytes | None = None
    """A body sent as these exact bytes (one that is signed), instead of ``json_body``."""

    @property
    def shown(self) -> str:
        """The path as logs and errors show it: never a query string, which may hold
        a key."""
        return self.path.split("?", 1)[0]


class _Refreshed(RetryLater):
    """Credentials were refreshed after a 401: the request goes again at once."""


class ApiClient:
    def __init__(
        self,
        *,
        source: str,
        settings: ApiSettings,
        session: httpx.AsyncClient,
        credentials: Credentials,
        is_throttled: ThrottleCheck | None = None,
        wait_hint: WaitHint | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.source = source
        self.base_url = settings.base_url.rstrip("/")
        self._settings = settings
        self._session = session
        self._credentials = credentials
        self._is_throttled = is_throttled or (lambda _status, _body: False)
        self._wait_hint = wait_hint or (lambda _headers: None)
        self._sleep = sleep
        self._limit = rate_limit(settings.max_requests_per_second)
        self._policy = RetryPolicy(
            initial_s=settings.backoff_initial_seconds,
            max_s=settings.backoff_max_seconds,
            attempts=settings.max_attempts,
        )
        self._timeout_s = settings.timeout_seconds

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
        content: bytes | None = None,
    ) -> ApiResponse:
        call = _Call(method, path, params, json_body, headers, content)
        shown = call.shown
        refreshed = False
        try:
            async for attempt in self._policy.retrying_async(
                sleep=self._sleep, before_sleep=self._log_retry(shown)
            ):
                with attempt:
                    try:
                        return await self._attempt(call, refreshed=refreshed)
                    except _Refreshed:
                        refreshed = True  # once: a second 401 is the answer
                        raise
        except _Refreshed as exc:
            raise ApiUnavailable(status=401, path=shown, detail=exc.reason) from exc
        except RetryLater as exc:
            attempts = self._settings.max_attempts
            raise ApiUnavailable(
                status=503, path=shown, detail=f"{exc.reason} after {attempts} attempts"
            ) from exc
        raise AssertionError("the retry loop ends by returning or raising")

    async def _attempt(self, call: _Call, *, refreshed: bool) -> ApiResponse:
        """One try: the answer, or RetryLater for what a retry may change (steps 3 to 5),
        or ApiError for what it would not (step 6)."""
        # Step 1
        await self._limit.acquire()
        # Step 2
        try:
            response = await self._send(call)
        except TRANSIENT as exc:
            raise RetryLater(type(exc).__name__) from exc
        metrics.API_REQUESTS.labels(self.source, str(response.status)).inc()
        if response.status < 400:
            return response
        # Step 5
        if response.status == 401 and not refreshed:
            try:
                renewed = await self._credentials.refresh()
            except TOKEN_FAILURES as exc:
                # The token endpoint is down: a transient failure like any other.
                raise ApiUnavailable(
                    status=503, path=call.shown, detail=f"credentials refresh failed: {exc}"
                ) from exc
            if renewed:
                raise _Refreshed("refreshed credentials", retry_after_s=0.0)
        # Steps 3 and 4
        throttled = response.status == 429 or self._is_throttled(response.status, response.body)
        if not throttled and response.status not in RETRYABLE_STATUS:
            # Step 6
            detail = _excerpt(response.body)
            raise ApiError(status=response.status, path=call.shown, detail=detail)
        wait = retry_after_seconds(response.headers.get("Retry-After"))
        if wait is None and throttled:
            wait = self._wait_hint(response.headers)
        reason = "throttled" if throttled else f"http {response.status}"
        raise RetryLater(reason, retry_after_s=wait)

    def _log_retry(self, shown: str) -> BeforeSleep:
        def before_sleep(state: RetryState) -> None:
            failure = failure_of(state)
            if not isinstance(failure, RetryLater) or isinstance(failure, _Refreshed):
                return
            reason = failure.reason
            metrics.API_RETRIES.labels(self.source, reason.split()[0]).inc()
            log.info(
                "retrying source=%s path=%s reason=%s attempt=%s delay=%.2fs",
                self.source,
                shown,
                reason,
                state.attempt_number,
                next_wait_s(state),
            )

        return before_sleep

    async def _send(self, call: _Call) -> ApiResponse:
        all_headers = {"Accept": "application/json", **(await self._credentials.headers())}
        if call.headers:
            all_headers.update(call.headers)
        # httpx bounds each phase; the source's timeout bounds the whole exchange.
        async with asyncio.timeout(self._timeout_s):
            response = await self._session.request(
                call.method,
                self.url(call.path),
                params=call.params,
                json=call.json_body if call.content is None else None,
                content=call.content,
                headers=all_headers,
                timeout=self._timeout_s,
            )
        return ApiResponse(
            status=response.status_code, headers=response.headers, body=response.content
        )


def _excerpt(body: bytes, limit: int = 300) -> str:
    return body[:limit].decode("utf-8", errors="replace")
