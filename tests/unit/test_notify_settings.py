"""The ``notifications:`` section: defaults that send nothing, secrets only as
references, routes that name declared channels, whole SMTP logins."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.core.settings_base import REFERENCE_HINT, MissingSecretError
from services.notify import EmailChannel, NotificationSettings, SlackChannel
from services.notify.incidents import Incident, IncidentKind, Severity
from services.notify.notifier import Notifier

pytestmark = pytest.mark.unit

EMAIL: dict[str, Any] = {
    "kind": "email",
    "host": "smtp.example.com",
    "from": "crmsync@example.com",
    "to": ["ops@example.com"],
}


def parse(**values: Any) -> NotificationSettings:
    return NotificationSettings.model_validate(values)


@pytest.mark.asyncio
async def test_the_defaults_have_no_channels_and_a_notifier_then_sends_nothing() -> None:
    settings = parse()
    assert settings.channels == {}
    assert settings.cooldown_seconds == 900
    assert settings.group_seconds == 60
    assert settings.min_severity is Severity.INFO
    async with Notifier(settings) as notifier:
        assert not notifier.enabled
        notifier.notify(Incident(IncidentKind.SYNC_FAILING, "hubspot"))


def test_every_channel_kind_reads_from_yaml_shaped_data() -> None:
    settings = parse(
        instance="crmsync-prod",
        channels={
            "ops": {"kind": "slack", "url": {"env": "SLACK_URL"}},
            "siem": {
                "kind": "webhook",
                "url": "https://siem.example.com/in",
                "secret": {"file": "/run/secrets/whsec"},
            },
            "mail": {**EMAIL, "username": "crmsync", "password": {"env": "SMTP_PASSWORD"}},
        },
        routes={"fullsync_finished": ["ops"]},
    )
    assert isinstance(settings.channels["ops"], SlackChannel)
    mail = settings.channels["mail"]
    assert isinstance(mail, EmailChannel)
    assert mail.sender == "crmsync@example.com"
    assert (mail.security, mail.smtp_port) == ("starttls", 587)
    assert settings.routes == {IncidentKind.FULLSYNC_FINISHED: ["ops"]}


@pytest.mark.parametrize(("security", "port"), [("starttls", 587), ("tls", 465), ("none", 25)])
def test_the_smtp_port_follows_the_security(security: str, port: int) -> None:
    channel = parse(channels={"m": {**EMAIL, "security": security}}).channels["m"]
    assert isinstance(channel, EmailChannel)
    assert channel.smtp_port == port


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"channels": {"ops": {"kind": "slack", "url": "https://hooks.example"}}}, REFERENCE_HINT),
        (
            {"channels": {"ops": {"kind": "webhook", "url": "http://x/", "secret": "whsec_x"}}},
            REFERENCE_HINT,
        ),
        ({"channels": {"m": {**EMAIL, "password": "hunter2", "username": "u"}}}, REFERENCE_HINT),
        ({"channels": {"m": {**EMAIL, "username": "u"}}}, "go together"),
        ({"channels": {"m": {**EMAIL, "to": []}}}, "at least 1"),
        ({"channels": {"m": {**EMAIL, "to": ["ops"]}}}, "email address"),
        ({"channels": {"m": {**EMAIL, "from": "Ops <ops@example.com>"}}}, "one email address"),
        ({"channels": {"Ops Room": {"kind": "slack", "url": {"env": "X"}}}}, "pattern"),
        ({"channels": {"ops": {"kind": "teams", "url": "http://x/"}}}, "kind"),
        ({"routes": {"sync_failing": ["ops"]}}, "not declared: ops"),
        ({"routes": {"sync_failed": []}}, "sync_failing"),
        ({"cooldown": 5}, "Extra inputs"),
        ({"min_severity": "critical"}, "info"),
    ],
)
def test_a_wrong_setting_is_refused_with_why(values: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse(**values)
    assert problem in str(refused.value)


@pytest.mark.asyncio
async def test_a_missing_secret_stops_the_start_not_a_later_notify(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_TEST_UNSET_URL", raising=False)
    settings = parse(channels={"ops": {"kind": "slack", "url": {"env": "NOTIFY_TEST_UNSET_URL"}}})
    notifier = Notifier(settings)
    with pytest.raises(MissingSecretError, match="NOTIFY_TEST_UNSET_URL"):
        await notifier.start()
