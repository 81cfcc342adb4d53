"""The email channel against a real SMTP server (aiosmtpd) on loopback: the mail, the
login, STARTTLS with a private CA, and which SMTP replies are retried."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import trustme
from aiosmtpd.smtp import SMTP
from prometheus_client import REGISTRY

from services.core.logs import EMAIL_PATTERN
from services.notify import NotificationSettings
from services.notify.incidents import Incident, IncidentKind
from services.notify.notifier import Notifier
from tests.support.notify_receivers import Mailbox, until

pytestmark = [pytest.mark.unit, pytest.mark.asyncio]

LOGIN = ("crmsync", "smtp-test-password")
ServeMail = Callable[..., Any]


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[ServeMail]:
    """Start an SMTP server for a mailbox; the arguments go to aiosmtpd's SMTP."""
    servers: list[asyncio.Server] = []

    async def start(mailbox: Mailbox, **smtp: Any) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(
                mailbox,
                hostname="mail.test",
                authenticator=mailbox.authenticate,
                **smtp,
            ),
            "127.0.0.1",
            0,
        )
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext
    ca_file: str


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    """A private CA, a certificate it issued for 127.0.0.1, and the CA's PEM file."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Tls(server, str(ca_file))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def settings(port: int, **channel: Any) -> NotificationSettings:
    return NotificationSettings.model_validate(
        {
            "channels": {
                "oncall-mail": {
                    "kind": "email",
                    "host": "127.0.0.1",
                    "port": port,
                    "security": "none",
                    "from": "crmsync@ops.example",
                    "to": ["oncall@ops.example", "lead@ops.example"],
                    "timeout_seconds": 5,
                    **channel,
                }
            },
            "group_seconds": 0.2,
            "backoff_initial_seconds": 0.01,
            "backoff_max_seconds": 0.02,
            "max_attempts": 3,
        }
    )


def mail_outcome(outcome: str) -> float:
    labels = {"channel": "oncall-mail", "outcome": outcome}
    return REGISTRY.get_sample_value("crmsync_notifications_sent_total", labels) or 0.0


async def test_a_group_is_one_plain_text_mail_to_every_recipient(serve: ServeMail) -> None:
    mailbox = Mailbox()
    port = await serve(mailbox)
    async with Notifier(settings(port)) as notifier:
        notifier.notify(Incident(IncidentKind.SYNC_FAILING, "hubspot", reason="http_503"))
        notifier.notify(Incident(IncidentKind.AUTH_FAILING, "salesforce", reason="invalid_grant"))
        notifier.notify(Incident(IncidentKind.FULLSYNC_FAILED, "webcrm"))
        await until(lambda: len(mailbox.mails) == 1)
    (mail,) = mailbox.mails
    assert mailbox.envelopes == [
        ("crmsync@ops.example", ["oncall@ops.example", "lead@ops.example"])
    ]
    assert mail["Subject"] == (
        "crmsync: 3 incidents: sync failing (hubspot), authentication failing (salesforce), "
        "full sync failed (webcrm)"
    )
    assert mail.get_content_type() == "text/plain"
    body = mail.get_content()
    assert "- ERROR sync failing: source hubspot (reason http_503)" in body
    assert "- ERROR authentication failing: source salesforce (reason invalid_grant)" in body
    assert "- ERROR full sync failed: source webcrm" in body
    assert not EMAIL_PATTERN.search(body)
    assert mail["Message-ID"].endswith("@ops.example>")


def login_over_starttls(tls: Tls) -> dict[str, Any]:
    return {
        "security": "starttls",
        "ca_file": tls.ca_file,
        "username": LOGIN[0],
        "password": {"env": "NOTIFY_TEST_SMTP_PASSWORD"},
    }


async def test_it_logs_in_after_starttls_with_the_password_from_its_secret(
    serve: ServeMail, tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = Mailbox(login=LOGIN)
    port = await serve(mailbox, tls_context=tls.server, require_starttls=True, auth_required=True)
    monkeypatch.setenv("NOTIFY_TEST_SMTP_PASSWORD", LOGIN[1])
    async with Notifier(settings(port, **login_over_starttls(tls))) as notifier:
        notifier.notify(Incident(IncidentKind.FULLSYNC_FINISHED, "hubspot"))
        await until(lambda: len(mailbox.mails) == 1)
    # One connection: EHLO, STARTTLS, EHLO again, one login.
    assert (mailbox.greetings, mailbox.logins) == (2, 1)


async def test_a_refused_login_is_final_and_not_retried(
    serve: ServeMail, tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = Mailbox(login=LOGIN)
    port = await serve(mailbox, tls_context=tls.server, require_starttls=True, auth_required=True)
    monkeypatch.setenv("NOTIFY_TEST_SMTP_PASSWORD", "wrong")
    before = mail_outcome("refused")
    async with Notifier(settings(port, **login_over_starttls(tls))) as notifier:
        notifier.notify(Incident(IncidentKind.FULLSYNC_FINISHED, "hubspot"))
        await until(lambda: mail_outcome("refused") == before + 1)
    assert mailbox.greetings == 2  # one connection
    assert mailbox.logins >= 1
    assert mailbox.mails == []


async def test_a_4xx_reply_is_retried_and_a_5xx_is_not(serve: ServeMail) -> None:
    mailbox = Mailbox()
    mailbox.replies.append("451 4.3.0 Try again later")
    port = await serve(mailbox)
    refused = mail_outcome("refused")
    async with Notifier(settings(port)) as notifier:
        notifier.notify(Incident(IncidentKind.SYNC_FAILING, "hubspot"))
        await until(lambda: len(mailbox.mails) == 1)
        assert mailbox.attempts == 2
        mailbox.replies.append("554 5.7.1 Message rejected")
        notifier.notify(Incident(IncidentKind.SYNC_FAILING, "webcrm"))
        await until(lambda: mail_outcome("refused") == refused + 1)
    assert mailbox.attempts == 3


async def test_starttls_upgrades_and_trusts_the_configured_ca(serve: ServeMail, tls: Tls) -> None:
    mailbox = Mailbox()
    port = await serve(mailbox, tls_context=tls.server, require_starttls=True)
    secured = settings(port, security="starttls", ca_file=tls.ca_file)
    async with Notifier(secured) as notifier:
        notifier.notify(Incident(IncidentKind.SYNC_FAILING, "hubspot"))
        await until(lambda: len(mailbox.mails) == 1)

    # The same server, without the CA trusted: its certificate does not verify.
    refused = mail_outcome("refused")
    async with Notifier(settings(port, security="starttls")) as notifier:
        notifier.notify(Incident(IncidentKind.SYNC_FAILING, "hubspot"))
        await until(lambda: mail_outcome("refused") == refused + 1)
    assert len(mailbox.mails) == 1


async def test_a_server_that_is_down_is_retried_then_given_up() -> None:
    gave_up = mail_outcome("gave_up")
    async with Notifier(settings(closed_port())) as notifier:
        notifier.notify(Incident(IncidentKind.SYNC_FAILING, "hubspot"))
        await until(lambda: mail_outcome("gave_up") == gave_up + 1)
