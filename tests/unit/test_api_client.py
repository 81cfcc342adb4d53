"""The API client against a scripted local HTTP server: retries, backoff, Retry-After."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.core.sources import ApiSettings
from services.ingest.api_client import (
    ApiClient,
    ApiError,
    ApiUnavailable,
    StaticBearer,
    retry_after_seconds,
)

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
    test_server: TestServer, session: aiohttp.ClientSession, recorder: Recorder, **settings: object
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
        rng=random.Random(7),
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
    async with aiohttp.ClientSession() as session:
        assert await client(test_server, session, recorder).get_json("/x") == {"ok": True}
    assert recorder.requests[0].headers["Authorization"] == "Bearer t0ken"
    assert recorder.sleeps == []


@pytest.mark.asyncio
async def test_429_waits_for_retry_after_then_succeeds(
    server: tuple[TestServer, Script, Recorder],
) -> None:
    test_server, script, recorder = server
    script += [status(429, **{"Retry-After": "3"}), ok]
    async with aiohttp.ClientSession() as session:
        assert await client(test_server, session, recorder).get_json("/x") == {"ok": True}
    assert recorder.sleeps == [3.0]


@pytest.mark.asyncio
async def test_5xx_backs_off_with_jitter_below_an_exponential_ceiling(
    server: tuple[TestServer, Script, Recorder],
) -> None:
    test_server, script, recorder = server
    script += [status(502), status(503), status(500), ok]
    async with aiohttp.ClientSession() as session:
        assert await client(test_server, session, recorder).get_json("/x") == {"ok": True}
    assert len(recorder.sleeps) == 3
    for attempt, slept in enumerate(recorder.sleeps, start=1):
        assert 0 <= slept <= min(8.0, 2 ** (attempt - 1))


@pytest.mark.asyncio
async def test_gives_up_after_max_attempts(server: tuple[TestServer, Script, Recorder]) -> None:
    test_server, script, recorder = server
    script += [status(503)] * 4
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ApiUnavailable, match="http 503 after 4 attempts"):
            await client(test_server, session, recorder).get_json("/x")
    assert len(recorder.sleeps) == 3


@pytest.mark.asyncio
async def test_other_4xx_is_not_retried(server: tuple[TestServer, Script, Recorder]) -> None:
    test_server, script, recorder = server
    script.append(status(400))
    async with aiohttp.ClientSession() as session:
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
    async with aiohttp.ClientSession() as session:
        api = client(test_server, session, recorder)
        api._is_throttled = lambda code, body: code == 403 and b"REQUEST_LIMIT_EXCEEDED" in body
        assert await api.get_json("/x") == {"ok": True}
    assert len(recorder.sleeps) == 1


def test_retry_after_forms() -> None:
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now=now) == 7.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30)), now=now) == 30.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=30)), now=now) == 0.0
    assert retry_after_seconds("99999", now=now) == 600.0
    assert retry_after_seconds("soon", now=now) is None
    assert retry_after_seconds(None, now=now) is None


@pytest.mark.asyncio
async def test_a_vendor_wait_header_is_honoured_without_retry_after(
    server: tuple[TestServer, Script, Recorder],
) -> None:
    test_server, script, recorder = server
    script += [status(429, **{"x-ratelimit-reset": "2"}), ok]
    async with aiohttp.ClientSession() as session:
        api = client(test_server, session, recorder)
        api._wait_hint = lambda headers: float(headers["x-ratelimit-reset"])
        assert await api.get_json("/x") == {"ok": True}
    assert recorder.sleeps == [2.0]
