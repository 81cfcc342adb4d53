"""Thousands of malformed bodies at a real ingest: every one answered, never a 5xx.

Bodies come from hypothesis: raw bytes, text, and JSON documents of every shape
(wrong types, huge numbers, deep nesting, odd keys), sent with valid credentials so
they reach the parsers. Anything the sender can send must get a 2xx or a 4xx that
names the problem, and the service must stay up.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.services import DEMO_TOKEN, Stack

pytestmark = pytest.mark.integration

JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
CONTACTISH = st.fixed_dictionaries(
    {},
    optional={
        "id": JSON_VALUES,
        "updated_at": st.one_of(JSON_VALUES, st.datetimes().map(lambda d: d.isoformat())),
        "email": JSON_VALUES,
        "first_name": JSON_VALUES,
        "nested": JSON_VALUES,
    },
)
BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    CONTACTISH.map(lambda v: json.dumps(v).encode()),
    st.lists(CONTACTISH, max_size=5).map(lambda v: json.dumps(v).encode()),
)


class Client:
    """Keep-alive HTTP client; reconnects if the server closes the connection."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.answers: dict[int, int] = {}

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        for _attempt in range(2):
            try:
                self._connection.request("POST", path, body=body, headers=headers)
                response = self._connection.getresponse()
                payload = response.read()
                self.answers[response.status] = self.answers.get(response.status, 0) + 1
                return response.status, json.loads(payload) if payload else None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._connection.close()
                self._connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=30)
        raise ConnectionError("ingest closed the connection twice")


@pytest.fixture(scope="module")
def fuzz_target(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    stack = Stack(
        bootstrap=kafka_bootstrap,
        workdir=tmp_path_factory.mktemp("fuzz"),
        sources={
            "open": {
                "kind": "generic_webhook",
                "auth": {"kind": "none"},
                "event_id_field": "id",
                "deleted_field": "nested",
            }
        },
    )
    stack.start("ingest")
    client = Client(stack["ingest"].port)
    try:
        yield client
    finally:
        assert stack["ingest"].process is not None
        assert stack["ingest"].process.poll() is None, "ingest died during the fuzzing"
        stack.stop()
        print(f"fuzz answers by status: {dict(sorted(client.answers.items()))}")


@settings(max_examples=2000, suppress_health_check=list(HealthCheck), deadline=None)
@given(body=BODIES, source=st.sampled_from(["demo", "open"]))
def test_every_malformed_body_gets_a_clear_answer(
    fuzz_target: Client, body: bytes, source: str
) -> None:
    status, answer = fuzz_target.post(
        f"/webhooks/{source}",
        body,
        {"Authorization": f"Bearer {DEMO_TOKEN}", "Content-Type": "application/json"},
    )
    assert status < 500, (status, answer)
    if status >= 400:
        assert answer["error"], answer
