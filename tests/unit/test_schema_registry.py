"""The schema registry adapter's answers to a registry that fails: a served HTTP
registry double speaking the Confluent API's error shapes (the real registry is in
tests/integration/test_schema_registry.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from services.core.config import SchemaRegistrySettings
from services.core.retry import RetryPolicy
from services.core.schema_registry import RegistryUnavailable, SchemaRegistry, SchemaRejected
from services.core.serde import DecodeError, schema_from_json

pytestmark = pytest.mark.unit

FAST = RetryPolicy(initial_s=0.01, max_s=0.02, attempts=3)
SCHEMA = '{"type":"record","name":"T","fields":[{"name":"a","type":"int"}]}'


class Registry(BaseHTTPRequestHandler):
    # path -> the answers still to give, in order (the last one repeats)
    script: ClassVar[dict[str, list[tuple[int, dict[str, object]]]]] = {}
    calls: ClassVar[list[str]] = []

    def _answer(self) -> None:
        # (The client adds query parameters of its own: the path alone is matched.)
        path = self.path.split("?", 1)[0]
        self.calls.append(f"{self.command} {path}")
        answers = self.script.get(path, [(404, {"error_code": 40403, "message": "no"})])
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def registry_url() -> Iterator[str]:
    Registry.script, Registry.calls = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def registry(url: str) -> SchemaRegistry:
    return SchemaRegistry(SchemaRegistrySettings(url=url), lookup_retry=FAST)


def test_a_lookup_rides_out_a_failing_registry(registry_url: str) -> None:
    Registry.script["/schemas/ids/5"] = [
        (503, {"error_code": 50301, "message": "busy"}),
        (200, {"schema": SCHEMA}),
    ]
    assert registry(registry_url).schema_json(5) == SCHEMA
    assert Registry.calls.count("GET /schemas/ids/5") == 2


def test_an_unknown_id_is_none_and_a_registry_that_stays_down_a_decode_error(
    registry_url: str,
) -> None:
    assert registry(registry_url).schema_json(6) is None
    Registry.script["/schemas/ids/7"] = [(503, {"error_code": 50301, "message": "busy"})]
    with pytest.raises(DecodeError, match="did not answer"):
        registry(registry_url).schema_json(7)
    assert Registry.calls.count("GET /schemas/ids/7") == FAST.attempts
    with pytest.raises(DecodeError, match="did not answer"):
        registry("http://127.0.0.1:1").schema_json(8)


def test_registering_tells_a_refusal_from_an_outage(registry_url: str) -> None:
    schema = schema_from_json(SCHEMA)
    path = "/subjects/t-value/versions"
    Registry.script[path] = [(409, {"error_code": 409, "message": "incompatible"})]
    with pytest.raises(SchemaRejected, match="refused T under t-value: incompatible"):
        registry(registry_url).register("t-value", schema)
    Registry.script[path] = [(503, {"error_code": 50301, "message": "busy"})]
    with pytest.raises(RegistryUnavailable):
        registry(registry_url).register("t-value", schema)
    with pytest.raises(RegistryUnavailable):
        registry("http://127.0.0.1:1").register("t-value", schema)
