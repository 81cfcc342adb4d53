"""The API client against a scripted local HTTP server: retries, backoff, Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.core.api_client import (
    ApiClient,
    ApiError,
    ApiUnavailable,
    StaticBearer,
)
from services.core.sources.common import ApiSettings

pytestmark = pytest.mark.unit

Script = list[Callable[[web.Request], web.Response]]


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.requests: list[web.Request] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[TestServer, Script, Recorder]]:
    script: Script = []
    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        recorder.requests.append(request)
        return script.pop(0)(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    test_server = TestServer(app)
    await test_server.start_server()
    yield test_server, script, recorder
    await test_server.close()


def client(
    test_server: TestServer, session: httpx.AsyncClient, recorder: Recorder, **settings: object
) -> ApiClient:
    values: dict[str, object] = {
        "base_url": str(test_server.make_url("/")),
        "max_requests_per_second": 1000.0,
        "max_attempts": 4,
        "backoff_initial_seconds": 1.0,
        "backoff_max_seconds": 8.0,
    }
    values.update(settings)
    return ApiClient(
        source="crm",
        settings=ApiSettings.model_validate(values),
        session=session,
        credentials=StaticBearer("t0ken"),
        sleep=recorder.sleep,
    )


def ok(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def status(code: int, **headers: str) -> Callable[[web.Request], web.Response]:
    return lambda _request: web.json_response({"error": code}, status=code, headers=headers)


@pytest.mark.asyncio
async def test_success_sends_the_bearer_token(
    server: tuple[TestServer, Script, Recorder],
) -> None:
    test_server, script, recorder = server
    script.append(ok)
    async with httpx.AsyncClient() as session:
        assert await client(test_server, session, recorder).get_json("/x") == {"ok": True}
    assert recorder.requests[0].headers["Authorization"] == "Bearer t0ken"
    assert recorder.sleeps == []


@pytest.mark.asyncio
async def test_429_waits_for_retry_after_then_succeeds(
    server: tuple[TestServer, Script, Recorder],
) -> None:
    test_server, script, recorder = server
    script += [status(429, **{"Retry-After": "3"}), ok]
    async with httpx.AsyncClient() as session:
        assert await client(test_server, session, recorder).get_json("/x") == {"ok": True}
    assert recorder.sleeps == [3.0]


@pytest.mark.asyncio
async def test_5xx_backs_off_with_jitter_below_an_exponential_ceiling(
    server: tuple[TestServer, Script, Recorder],
) -> None:
    test_server, script, recorder = server
    script += [status(502), status(503), status(500), ok]
    async with httpx.AsyncClient() as session:
        assert await client(test_server, session, recorder).get_json("/x") == {"ok": True}
    assert len(recorder.sleeps) == 3
    for attempt, slept in enumerate(recorder.sleeps, start=1):
        assert 0 <= slept <= min(8.0, 2 ** (attempt - 1))


@pytest.mark.asyncio
async def test_gives_up_after_max_attempts(server: tuple[TestServer, Script, Recorder]) -> None:
    test_server, script, recorder = server
    script += [status(503)] * 4
    async with httpx.AsyncClient() as session:
        with pytest.raises(ApiUnavailable, match="http 503 after 4 attempts"):
            await client(test_server, session, recorder).get_json("/x")
    assert len(recorder.sleeps) == 3


@pytest.mark.asyncio
async def test_other_4xx_is_not_retried(server: tuple[TestServer, Script, Recorder]) -> None:
    test_server, script, recorder = server
    script.append(status(400))
    async with httpx.AsyncClient() as session:
        with pytest.raises(ApiError) as caught:
            await client(test_server, session, recorder).get_json("/x?api_token=secret")
    assert caught.value.status == 400
    assert "secret" not in str(caught.value)
    assert recorder.sleeps == []


@pytest.mark.asyncio
async def test_vendor_throttling_signal_is_retried(
    server: tuple[TestServer, Script, Recorder],
) -> None:
    test_server, script, recorder = server
    script += [
        lambda _r: web.json_response([{"errorCode": "REQUEST_LIMIT_EXCEEDED"}], status=403),
        ok,
    ]
    async with httpx.AsyncClient() as session:
        api = client(test_server, session, recorder)
        api._is_throttled = lambda code, body: code == 403 and b"REQUEST_LIMIT_EXCEEDED" in body
        assert await api.get_json("/x") == {"ok": True}
    assert len(recorder.sleeps) == 1


@pytest.mark.asyncio
async def test_a_vendor_wait_header_is_honoured_without_retry_after(
    server: tuple[TestServer, Script, Recorder],
) -> None:
    test_server, script, recorder = server
    script += [status(429, **{"x-ratelimit-reset": "2"}), ok]
    async with httpx.AsyncClient() as session:
        api = client(test_server, session, recorder)
        api._wait_hint = lambda headers: float(headers["x-ratelimit-reset"])
        assert await api.get_json("/x") == {"ok": True}
    assert recorder.sleeps == [2.0]


class RefreshingToken:
    """Credentials whose refresh hands out the next token, counting refreshes."""

    def __init__(self) -> None:
        self.token = "old"
        self.refreshes = 0

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def refresh(self) -> bool:
        self.refreshes += 1
        self.token = f"new{self.refreshes}"
        return True


@pytest.mark.asyncio
async def test_a_401_refreshes_the_credentials_once_and_goes_again_at_once(
    server: tuple[TestServer, Script, Recorder],
) -> None:
    test_server, script, recorder = server
    script += [status(401), ok]
    credentials = RefreshingToken()
    async with httpx.AsyncClient() as session:
        api = client(test_server, session, recorder)
        api._credentials = credentials
        assert await api.get_json("/x") == {"ok": True}
    assert credentials.refreshes == 1
    assert [r.headers["Authorization"] for r in recorder.requests] == [
        "Bearer old",
        "Bearer new1",
    ]
    assert recorder.sleeps == [0.0]


@pytest.mark.asyncio
async def test_a_second_401_after_a_refresh_is_the_answer(
    server: tuple[TestServer, Script, Recorder],
) -> None:
    test_server, script, recorder = server
    script += [status(401), status(401)]
    credentials = RefreshingToken()
    async with httpx.AsyncClient() as session:
        api = client(test_server, session, recorder)
        api._credentials = credentials
        with pytest.raises(ApiError) as caught:
            await api.get_json("/x")
    assert caught.value.status == 401
    assert not isinstance(caught.value, ApiUnavailable)
    assert credentials.refreshes == 1
    assert len(recorder.requests) == 2


@pytest.mark.asyncio
async def test_requests_keep_to_the_rate_limit(
    server: tuple[TestServer, Script, Recorder],
) -> None:
    test_server, script, recorder = server
    script += [ok] * 6
    async with httpx.AsyncClient() as session:
        api = client(test_server, session, recorder, max_requests_per_second=20.0)
        # A burst of 20 is allowed at once; the limiter holds the rest to 20 a second,
        # so 40 more requests take about 2 s. Fewer here: 6 after draining the burst.
        loop = asyncio.get_running_loop()
        for _ in range(20):
            async with api._limit:
                pass
        started = loop.time()
        for _ in range(6):
            await api.get_json("/x")
        elapsed = loop.time() - started
    assert elapsed >= 0.25  # 6 requests at 20/s after an empty bucket: about 0.3 s
