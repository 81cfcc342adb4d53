"""Settings of HubSpot as a destination: contacts written with the CRM v3 batch API."""

from __future__ import annotations

import re
from typing import Any, Final, Literal

from pydantic import Field, field_validator, model_validator

from services.core.destinations.common import DestinationCommon
from services.core.sources.common import ApiSettings, checked_api, default_api_settings

HUBSPOT_API_BASE_URL: Final = "https://api.hubapi.com"
# The CRM v3 batch endpoints take at most 100 inputs per request.
MAX_BATCH_INPUTS: Final = 100
# Internal names of HubSpot properties: lower-case letters, digits and underscores.
PROPERTY_NAME: Final = re.compile(r"^[a-z0-9_]+$")


class HubSpotDestination(DestinationCommon):
    """HubSpot contacts: ``POST /crm/v3/objects/contacts/batch/upsert`` by email,
    ``.../batch/update`` by contact id, ``.../gdpr-delete`` for erased profiles."""

    kind: Literal["hubspot"]
    api: ApiSettings = Field(
        description=f"base_url: {HUBSPOT_API_BASE_URL} (the default); token: the private "
        "app's access token, with the crm.objects.contacts.write scope"
    )
    send_clears: bool = Field(
        default=False,
        description='send an attribute its source cleared as "" (HubSpot\'s way to clear '
        "a property); by default it is left out, and HubSpot keeps its value",
    )
    batch_size: int = Field(
        default=MAX_BATCH_INPUTS,
        ge=1,
        le=MAX_BATCH_INPUTS,
        description=f"profiles per request; HubSpot's batch endpoints take {MAX_BATCH_INPUTS}",
    )

    @model_validator(mode="before")
    @classmethod
    def _api_defaults(cls, data: Any) -> Any:
        return default_api_settings(data, base_url=HUBSPOT_API_BASE_URL)

    @field_validator("api")
    @classmethod
    def _api(cls, api: ApiSettings) -> ApiSettings:
        return checked_api(
            api,
            needs="the private app's access token (pat-...)",
            example=HUBSPOT_API_BASE_URL,
            adds="/crm/v3/objects/contacts/...",
        )

    @field_validator("attributes", "consents")
    @classmethod
    def _internal_names(cls, mapping: dict[str, str]) -> dict[str, str]:
        for name in mapping.values():
            if not PROPERTY_NAME.match(name):
                raise ValueError(
                    f"{name!r} is not a HubSpot property's internal name (lower-case "
                    "letters, digits, underscores, e.g. firstname; see Settings > "
                    "Properties > the property's details)"
                )
        return mapping
