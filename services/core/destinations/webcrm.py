"""Settings of webCRM as a destination: persons written through the webCRM REST API."""

from __future__ import annotations

import re
from typing import Any, Final, Literal

from pydantic import Field, field_validator, model_validator

from services.core.destinations.common import ProfileAtATime
from services.core.sources.common import ApiSettings
from services.core.sources.webcrm import (
    DEFAULT_REQUESTS_PER_SECOND,
    PASSWORD_FIELDS,
    REQUESTS_PER_MINUTE,
    WEBCRM_API_BASE_URL,
    checked_webcrm_api,
    webcrm_api_defaults,
)

# Person fields webCRM sets itself, or that crmsync sets from the profile's identities.
NOT_MAPPABLE: Final = frozenset(
    {
        "PersonId",
        "PersonEmail",
        "PersonName",
        "PersonCreatedAt",
        "PersonCreatedBy",
        "PersonUpdatedAt",
        "PersonUpdatedBy",
        *PASSWORD_FIELDS,
    }
)
PERSON_FIELD: Final = re.compile(r"^Person[A-Z][A-Za-z0-9]*$")
# Person fields that hold a consent: the mass-email block (true = no mass emails, the
# opposite of opted in) and the ten check marks an account can use as it likes.
BLOCK_MASS_EMAIL: Final = "PersonBlockMassEmail"
CONSENT_FIELD: Final = re.compile(r"^(PersonBlockMassEmail|PersonCheckMark([1-9]|10))$")
# Each profile is a request or three; 50 profiles stay well inside a minute's limit.
MAX_BATCH: Final = 50


class WebCrmDestination(ProfileAtATime):
    """webCRM: profiles written as persons, ``PUT /Persons/{id}`` for a person crmsync
    knows, else found by email (``GET /Queries``) or created (``POST /Persons``);
    ``DELETE /Persons/{id}`` on erasure."""

    kind: Literal["webcrm"]
    api: ApiSettings = Field(
        description=f"base_url defaults to {WEBCRM_API_BASE_URL}; token is the application "
        "token (with write access to persons), max_requests_per_second defaults to "
        f"{DEFAULT_REQUESTS_PER_SECOND} (webCRM allows {REQUESTS_PER_MINUTE} per minute, "
        "shared by every client of the token)"
    )
    organisation_id: int | None = Field(
        default=None,
        ge=1,
        description="the PersonOrganisationId of persons crmsync creates (in a B2B "
        "webCRM every person belongs to an organisation); none: webCRM decides",
    )
    send_clears: bool = Field(
        default=False,
        description="send an attribute its source cleared as an empty text, as webCRM "
        "writes an empty field; by default it is left out and webCRM keeps its value",
    )
    batch_size: int = Field(
        default=20,
        ge=1,
        le=MAX_BATCH,
        description="profiles per chunk; each is its own requests (one person per "
        "request), all under the token's per-minute limit",
    )

    @model_validator(mode="before")
    @classmethod
    def _api_defaults(cls, data: Any) -> Any:
        return webcrm_api_defaults(data)

    @field_validator("api")
    @classmethod
    def _api(cls, api: ApiSettings) -> ApiSettings:
        return checked_webcrm_api(
            api,
            needs="webCRM's REST API needs an application token (Configuration > "
            "Integration > API > REST) with write access to persons",
            adds="/Auth/ApiLogin and /Persons",
        )

    @field_validator("attributes")
    @classmethod
    def _person_fields(cls, attributes: dict[str, str]) -> dict[str, str]:
        if not attributes:
            raise ValueError(
                "attributes: name the webCRM person field of each attribute (e.g. "
                "first_name: PersonFirstName)"
            )
        for attribute, name in attributes.items():
            if not PERSON_FIELD.match(name):
                raise ValueError(
                    f"attributes.{attribute}: {name!r} is not a webCRM person field (they "
                    "are named Person..., e.g. PersonFirstName, PersonCustom1)"
                )
            if name in NOT_MAPPABLE:
                raise ValueError(
                    f"attributes.{attribute}: {name} is not written by crmsync (webCRM "
                    "sets it, it holds a password, or crmsync sets it from the profile's "
                    "email)"
                )
        return attributes

    @field_validator("consents")
    @classmethod
    def _consent_fields(cls, consents: dict[str, str]) -> dict[str, str]:
        for subscription, name in consents.items():
            if not CONSENT_FIELD.match(name):
                raise ValueError(
                    f"consents.{subscription}: a webCRM consent is {BLOCK_MASS_EMAIL} "
                    "(set when not opted in) or a check mark, PersonCheckMark1 to 10"
                )
        return consents
