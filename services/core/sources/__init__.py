"""Source settings by kind: one module per CRM, joined here into one tagged union."""

from __future__ import annotations

from services.core.sources.common import (
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
from services.core.sources.generic_rest import GenericRestSource

SourceKinds = GenericWebhookSource | GenericRestSource

__all__ = [
    "ApiSettings",
    "BearerAuth",
    "GenericRestSource",
    "GenericWebhookSource",
    "HmacSha256Auth",
    "NoAuth",
    "PollSettings",
    "SourceBase",
    "SourceKinds",
    "StandardWebhooksAuth",
    "WebhookAuth",
]
