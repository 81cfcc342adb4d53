"""The systems profile changes go out to, one module per kind; ``open_destination``
builds the configured one."""

from __future__ import annotations

from services.core.destinations import CdpDestination, DestinationSettings, WebhookDestination
from services.outbound.destinations.base import Destination
from services.outbound.destinations.cdp import CdpRecords
from services.outbound.destinations.webhook import StandardWebhook


def open_destination(name: str, settings: DestinationSettings) -> Destination:
    if isinstance(settings, WebhookDestination):
        return StandardWebhook(name, settings)
    if isinstance(settings, CdpDestination):
        return CdpRecords(name, settings)
    raise ValueError(f"no destination of kind {settings.kind!r}")
