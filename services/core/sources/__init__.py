"""Source settings by kind: one module per CRM, joined here into one tagged union."""

from __future__ import annotations

from typing import Final

from services.core.sources.common import (
    AUTH_KINDS,
    ApiSettings,
    BearerAuth,
    HmacSha256Auth,
    NoAuth,
    PollSettings,
    SourceBase,
    StandardWebhooksAuth,
    WebhookAuth,
)
from services.core.sources.generic import GenericWebhookSource

SourceKinds = GenericWebhookSource

SOURCE_KINDS: Final = frozenset({"generic_webhook"})

__all__ = [
    "AUTH_KINDS",
    "SOURCE_KINDS",
    "ApiSettings",
    "BearerAuth",
    "GenericWebhookSource",
    "HmacSha256Auth",
    "NoAuth",
    "PollSettings",
    "SourceBase",
    "SourceKinds",
    "StandardWebhooksAuth",
    "WebhookAuth",
]
