"""The ``destinations:`` section: where profile changes go out, one entry per system.

Every destination says which profile attributes and consents flow out under which of
its field names, and which crmsync source reads the same system (``source``): a
change that came from that source is never sent back to it. Each kind adds how to
reach the system (one module per kind); the outbound service (services/outbound/)
delivers.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from services.core.destinations.apsis import ApsisDestination
from services.core.destinations.cdp import CdpDestination
from services.core.destinations.common import DestinationCommon
from services.core.destinations.hubspot import HubSpotDestination
from services.core.destinations.klaviyo import KlaviyoDestination
from services.core.destinations.mailchimp import MailchimpDestination
from services.core.destinations.pipedrive import PipedriveDestination
from services.core.destinations.rest import RestDestination
from services.core.destinations.s360 import S360Destination
from services.core.destinations.salesforce import SalesforceDestination
from services.core.destinations.webcrm import WebCrmDestination
from services.core.destinations.webhook import WebhookDestination

DestinationSettings = Annotated[
    WebhookDestination
    | CdpDestination
    | HubSpotDestination
    | SalesforceDestination
    | MailchimpDestination
    | KlaviyoDestination
    | PipedriveDestination
    | WebCrmDestination
    | S360Destination
    | ApsisDestination
    | RestDestination,
    Field(discriminator="kind"),
]

__all__ = [
    "ApsisDestination",
    "CdpDestination",
    "DestinationCommon",
    "DestinationSettings",
    "HubSpotDestination",
    "KlaviyoDestination",
    "MailchimpDestination",
    "PipedriveDestination",
    "RestDestination",
    "S360Destination",
    "SalesforceDestination",
    "WebCrmDestination",
    "WebhookDestination",
]
