"""The notification channels, one module per kind, built from their settings."""

from __future__ import annotations

from services.notify.channels.base import Channel, ChannelRefused
from services.notify.channels.slack import Slack
from services.notify.channels.smtp import Email
from services.notify.channels.webhook import Webhook
from services.notify.settings import ChannelSettings, EmailChannel, SlackChannel


def build_channel(name: str, settings: ChannelSettings) -> Channel:
    """The channel its settings describe; resolves its secrets (MissingSecretError)."""
    if isinstance(settings, SlackChannel):
        return Slack(name, settings)
    if isinstance(settings, EmailChannel):
        return Email(name, settings)
    return Webhook(name, settings)


__all__ = ["Channel", "ChannelRefused", "build_channel"]
