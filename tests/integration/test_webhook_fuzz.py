"""Thousands of malformed bodies at a real ingest: every one answered, never a 5xx.

Bodies come from hypothesis: raw bytes, text, JSON documents of every shape (wrong
types, huge numbers, deep nesting, odd keys) and, for Salesforce, SOAP-ish XML, sent
to every kind of webhook with valid credentials (signed for HubSpot) so they reach
the parsers. Anything the sender can send must get a 2xx or a 4xx that
names the problem, and the service must stay up.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest.connectors.hubspot.push import v3_signature
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
        self.port = port
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


FUZZ_SECRET = "fuzz-secret-3c9a"
BASIC = "Basic " + base64.b64encode(f"fuzz:{FUZZ_SECRET}".encode()).decode()
SALESFORCE_ORG = "00D5g000004Fa1bEAC"

# Every kind of webhook the connectors take, each with valid credentials, so that
# the fuzzed bodies reach each parser.
FUZZ_SOURCES: dict[str, dict[str, Any]] = {
    "open": {
        "kind": "generic_webhook",
        "auth": {"kind": "none"},
        "event_id_field": "id",
        "deleted_field": "nested",
    },
    "hubspot": {
        "kind": "hubspot",
        "webhooks": {"client_secret": {"env": "CRMSYNC_FUZZ_SECRET"}},
    },
    "pipedrive": {
        "kind": "pipedrive",
        "webhooks": {"username": "fuzz", "password": {"env": "CRMSYNC_FUZZ_SECRET"}},
    },
    "s360": {"kind": "s360", "auth": {"login": "fuzz", "password": {"env": "CRMSYNC_FUZZ_SECRET"}}},
    "salesforce": {
        "kind": "salesforce",
        "outbound_messages": {
            "organization_id": SALESFORCE_ORG,
            "token": {"env": "CRMSYNC_FUZZ_SECRET"},
        },
    },
}


def credentials(source: str, *, port: int, body: bytes) -> tuple[str, dict[str, str]]:
    """The path and headers that authenticate ``body`` for ``source``."""
    path = f"/webhooks/{source}"
    headers = {"Content-Type": "application/json"}
    if source == "demo":
        headers["Authorization"] = f"Bearer {DEMO_TOKEN}"
    elif source == "hubspot":
        stamp = str(int(time.time() * 1000))
        url = f"http://127.0.0.1:{port}{path}"
        headers["X-HubSpot-Request-Timestamp"] = stamp
        headers["X-HubSpot-Signature-v3"] = v3_signature(
            FUZZ_SECRET, method="POST", url=url, body=body, timestamp=stamp
        )
    elif source in ("pipedrive", "s360"):
        headers["Authorization"] = BASIC
    elif source == "salesforce":
        path += f"?token={FUZZ_SECRET}"
        headers["Content-Type"] = "text/xml; charset=utf-8"
    return path, headers


@pytest.fixture(scope="module")
def fuzz_target(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    os.environ["CRMSYNC_FUZZ_SECRET"] = FUZZ_SECRET
    stack = Stack(
        bootstrap=kafka_bootstrap,
        workdir=tmp_path_factory.mktemp("fuzz"),
        sources=FUZZ_SOURCES,
    )
    stack.start("ingest")
    client = Client(stack["ingest"].port)
    try:
        yield client
    finally:
        assert stack["ingest"].process is not None
        assert stack["ingest"].process.poll() is None, "ingest died during the fuzzing"
        stack.stop()
        del os.environ["CRMSYNC_FUZZ_SECRET"]
        print(f"fuzz answers by status: {dict(sorted(client.answers.items()))}")


XML_BODIES = st.one_of(
    st.text(max_size=200).map(lambda t: f"<notifications>{t}</notifications>".encode()),
    st.builds(
        lambda org, inner: (
            '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv='
            '"http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notifications '
            f'xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{org}'
            f"</OrganizationId>{inner}</notifications></soapenv:Body></soapenv:Envelope>"
        ).encode(),
        st.sampled_from([SALESFORCE_ORG, "00Dxx", ""]),
        st.text(max_size=120),
    ),
)


@settings(max_examples=2000, suppress_health_check=list(HealthCheck), deadline=None)
@given(data=st.data(), source=st.sampled_from(["demo", *FUZZ_SOURCES]))
def test_every_malformed_body_gets_a_clear_answer(
    fuzz_target: Client, data: st.DataObject, source: str
) -> None:
    strategy = st.one_of(BODIES, XML_BODIES) if source == "salesforce" else BODIES
    body = data.draw(strategy)
    path, headers = credentials(source, port=fuzz_target.port, body=body)
    status, answer = fuzz_target.post(path, body, headers)
    assert status < 500, (source, status, answer)
    if status >= 400:
        assert answer["error"], answer
