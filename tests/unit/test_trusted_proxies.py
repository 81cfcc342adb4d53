"""Ingest behind a TLS-terminating proxy: which URL a webhook's signature is checked against.

HubSpot v3 signs the full URL it called (https://crmsync.example.com/...), while ingest
sees the proxy's plain-HTTP request to its own address. The end-to-end cases run the
real webhook handler and HubSpot connector on aiohttp's test server, built from a
config crmsync's own loader parsed, and send HubSpot-signed requests the way a proxy
forwards them; accepted changes land in an in-memory publisher (no broker needed). The
test server's client connects from 127.0.0.1, which is the proxy's address here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.core.codecs import load_contracts
from services.core.config import ConfigError, Settings, parse_settings
from services.ingest.forwarded import Origin, is_trusted, public_origin, valid_host
from services.ingest.publisher import OutgoingMessage
from services.ingest.registry import build_connectors
from services.ingest.webhooks import WebhookHandler
from tests.fakes.hubspot import CLIENT_SECRET, PORTAL_ID, millis, webhook_request

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
SECRET_ENV = "CRMSYNC_TEST_PROXY_HUBSPOT_SECRET"
PATH = "/webhooks/hubspot"
PUBLIC_URL = f"https://crmsync.example.com{PATH}"
PROXY = "127.0.0.0/8"
ELSEWHERE = "10.0.0.0/8"
OWN = Origin(scheme="http", host="10.1.2.3:8080")
FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "crmsync.example.com"}


# --- the rules, table-driven ----------------------------------------------------------------


def nets(*cidrs: str) -> list[IPv4Network | IPv6Network]:
    return [ip_network(cidr) for cidr in cidrs]


@pytest.mark.parametrize(
    ("peer", "cidrs", "trusted"),
    [
        ("127.0.0.1", [PROXY], True),
        ("10.9.8.7", [PROXY, ELSEWHERE], True),
        ("192.168.1.1", [PROXY, ELSEWHERE], False),
        ("127.0.0.1", [], False),
        # A dual-stack socket reports IPv4 peers in their IPv6 form.
        ("::ffff:10.9.8.7", [ELSEWHERE], True),
        ("fd00::5", ["fd00::/8"], True),
        ("fd00::5", [ELSEWHERE], False),
        (None, [PROXY], False),
        ("", [PROXY], False),
        ("not-an-address", [PROXY], False),
    ],
)
def test_a_peer_is_trusted_only_inside_a_listed_network(
    peer: str | None, cidrs: list[str], trusted: bool
) -> None:
    assert is_trusted(peer, nets(*cidrs)) is trusted


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("crmsync.example.com", True),
        ("crmsync.example.com:8443", True),
        ("localhost", True),
        ("203.0.113.9", True),
        ("203.0.113.9:443", True),
        ("[2001:db8::1]", True),
        ("[2001:db8::1]:8443", True),
        ("xn--bcher-kva.example", True),
        ("", False),
        ("crmsync.example.com:0", False),
        ("crmsync.example.com:65536", False),
        ("crmsync.example.com:", False),
        ("crmsync.example.com/evil", False),
        ("user@crmsync.example.com", False),
        ("crm sync.example.com", False),
        ("-crmsync.example.com", False),
        ("crmsync..example.com", False),
        ("999.0.113.9", False),
        ("[2001:db8::zz]", False),
        ("2001:db8::1", False),
        ("a" * 64 + ".example.com", False),
        ("a." * 130 + "com", False),
    ],
)
def test_a_forwarded_host_must_be_a_host_and_optional_port(value: str, valid: bool) -> None:
    assert valid_host(value) is valid


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (FORWARDED, Origin("https", "crmsync.example.com")),
        # A chain of proxies: the first value is what the CRM called.
        (
            {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "crm.example.com, 10.1.2.3"},
            Origin("https", "crm.example.com"),
        ),
        ({"X-Forwarded-Proto": "HTTPS"}, Origin("https", OWN.host)),
        ({"X-Forwarded-Host": "crm.example.com:8443"}, Origin("http", "crm.example.com:8443")),
        # Invalid values leave their part as it was.
        (
            {"X-Forwarded-Proto": "ftp", "X-Forwarded-Host": "crm.example.com"},
            Origin("http", "crm.example.com"),
        ),
        ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "a/b"}, Origin("https", OWN.host)),
        ({}, OWN),
    ],
)
def test_a_trusted_proxy_forwards_scheme_and_host(
    headers: dict[str, str], expected: Origin
) -> None:
    origin = public_origin(OWN, peer="10.0.0.2", headers=headers, trusted_proxies=nets(ELSEWHERE))
    assert origin == expected


def test_an_untrusted_peer_forwards_nothing() -> None:
    origin = public_origin(OWN, peer="192.0.2.1", headers=FORWARDED, trusted_proxies=nets(PROXY))
    assert origin == OWN


def test_trusted_proxies_are_networks_checked_by_the_config_loader() -> None:
    settings = parse_settings(config(["10.0.0.0/8", "fd00::/8"]), file="crmsync.yaml")
    assert settings.services.ingest.trusted_proxies == nets("10.0.0.0/8", "fd00::/8")
    assert parse_settings(config(None), file="crmsync.yaml").services.ingest.trusted_proxies == []
    # A host address with a prefix is ambiguous (10.1.2.3/8): refused, not guessed.
    for bad in ("10.1.2.3/8", "proxy.internal"):
        with pytest.raises(
            ConfigError,
            match=r"services\.ingest\.trusted_proxies\[0\].*not a valid IPv4 or IPv6 network",
        ):
            parse_settings(config([bad]), file="crmsync.yaml")


# --- through the webhook handler --------------------------------------------------------------


def config(trusted_proxies: Sequence[str] | None, *, public_base_url: str | None = None) -> str:
    ingest: dict[str, Any] = {}
    if trusted_proxies is not None:
        ingest["trusted_proxies"] = list(trusted_proxies)
    if public_base_url is not None:
        ingest["public_base_url"] = public_base_url
    document = {
        "kafka": {"bootstrap_servers": "127.0.0.1:9"},
        "store": {"kind": "sqlite"},
        "services": {"ingest": ingest},
        "sources": {
            "hubspot": {
                "kind": "hubspot",
                "webhooks": {"client_secret": {"env": SECRET_ENV}},
                "mapping": {"email": "email"},
            }
        },
    }
    return json.dumps(document)


@dataclass
class MemoryPublisher:
    """Keeps what the handler publishes; a webhook is accepted once it is here."""

    published: list[OutgoingMessage] = field(default_factory=list)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> dict[int, int]:
        self.published.extend(messages)
        return {0: len(self.published)}


@dataclass
class Ingest:
    client: TestClient[web.Request, web.Application]
    publisher: MemoryPublisher

    async def deliver(self, *, signed_for: str, headers: dict[str, str] | None = None) -> int:
        """POST one HubSpot event, v3-signed for the URL `signed_for`; the status."""
        event = {
            "eventId": 3816279340,
            "subscriptionId": 25,
            "portalId": PORTAL_ID,
            "occurredAt": millis(NOW),
            "subscriptionType": "contact.creation",
            "attemptNumber": 0,
            "objectId": 501,
        }
        body, signed = webhook_request(
            [event], url=signed_for, secret=CLIENT_SECRET, timestamp_ms=millis(NOW)
        )
        response = await self.client.post(PATH, data=body, headers={**signed, **(headers or {})})
        return response.status

    def own_url(self) -> str:
        """The URL the request reaches ingest at, as the proxy sends it."""
        return str(self.client.make_url(PATH))


def handler(settings: Settings, publisher: MemoryPublisher) -> WebhookHandler:
    contracts = load_contracts()
    ingest = settings.services.ingest
    connectors = {n: build_connectors(n, s) for n, s in settings.sources.items()}
    return WebhookHandler(
        connectors={n: c.webhook for n, c in connectors.items() if c.webhook is not None},
        publisher=publisher,
        changes=contracts.contact_change,
        rejected=contracts.rejected_event,
        changes_topic="crmsync.changes",
        rejected_topic="crmsync.rejected",
        body_caps={name: ingest.max_body_bytes for name in settings.sources},
        retry_after_seconds=ingest.retry_after_seconds,
        accepting=lambda: True,
        public_base_url=ingest.public_base_url,
        trusted_proxies=ingest.trusted_proxies,
        clock=lambda: NOW,
    )


StartIngest = Callable[..., Awaitable[Ingest]]


@pytest_asyncio.fixture
async def start_ingest(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartIngest]:
    """Starts ingest's webhook handler on a test server, configured as asked."""
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(
        trusted_proxies: Sequence[str] | None, *, public_base_url: str | None = None
    ) -> Ingest:
        text = config(trusted_proxies, public_base_url=public_base_url)
        settings = parse_settings(text, file="crmsync.yaml")
        publisher = MemoryPublisher()
        app = web.Application()
        handler(settings, publisher).install(app)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return Ingest(client, publisher)

    yield start
    for client in clients:
        await client.close()


@pytest.mark.asyncio
async def test_a_request_signed_for_the_public_https_url_passes_a_trusted_proxy(
    start_ingest: StartIngest,
) -> None:
    ingest = await start_ingest([PROXY])
    assert await ingest.deliver(signed_for=PUBLIC_URL, headers=FORWARDED) == 200
    assert len(ingest.publisher.published) == 1


@pytest.mark.asyncio
async def test_the_forwarded_port_is_part_of_the_signed_url(start_ingest: StartIngest) -> None:
    ingest = await start_ingest([PROXY])
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "crmsync.example.com:8443"}
    signed_for = f"https://crmsync.example.com:8443{PATH}"
    assert await ingest.deliver(signed_for=signed_for, headers=headers) == 200
    # The same request signed without the port was not sent to that URL.
    assert await ingest.deliver(signed_for=PUBLIC_URL, headers=headers) == 401


@pytest.mark.parametrize("trusted", [[ELSEWHERE], None], ids=["other-network", "none"])
@pytest.mark.asyncio
async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    start_ingest: StartIngest, trusted: list[str] | None
) -> None:
    ingest = await start_ingest(trusted)
    # The headers would make the public URL the signed one: they must not count.
    assert await ingest.deliver(signed_for=PUBLIC_URL, headers=FORWARDED) == 401
    assert ingest.publisher.published == []
    # What the peer really reached is still checked as before.
    assert await ingest.deliver(signed_for=ingest.own_url(), headers=FORWARDED) == 200


@pytest.mark.asyncio
async def test_an_invalid_forwarded_host_is_not_used(start_ingest: StartIngest) -> None:
    ingest = await start_ingest([PROXY])
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "crmsync.example.com/x"}
    assert await ingest.deliver(signed_for=f"https://crmsync.example.com/x{PATH}") == 401
    assert await ingest.deliver(signed_for=PUBLIC_URL, headers=headers) == 401
    assert ingest.publisher.published == []
    # The valid X-Forwarded-Proto still counts; the host stays the one the proxy called.
    signed_for = ingest.own_url().replace("http://", "https://", 1)
    assert await ingest.deliver(signed_for=signed_for, headers=headers) == 200


@pytest.mark.asyncio
async def test_public_base_url_wins_over_forwarded_headers(start_ingest: StartIngest) -> None:
    ingest = await start_ingest([PROXY], public_base_url="https://hooks.example.org")
    assert await ingest.deliver(signed_for=PUBLIC_URL, headers=FORWARDED) == 401
    signed_for = f"https://hooks.example.org{PATH}"
    assert await ingest.deliver(signed_for=signed_for, headers=FORWARDED) == 200
    assert len(ingest.publisher.published) == 1
