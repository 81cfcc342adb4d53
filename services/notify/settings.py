"""The ``notifications:`` section: where operators are told about incidents, and how
often.

No channels (the default) means nothing is sent. Each channel is a Slack incoming
webhook, a generic webhook (Standard Webhooks signed when it has a secret) or an
SMTP mailbox; ``routes`` narrows which kinds go where, ``min_severity`` which
incidents go at all. Secrets (the Slack webhook URL, the signing secret, the SMTP
password) are ``SecretRef``s, resolved when the notifier starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from services.core.settings_base import SecretRef, Strict
from services.notify.incidents import NAME_PATTERN, IncidentKind, Severity

ADDRESS_PATTERN: Final = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
DEFAULT_SMTP_PORTS: Final = {"starttls": 587, "tls": 465, "none": 25}

ChannelName = Annotated[str, StringConstraints(pattern=NAME_PATTERN.pattern)]


class ChannelCommon(Strict):
    min_severity: Severity | None = Field(
        default=None, description="this channel's own threshold (default: the section's)"
    )
    timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="one attempt at most, answer included"
    )


class SlackChannel(ChannelCommon):
    """A Slack incoming webhook: one POST of ``{"text": ...}`` per message."""

    kind: Literal["slack"]
    url: SecretRef = Field(
        description="the incoming webhook's URL, a secret: {env: VAR} or {file: PATH}"
    )


class WebhookChannel(ChannelCommon):
    """Any HTTP endpoint: one POST of JSON per message, signed when ``secret`` is set."""

    kind: Literal["webhook"]
    url: str = Field(pattern=r"^https?://", description="where the JSON is posted")
    secret: SecretRef | None = Field(
        default=None, description="a whsec_... Standard Webhooks signing secret"
    )


class EmailChannel(ChannelCommon):
    """An SMTP server: one plain-text mail per message to every address in ``to``."""

    kind: Literal["email"]
    host: str = Field(min_length=1)
    port: int | None = Field(
        default=None, ge=1, le=65535, description="default: 587 starttls, 465 tls, 25 none"
    )
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="starttls: upgrade a plain connection (required, not tried); tls: "
        "TLS from the first byte; none: plain, for a relay on a trusted network",
    )
    ca_file: Path | None = Field(
        default=None, description="PEM bundle of the CAs to trust instead of the system's"
    )
    sender: str = Field(alias="from", description="the From address")
    to: list[str] = Field(min_length=1)
    username: str | None = None
    password: SecretRef | None = None
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)

    @field_validator("sender")
    @classmethod
    def _sender_is_an_address(cls, sender: str) -> str:
        if not ADDRESS_PATTERN.match(sender):
            raise ValueError("'from' must be one email address")
        return sender

    @field_validator("to")
    @classmethod
    def _recipients_are_addresses(cls, to: list[str]) -> list[str]:
        if not all(ADDRESS_PATTERN.match(address) for address in to):
            raise ValueError("every item of 'to' must be one email address")
        return to

    @model_validator(mode="after")
    def _login_is_whole(self) -> EmailChannel:
        if (self.username is None) != (self.password is None):
            raise ValueError("'username' and 'password' go together")
        return self

    @property
    def smtp_port(self) -> int:
        return self.port or DEFAULT_SMTP_PORTS[self.security]


ChannelSettings = Annotated[
    SlackChannel | WebhookChannel | EmailChannel, Field(discriminator="kind")
]


class NotificationSettings(Strict):
    """Who is told about which incidents, how often, and in how many messages."""

    instance: str = Field(
        default="crmsync",
        pattern=NAME_PATTERN.pattern,
        description="how messages name this deployment, e.g. crmsync-prod",
    )
    channels: dict[ChannelName, ChannelSettings] = Field(
        default_factory=dict, description="name -> channel; none: nothing is sent"
    )
    routes: dict[IncidentKind, list[ChannelName]] = Field(
        default_factory=dict,
        description="kind -> the channels it goes to; a kind not listed goes to every channel",
    )
    min_severity: Severity = Field(
        default=Severity.INFO, description="incidents below this severity are not sent"
    )
    cooldown_seconds: float = Field(
        default=900.0,
        ge=0,
        description="an incident told once is not told again for this long, unless it "
        "was resolved and happened again",
    )
    group_seconds: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="incidents within this window after the first go out as one message",
    )
    send_resolved: bool = Field(
        default=True, description="tell the channels when an incident they were told of is over"
    )
    queue_size: int = Field(
        default=1000, ge=1, le=100_000, description="incidents waiting; when full the oldest go"
    )
    channel_backlog: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="messages waiting for one channel; when full its oldest message goes",
    )
    max_attempts: int = Field(default=5, ge=1, le=50, description="tries per message")
    backoff_initial_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _routes_name_channels(self) -> NotificationSettings:
        unknown = sorted(
            {name for names in self.routes.values() for name in names} - set(self.channels)
        )
        if unknown:
            raise ValueError(f"routes name channels that are not declared: {', '.join(unknown)}")
        return self
