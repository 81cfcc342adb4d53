"""Every source kind's settings, joined into the one tagged union the config reads."""

from __future__ import annotations

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
