"""One connector per CRM; ``build_connector`` picks it from the source's ``kind``."""

from __future__ import annotations

from services.core.config import GenericWebhookSource, SourceSettings
from services.ingest.connectors.base import WebhookConnector
from services.ingest.connectors.generic import GenericWebhookConnector


def build_connector(source: str, settings: SourceSettings) -> WebhookConnector:
    if isinstance(settings, GenericWebhookSource):
        return GenericWebhookConnector(source=source, settings=settings)
    raise ValueError(f"no webhook connector for source kind {settings.kind!r}")
