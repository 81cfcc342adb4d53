"""The one outbound HTTP client (services/core/http.py), against a local HTTP server:
it names itself, keeps the caller's headers and base URL, bounds each phase by the
timeout, and "no answer" is the one kind of failure it calls transient."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

from services.core.http import TRANSIENT, USER_AGENT, async_client, client

pytestmark = pytest.mark.unit


class Echo(BaseHTTPRequestHandler):
    """Answers with the request's headers; /slow waits first."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(1.0)
        Echo.seen.append(dict(self.headers.items()))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def base_url() -> Iterator[str]:
    Echo.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_client_names_itself_and_keeps_the_callers_headers(base_url: str) -> None:
    assert USER_AGENT.startswith("crmsync")
    with client(timeout_s=5, base_url=base_url, headers={"Authorization": "Bearer t"}) as http:
        assert http.get("/x").json() == {"ok": True}
    assert Echo.seen[0]["User-Agent"] == USER_AGENT
    assert Echo.seen[0]["Authorization"] == "Bearer t"


def test_the_async_client_is_the_same_client(base_url: str) -> None:
    async def call() -> int:
        async with async_client(timeout_s=5, headers={"X-Trace": "1"}) as http:
            return (await http.get(f"{base_url}/x")).status_code

    assert asyncio.run(call()) == 200
    assert Echo.seen[0]["User-Agent"] == USER_AGENT
    assert Echo.seen[0]["X-Trace"] == "1"


def test_no_answer_is_transient_and_the_timeout_bounds_a_wait(base_url: str) -> None:
    with client(timeout_s=0.2) as http:
        with pytest.raises(TRANSIENT) as refused:
            http.get(f"http://127.0.0.1:{closed_port()}/")
        assert isinstance(refused.value, httpx.ConnectError)
        started = time.monotonic()
        with pytest.raises(TRANSIENT) as slow:
            http.get(f"{base_url}/slow")
        assert isinstance(slow.value, httpx.ReadTimeout)
        assert time.monotonic() - started < 0.9
