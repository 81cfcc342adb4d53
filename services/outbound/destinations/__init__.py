"""The systems profile changes go out to, one module per kind; ``open_destination``
builds the configured one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from services.core.destinations import (
    ApsisDestination,
    CdpDestination,
    DestinationSettings,
    HubSpotDestination,
    KlaviyoDestination,
    MailchimpDestination,
    PipedriveDestination,
    RestDestination,
    S360Destination,
    SalesforceDestination,
    WebCrmDestination,
    WebhookDestination,
)
from services.outbound.destinations.apsis import ApsisProfiles
from services.outbound.destinations.base import Destination
from services.outbound.destinations.cdp import CdpRecords
from services.outbound.destinations.hubspot import HubSpotContacts
from services.outbound.destinations.klaviyo import KlaviyoProfiles
from services.outbound.destinations.mailchimp import MailchimpAudience
from services.outbound.destinations.pipedrive import PipedrivePersons
from services.outbound.destinations.rest import RestRecords
from services.outbound.destinations.s360 import S360Contacts
from services.outbound.destinations.salesforce import SalesforceRecords
from services.outbound.destinations.webcrm import WebCrmPersons
from services.outbound.destinations.webhook import StandardWebhook

KINDS: Final[dict[type, Callable[[str, Any], Destination]]] = {
    WebhookDestination: StandardWebhook,
    CdpDestination: CdpRecords,
    HubSpotDestination: HubSpotContacts,
    SalesforceDestination: SalesforceRecords,
    MailchimpDestination: MailchimpAudience,
    KlaviyoDestination: KlaviyoProfiles,
    PipedriveDestination: PipedrivePersons,
    WebCrmDestination: WebCrmPersons,
    S360Destination: S360Contacts,
    ApsisDestination: ApsisProfiles,
    RestDestination: RestRecords,
}


def open_destination(name: str, settings: DestinationSettings) -> Destination:
    opener = KINDS.get(type(settings))
    if opener is None:
        raise ValueError(f"no destination of kind {settings.kind!r}")
    return opener(name, settings)
