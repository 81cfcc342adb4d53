"""Settings of Salesforce as a destination: records written with sObject Collections."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field, field_validator, model_validator

from services.core.destinations.common import DestinationCommon
from services.core.sources.common import ApiSettings, checked_api
from services.core.sources.salesforce import (
    DEFAULT_API_VERSION,
    FIELD_PATH,
    OBJECT_NAME,
    SalesforceOAuth,
)

# "The list can contain up to 200 objects" (sObject Collections).
MAX_COLLECTION: Final = 200
# sObject Collections upsert exists from API version 46.0.
MIN_UPSERT_VERSION: Final = 46


class SalesforceDestination(DestinationCommon):
    """Salesforce records: upserted by an external id field with sObject Collections
    (``PATCH /services/data/vXX.X/composite/sobjects/<sobject>/<external_id_field>``),
    updated by Id, deleted by Id for erased profiles."""

    kind: Literal["salesforce"]
    api: ApiSettings = Field(
        description="base_url: the org's My Domain URL (https://<domain>.my.salesforce.com)"
        "; token: a static access token, when 'oauth' is not set"
    )
    oauth: SalesforceOAuth | None = Field(
        default=None, description="OAuth 2.0 access tokens (as the Salesforce source gets them)"
    )
    api_version: str = Field(default=DEFAULT_API_VERSION, pattern=r"^[1-9][0-9]\.0$")
    sobject: str = Field(default="Contact", description="the sObject written")
    external_id_field: str = Field(
        default="Email",
        description="the field records are matched by: Email (an idLookup field of Contact "
        "and Lead) or a custom field marked External ID, e.g. Crmsync_Id__c",
    )
    external_id_value: Literal["email", "profile_id"] = Field(
        default="email",
        description="what the external id field holds: the profile's email, or crmsync's "
        "profile id (for a custom field of crmsync's own)",
    )
    client_name: str = Field(
        default="crmsync",
        pattern=r"^[^;,=\s]+$",
        description="sent as 'Sforce-Call-Options: client=<client_name>' on every request: "
        "Change Data Capture events of these writes carry it in changeOrigin, so the "
        "Salesforce source can drop them (its change_events.own_client)",
    )
    send_clears: bool = Field(
        default=False,
        description="send an attribute its source cleared as null, which clears the field; "
        "by default it is left out, and Salesforce keeps its value",
    )
    batch_size: int = Field(
        default=MAX_COLLECTION,
        ge=1,
        le=MAX_COLLECTION,
        description=f"records per request; sObject Collections take {MAX_COLLECTION}",
    )

    @field_validator("sobject")
    @classmethod
    def _sobject(cls, value: str) -> str:
        if not OBJECT_NAME.match(value):
            raise ValueError(f"{value!r} is not an sObject API name (e.g. Contact)")
        return value

    @field_validator("external_id_field")
    @classmethod
    def _external_id(cls, value: str) -> str:
        if not OBJECT_NAME.match(value):
            raise ValueError(f"{value!r} is not a field API name (e.g. Email, Crmsync_Id__c)")
        return value

    @field_validator("attributes", "consents")
    @classmethod
    def _field_names(cls, mapping: dict[str, str]) -> dict[str, str]:
        for name in mapping.values():
            if not FIELD_PATH.match(name) or "." in name:
                raise ValueError(f"{name!r} is not a field API name (e.g. MailingCity)")
        return mapping

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if int(value.split(".", maxsplit=1)[0]) < MIN_UPSERT_VERSION:
            raise ValueError(
                f"sObject Collections upsert needs API version {MIN_UPSERT_VERSION}.0 or later"
            )
        return value

    @field_validator("api")
    @classmethod
    def _api(cls, api: ApiSettings) -> ApiSettings:
        return checked_api(
            api,
            needs=None,
            example="the org's My Domain URL, https://acme.my.salesforce.com",
            adds="/services/data/...",
        )

    @model_validator(mode="after")
    def _credentials(self) -> SalesforceDestination:
        if self.api.token is None and self.oauth is None:
            raise ValueError("'api' needs 'oauth' (or api.token, a session id) to authenticate")
        return self
