"""Settings of Klaviyo as a destination (its REST API: profiles, email consent, erasure)."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field, field_validator, model_validator

from services.core.destinations.common import ProfileAtATime
from services.core.sources.common import ApiSettings, checked_api

STANDARD_FIELDS: Final = frozenset(
    {
        "email",
        "phone_number",
        "external_id",
        "first_name",
        "last_name",
        "organization",
        "locale",
        "title",
        "image",
    }
)
"""A profile's own attributes in the API; any other field is a custom property."""
LOCATION_FIELDS: Final = frozenset(
    {
        "address1",
        "address2",
        "city",
        "country",
        "latitude",
        "longitude",
        "region",
        "zip",
        "timezone",
        "ip",
    }
)
"""The fields of a profile's ``location``, named ``location.<field>`` in ``attributes``."""
LOCATION: Final = "location."
EMAIL_MARKETING: Final = "email_marketing"
MAX_SUBSCRIBE: Final = 1000
"""Profiles in one bulk subscribe job at most, as the API documents."""
MAX_UNSUBSCRIBE: Final = 100
"""Profiles in one bulk unsubscribe job at most, as the API documents."""


class KlaviyoDestination(ProfileAtATime):
    """Klaviyo: each profile created or updated with ``POST /api/profile-import``, its
    email marketing consent set with bulk subscribe and unsubscribe jobs, an erased
    profile deleted with a data privacy deletion job."""

    kind: Literal["klaviyo"]
    api: ApiSettings = Field(
        description="base_url: https://a.klaviyo.com; token: a private API key (pk_...) "
        "with the profiles:write, lists:write, subscriptions:write and data-privacy:write "
        "scopes"
    )
    revision: str = Field(
        default="2026-07-15",
        pattern=r"^\d{4}-\d{2}-\d{2}(\.[a-z0-9]+)?$",
        description="the API revision every request names (the revision header), "
        "YYYY-MM-DD[.suffix]: the one this destination was written against",
    )
    list_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9]+$",
        description="the list a consent change subscribes profiles to (and unsubscribes "
        "them from); without one, Klaviyo applies the account's default opt-in and an "
        "opt-out unsubscribes the profile from all email marketing",
    )
    send_clears: bool = Field(
        default=False,
        description="send an attribute its source cleared as null (a standard field) or "
        "unset it (a custom property), which clears it in Klaviyo; by default it is left "
        "out and Klaviyo keeps its value",
    )
    batch_size: int = Field(
        default=100,
        ge=1,
        le=MAX_SUBSCRIBE,
        description="profile changes per chunk: each profile is one profile-import "
        "request, consent changes go in bulk jobs of up to 1000 (subscribe) and 100 "
        "(unsubscribe) profiles",
    )

    @field_validator("api")
    @classmethod
    def _klaviyo_api(cls, api: ApiSettings) -> ApiSettings:
        return checked_api(
            api,
            needs="a Klaviyo private API key (pk_...)",
            example="https://a.klaviyo.com",
            adds="/api/...",
        )

    @model_validator(mode="after")
    def _fields_klaviyo_has(self) -> KlaviyoDestination:
        for attribute, name in self.attributes.items():
            if name.startswith(LOCATION) and name[len(LOCATION) :] not in LOCATION_FIELDS:
                raise ValueError(
                    f"attributes.{attribute}: {name!r} is no location field; Klaviyo's are "
                    + ", ".join(sorted(LOCATION + f for f in LOCATION_FIELDS))
                )
        if set(self.consents.values()) - {EMAIL_MARKETING} or len(self.consents) > 1:
            raise ValueError(
                "consents: this destination sets a profile's email marketing consent; "
                f"map one subscription to {EMAIL_MARKETING!r}"
            )
        return self
