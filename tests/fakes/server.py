"""What every fake CRM shares: an aiohttp server with injectable faults.

``Faults`` decides, per request, whether to answer as the vendor does under load: 429
with Retry-After above a request rate, a random 5xx, or a slow answer. Scripted
statuses answer the next requests first, for deterministic tests. ``FakeServer``
runs an app on loopback, in-process (tests) or standalone (``run_standalone``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Faults:
    max_requests_per_second: float | None = None
    retry_after_seconds: int = 1
    error_rate: float = 0.0
    delay_seconds: float = 0.0
    seed: int = 0
    scripted: deque[int] = field(default_factory=deque)
    throttle_response: Callable[[int], web.Response] | None = None
    """How this vendor answers when throttled (default: 429 + Retry-After)."""

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._recent: deque[float] = deque()

    def script(self, *statuses: int) -> None:
        self.scripted.extend(statuses)

    def decide(self) -> int | None:
        """The status to answer instead of serving, or None to serve normally."""
        if self.scripted:
            return self.scripted.popleft()
        if self.max_requests_per_second is not None:
            now = time.monotonic()
            while self._recent and now - self._recent[0] > 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.max_requests_per_second:
                return 429
            self._recent.append(now)
        if self.error_rate and self._rng.random() < self.error_rate:
            return self._rng.choice((500, 502, 503))
        return None


class FakeServer:
    def __init__(self, app: web.Application, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.statuses: Counter[int] = Counter()
        self.requests = 0
        self._app = app
        app.middlewares.append(self._middleware)
        self._runner: web.AppRunner | None = None
        self.url = ""

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests += 1
        if self.faults.delay_seconds:
            await asyncio.sleep(self.faults.delay_seconds)
        status = self.faults.decide()
        if status is None:
            response = await handler(request)
        elif status == 429 and self.faults.throttle_response is not None:
            response = self.faults.throttle_response(status)
        elif status == 429:
            response = web.json_response(
                {"status": "error", "message": "You have reached your rate limit."},
                status=429,
                headers={"Retry-After": str(self.faults.retry_after_seconds)},
            )
        else:
            response = web.json_response({"status": "error", "message": "injected"}, status=status)
        self.statuses[response.status] += 1
        return response

    async def start(self, port: int = 0) -> str:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{bound}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def standalone_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--records", type=int, default=1000, help="records to start with")
    parser.add_argument("--rate-limit", type=float, default=None, help="requests/s before 429")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of random 5xx")
    parser.add_argument("--seed", type=int, default=1)
    return parser


def run_standalone(
    server: FakeServer, port: int, *, alongside: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Serve until interrupted; print the URL as one JSON line for scripts.
    ``alongside`` runs as well, until interrupted (say, a user editing contacts)."""

    async def serve() -> None:
        url = await server.start(port)
        print(json.dumps({"url": url}), flush=True)
        if alongside is not None:
            await alongside()
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


class ServerThread:
    """A fake served from its own thread and event loop, for tests whose code under test
    runs in other processes. The test thread may change the fake's data directly."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=10)
        return self.server

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
