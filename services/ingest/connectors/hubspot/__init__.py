"""The HubSpot connector: webhook event batches (push), CRM API polls and full syncs
(pull); see ``push`` and ``pull``."""

from __future__ import annotations

from services.core.sources.hubspot import HubSpotSource
from services.ingest.connectors.base import SourceConnectors
from services.ingest.connectors.hubspot.pull import HubSpotPullConnector, is_throttled
from services.ingest.connectors.hubspot.push import HubSpotWebhookConnector


def connectors(source: str, settings: HubSpotSource) -> SourceConnectors:
    webhook = None
    if settings.webhooks is not None:
        webhook = HubSpotWebhookConnector(source=source, settings=settings)
    pull = HubSpotPullConnector(source=source, settings=settings) if settings.api else None
    return SourceConnectors(
        webhook=webhook,
        pull=pull,
        api=settings.api,
        poll=settings.poll,
        is_throttled=is_throttled if pull is not None else None,
    )
