"""Settings of APSIS One as a destination: profiles written through its public API."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field, field_validator, model_validator

from services.core.destinations.common import ProfileAtATime
from services.core.settings_base import SecretRef, Strict
from services.core.sources.common import ApiSettings, checked_api

EMAIL_KEYSPACE: Final = "com.apsis1.keyspaces.email"
CRM_ID_KEYSPACE: Final = "com.apsis1.keyspaces.crm-id"
EMAIL_CHANNEL: Final = "com.apsis1.channels.email"


class ApsisTopic(Strict):
    """Where a consent goes: a topic of a consent list, over a channel."""

    consent_list_discriminator: str = Field(min_length=1)
    topic_discriminator: str = Field(min_length=1)
    channel_discriminator: str = Field(
        default=EMAIL_CHANNEL, description="the channel the profile's address belongs to"
    )


class ApsisDestination(ProfileAtATime):
    """APSIS One: attributes set with ``PATCH .../sections/{section}/attributes``
    (attribute version ids as keys), consents on the profile's email address, erased
    profiles deleted."""

    kind: Literal["apsis"]
    api: ApiSettings = Field(
        description="base_url: https://api.apsis.one (EU) or https://api-apac.apsis.one "
        "(APAC); token: unused (client_id and client_secret get one)"
    )
    client_id: str = Field(min_length=1, description="the API key's client ID")
    client_secret: SecretRef = Field(description="the API key's secret")
    section: str = Field(min_length=1, description="the section discriminator written to")
    keyspace: Literal["com.apsis1.keyspaces.email", "com.apsis1.keyspaces.crm-id"] = Field(
        default=EMAIL_KEYSPACE,
        description="the keyspace profiles are addressed in: by email, or by CRM-ID",
    )
    crm_id_source: str | None = Field(
        default=None,
        description="with the CRM-ID keyspace: the crmsync source whose record id is the "
        "profile's CRM-ID",
    )
    email_attribute: str | None = Field(
        default=None,
        pattern=r"^\d+$",
        description="the version id of the section's Email attribute, set to the profile's "
        "email so that a profile created here carries it",
    )
    topics: dict[str, ApsisTopic] = Field(
        default_factory=dict,
        description="consent field (the values of 'consents') -> its APSIS topic",
    )
    send_clears: bool = Field(
        default=False,
        description="send an attribute its source cleared as null, which removes it (JSON "
        "Merge Patch); by default it is left out and APSIS keeps its value",
    )
    batch_size: int = Field(
        default=50, ge=1, le=1000, description="profiles per chunk (a request or more each)"
    )

    @field_validator("api")
    @classmethod
    def _host_only(cls, api: ApiSettings) -> ApiSettings:
        return checked_api(
            api, needs=None, example="https://api.apsis.one", adds="/oauth/token and /audience"
        )

    @model_validator(mode="after")
    def _what_apsis_needs(self) -> ApsisDestination:
        if not self.attributes:
            raise ValueError(
                "attributes: map each profile attribute to the APSIS attribute's version id "
                "(GET /audience/sections/{section}/attributes lists them)"
            )
        wrong = sorted(v for v in self.attributes.values() if not v.isdigit())
        if wrong:
            raise ValueError(
                f"attributes: APSIS takes attribute version ids (digits), not {', '.join(wrong)}"
            )
        missing = sorted(set(self.consents.values()) - set(self.topics))
        if missing:
            raise ValueError(
                f"topics: each consent field needs its consent list and topic discriminators: "
                f"{', '.join(missing)}"
            )
        if self.keyspace == CRM_ID_KEYSPACE and self.crm_id_source is None:
            raise ValueError("crm_id_source: the CRM-ID keyspace needs the source of the id")
        return self
