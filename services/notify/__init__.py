"""Telling operators about incidents: Slack, a generic webhook, email.

A service builds one ``Notifier`` (services/notify/notifier.py; not imported here, so
that the config can name these settings without loading the metrics before a
service's launcher chose their mode) from the ``notifications:`` settings
(``NotificationSettings``), starts it on its event loop, and calls ``notify`` and
``resolve`` as incidents come and go; neither ever waits or raises. The notifier
holds back repeats (cooldown), gathers what arrives close together into one message
(grouping), and sends each message to each channel on its own, with retries.
docs/notifications.md describes the settings and the messages.
"""

from __future__ import annotations

from services.notify.incidents import Incident, IncidentKind, Severity
from services.notify.settings import (
    ChannelSettings,
    EmailChannel,
    NotificationSettings,
    SlackChannel,
    WebhookChannel,
)

__all__ = [
    "ChannelSettings",
    "EmailChannel",
    "Incident",
    "IncidentKind",
    "NotificationSettings",
    "Severity",
    "SlackChannel",
    "WebhookChannel",
]
