"""Running ``crmsync`` in the test process: a config file, its exit code and output, and
a stand-in for ingest's admin API served on loopback with the answers a test gives."""

from __future__ import annotations

import json
import socket
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from services.cli.main import main
from tests.fakes.server import FakeServer, ServerThread

Answer = tuple[int, dict[str, Any]]


def config_file(tmp_path: Path, more: str = "") -> Path:
    """A config whose Kafka nothing answers on, a SQLite store in ``tmp_path`` and the
    source ``demo``; ``more`` is YAML added at the top level."""
    path = tmp_path / "crmsync.yaml"
    path.write_text(
        f"""\
kafka:
  bootstrap_servers: 127.0.0.1:9
store:
  kind: sqlite
  path: {tmp_path / "profiles.db"}
sources:
  demo:
    kind: generic_webhook
    auth: {{kind: none}}
    mapping: {{email: email}}
{more}"""
    )
    return path


def closed_url() -> str:
    """A loopback URL nothing listens on: the port was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def crmsync(capsys: pytest.CaptureFixture[str], *args: str) -> Ran:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    code = exited.value.code
    assert isinstance(code, int), code
    return Ran(code, captured.out, captured.err)


@contextmanager
def ingest_admin(answers: dict[tuple[str, str], list[Answer]]) -> Iterator[FakeServer]:
    """Ingest's admin API answering each (method, path) with its answers in turn, the
    last one again once they run out; anything else 404 as ingest answers it."""
    queues = {route: deque(given) for route, given in answers.items()}

    async def answer(request: web.Request) -> web.Response:
        queue = queues.get((request.method, request.path))
        if not queue:
            return web.json_response({"error": f"no {request.path}"}, status=404)
        status, body = queue.popleft() if len(queue) > 1 else queue[0]
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    with ServerThread(FakeServer(app)) as server:
        yield server
