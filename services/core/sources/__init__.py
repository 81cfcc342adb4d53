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
from services.core.sources.hubspot import HubSpotSource
from services.core.sources.pipedrive import PipedriveSource
from services.core.sources.s360 import S360Source
from services.core.sources.salesforce import SalesforceSource
from services.core.sources.webcrm import WebCrmSource

SourceKinds = (
    GenericWebhookSource
    | GenericRestSource
    | HubSpotSource
    | SalesforceSource
    | PipedriveSource
    | WebCrmSource
    | S360Source
)

__all__ = [
    "ApiSettings",
    "BearerAuth",
    "GenericRestSource",
    "GenericWebhookSource",
    "HmacSha256Auth",
    "HubSpotSource",
    "NoAuth",
    "PipedriveSource",
    "PollSettings",
    "S360Source",
    "SalesforceSource",
    "SourceBase",
    "SourceKinds",
    "StandardWebhooksAuth",
    "WebCrmSource",
    "WebhookAuth",
]
