"""The ``destinations:`` section: where profile changes go out, one entry per system.

Every destination says which profile attributes and consents flow out under which of
its field names, and which crmsync source reads the same system (``source``): a
change that came from that source is never sent back to it. Each kind adds how to
reach the system; the outbound service (services/outbound/) delivers.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from services.core.destinations.cdp import CdpDestination
from services.core.destinations.common import DestinationCommon
from services.core.destinations.webhook import WebhookDestination

DestinationSettings = Annotated[WebhookDestination | CdpDestination, Field(discriminator="kind")]

__all__ = ["CdpDestination", "DestinationCommon", "DestinationSettings", "WebhookDestination"]
