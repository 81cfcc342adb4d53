"""Settings of Pipedrive as a destination: persons written with the persons API v2."""

from __future__ import annotations

import re
from typing import Any, Final, Literal

from pydantic import Field, field_validator, model_validator

from services.core.destinations.common import ProfileAtATime
from services.core.sources.common import ApiSettings
from services.core.sources.pipedrive import (
    PIPEDRIVE_API_BASE_URL,
    checked_pipedrive_api,
    pipedrive_api_defaults,
)

# Person fields of POST/PATCH /api/v2/persons that take a profile value as it is.
PERSON_FIELDS: Final = frozenset({"name", "owner_id", "org_id", "visible_to", "label_ids"})
# The primary phone, written as the person's ``phones`` list.
PHONE_FIELD: Final = "phone"
# Custom fields are addressed by their 40-character hash key.
CUSTOM_FIELD: Final = re.compile(r"^custom_fields\.([0-9a-f]{40})$")
# The one consent a person has in Pipedrive (with the Campaigns product).
MARKETING_STATUS: Final = "marketing_status"
# No batch endpoint: every profile is its own request, so a chunk stays small.
MAX_BATCH: Final = 100


class PipedriveDestination(ProfileAtATime):
    """Pipedrive: profiles written as persons, ``PATCH /api/v2/persons/{id}`` for a
    person crmsync knows, else found by email (``GET /api/v2/persons/search``) or
    created (``POST /api/v2/persons``); ``DELETE /api/v2/persons/{id}`` on erasure."""

    kind: Literal["pipedrive"]
    api: ApiSettings = Field(
        description=f"base_url defaults to {PIPEDRIVE_API_BASE_URL} (or "
        "https://<company>.pipedrive.com); token: the personal API token of the user "
        "crmsync writes as, sent in the x-api-token header"
    )
    send_clears: bool = Field(
        default=False,
        description="send an attribute its source cleared as null, which empties the "
        "Pipedrive field; by default it is left out and Pipedrive keeps its value",
    )
    batch_size: int = Field(
        default=20,
        ge=1,
        le=MAX_BATCH,
        description="profiles per chunk; each is one request (Pipedrive has no batch "
        "write), so a chunk's requests share the token's rate limit",
    )

    @model_validator(mode="before")
    @classmethod
    def _api_defaults(cls, data: Any) -> Any:
        return pipedrive_api_defaults(data)

    @field_validator("api")
    @classmethod
    def _api(cls, api: ApiSettings) -> ApiSettings:
        return checked_pipedrive_api(api)

    @field_validator("attributes")
    @classmethod
    def _person_fields(cls, attributes: dict[str, str]) -> dict[str, str]:
        if not attributes:
            raise ValueError(
                "attributes: name the Pipedrive person field of each attribute (a "
                "person takes only its own fields and its custom fields)"
            )
        for attribute, name in attributes.items():
            if name not in PERSON_FIELDS and name != PHONE_FIELD and not CUSTOM_FIELD.match(name):
                raise ValueError(
                    f"attributes.{attribute}: {name!r} is not a Pipedrive person field; use "
                    f"one of {', '.join(sorted(PERSON_FIELDS | {PHONE_FIELD}))} or "
                    "custom_fields.<40-character key> (Settings > Data fields > Person, "
                    "or GET /api/v1/personFields); the email comes from the profile"
                )
        return attributes

    @field_validator("consents")
    @classmethod
    def _marketing_status(cls, consents: dict[str, str]) -> dict[str, str]:
        for subscription, name in consents.items():
            if name != MARKETING_STATUS:
                raise ValueError(
                    f"consents.{subscription}: a Pipedrive person's one consent is "
                    f"{MARKETING_STATUS} (subscribed / unsubscribed, with Campaigns)"
                )
        return consents
