"""Settings of a HubSpot source: webhooks (push), CRM API polls and full syncs (pull).

A HubSpot source has ``webhooks`` (events HubSpot posts, signed with the app's client
secret), ``api`` (a private app access token for the CRM search and list endpoints),
or both. The validators here catch what an operator most often gets wrong, each with
a message that says what HubSpot needs:

- a source with neither webhooks nor an API, or a poll without an API;
- webhooks without the client secret, or a secret written into the YAML itself;
- an API without a token, a base URL with a path, a request rate above the search
  endpoints' 5 per second, a page size above search's 200, a poll overlap shorter
  than the moments search takes to show a change;
- property names that are labels rather than HubSpot's internal names, and a
  property list so long the search request would pass HubSpot's 3,000 characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from services.core.settings_base import SecretRef, Strict
from services.core.sources.common import (
    ApiSettings,
    PollSettings,
    SourceBase,
    checked_api,
    default_api_settings,
)

HUBSPOT_API_BASE_URL: Final = "https://api.hubapi.com"
# Documented limits of the CRM search endpoints ("Search the CRM", Limits).
SEARCH_REQUESTS_PER_SECOND: Final = 5
SEARCH_MAX_LIMIT: Final = 200
SEARCH_MAX_BODY_CHARS: Final = 3000
# Search results may lag a change by "a few moments"; a poll must re-read at least this.
MIN_OVERLAP_SECONDS: Final = 60
# Internal names of HubSpot properties: lower-case letters, digits and underscores.
PROPERTY_NAME: Final = re.compile(r"^[a-z0-9_]+$")
# What the connector always needs from a contact: its id and its modification time.
REQUIRED_PROPERTIES: Final = ("hs_object_id", "lastmodifieddate")
DEFAULT_PROPERTIES: Final = ("email", "firstname", "lastname", "phone", "company")
# The search body the connector sends at its largest (see connectors/hubspot.py
# ``search_body``), without the property names; a unit test keeps the two in step.
SEARCH_BODY_OVERHEAD: Final = 420

SignatureVersion = Literal["v3", "v2"]


class HubSpotWebhooks(Strict):
    """How crmsync proves a webhook request comes from the HubSpot app."""

    client_secret: SecretRef | None = Field(
        default=None,
        validate_default=True,
        description="the app's client secret (Auth tab of the app), which signs requests",
    )
    signature_versions: list[SignatureVersion] = Field(
        default=["v3"],
        description="accepted signatures: v3 (HMAC with a timestamp, replay-proof) and, "
        "only for senders that cannot send v3, v2 (no timestamp: a captured request "
        "stays valid forever)",
    )
    other_events: Literal["ignore", "reject"] = Field(
        default="ignore",
        description="events that are not about this source's contacts (companies, deals, "
        "another portal): ignore them, or refuse the whole batch with 400",
    )

    own_source_ids: list[str] = Field(
        default_factory=list,
        description="the sourceId HubSpot gives changes crmsync makes as a destination "
        "(the id of the app whose token the HubSpot destination writes with): events "
        "carrying it are the echo of crmsync's own write and are dropped",
    )

    @field_validator("client_secret", mode="before")
    @classmethod
    def _secret_is_a_reference(cls, value: Any) -> Any:
        if value is None:
            raise ValueError(
                "HubSpot signs every webhook with the app's client secret; set "
                "client_secret to {env: VARIABLE} or {file: PATH}"
            )
        return value

    @field_validator("signature_versions")
    @classmethod
    def _versions(cls, versions: list[SignatureVersion]) -> list[SignatureVersion]:
        if not versions:
            raise ValueError("accept at least one signature version: v3 (recommended) or v2")
        if len(set(versions)) != len(versions):
            raise ValueError("a signature version is listed twice")
        return versions


class HubSpotSource(SourceBase):
    kind: Literal["hubspot"]
    webhooks: HubSpotWebhooks | None = Field(
        default=None, description="events HubSpot posts to /webhooks/<source>"
    )
    api: ApiSettings | None = Field(
        default=None,
        description="the CRM API for polls and full syncs; base_url defaults to "
        f"{HUBSPOT_API_BASE_URL}, token is the private app access token",
    )
    poll: PollSettings | None = None
    search_requests_per_second: float = Field(
        default=4.0,
        gt=0,
        le=SEARCH_REQUESTS_PER_SECOND,
        description="HubSpot's search endpoints take at most 5 requests per second per "
        "account, besides the account's general limit (api.max_requests_per_second)",
    )
    portal_id: int | None = Field(
        default=None,
        ge=1,
        description="the HubSpot account (hub) id; webhook events of other accounts are "
        "then treated as other events",
    )
    properties: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PROPERTIES),
        description="contact properties to read by API (internal names); the email "
        "field, the mapped fields, hs_object_id and lastmodifieddate are always read",
    )

    @model_validator(mode="before")
    @classmethod
    def _api_defaults(cls, data: Any) -> Any:
        """HubSpot has one API host, so ``base_url`` may be left out."""
        return default_api_settings(data, base_url=HUBSPOT_API_BASE_URL)

    @field_validator("api")
    @classmethod
    def _api(cls, api: ApiSettings | None) -> ApiSettings | None:
        if api is None:
            return None
        return checked_api(
            api,
            needs="HubSpot's CRM API needs a private app access token "
            "(scope crm.objects.contacts.read)",
            example=HUBSPOT_API_BASE_URL,
            adds="/crm/v3/objects/contacts",
        )

    @field_validator("poll")
    @classmethod
    def _poll(cls, poll: PollSettings | None, info: ValidationInfo) -> PollSettings | None:
        if poll is None or "api" not in info.data:
            # Without 'api' in the data, 'api' itself failed and its error says why.
            return poll
        if info.data["api"] is None:
            raise ValueError("a poll reads HubSpot's CRM API: add 'api' with the token")
        if poll.page_size > SEARCH_MAX_LIMIT:
            raise ValueError(
                f"page_size: HubSpot's search returns at most {SEARCH_MAX_LIMIT} records per page"
            )
        if poll.overlap_seconds < MIN_OVERLAP_SECONDS:
            raise ValueError(
                f"overlap_seconds: HubSpot's search shows a change only after a few "
                f"moments, so a poll re-reads at least {MIN_OVERLAP_SECONDS} s before "
                "its watermark"
            )
        return poll

    @field_validator("properties")
    @classmethod
    def _property_names(cls, names: list[str]) -> list[str]:
        _internal_names(names)
        if len(set(names)) != len(names):
            raise ValueError("a property is listed twice")
        return names

    @field_validator("email_field")
    @classmethod
    def _email_property(cls, name: str) -> str:
        _internal_names([name])
        return name

    @field_validator("mapping")
    @classmethod
    def _mapped_properties(cls, mapping: dict[str, str]) -> dict[str, str]:
        _internal_names(mapping)
        return mapping

    @model_validator(mode="after")
    def _complete(self) -> HubSpotSource:
        if self.webhooks is None and self.api is None:
            raise ValueError(
                "a hubspot source needs 'webhooks' (HubSpot posts changes), 'api' "
                "(polls and full syncs), or both"
            )
        size = SEARCH_BODY_OVERHEAD + len(json.dumps(self.fetched_properties()))
        if self.api is not None and size > SEARCH_MAX_BODY_CHARS:
            raise ValueError(
                f"properties: the search request would be about {size} characters and "
                f"HubSpot refuses more than {SEARCH_MAX_BODY_CHARS}; read fewer properties"
            )
        return self

    def fetched_properties(self) -> list[str]:
        """Every property the connector asks HubSpot for, in a stable order."""
        every = [*REQUIRED_PROPERTIES, self.email_field, *self.properties, *self.mapping]
        return list(dict.fromkeys(every))


def _internal_names(names: Iterable[str]) -> None:
    bad = [name for name in names if not PROPERTY_NAME.match(name)]
    if bad:
        raise ValueError(
            f"{', '.join(repr(n) for n in bad)}: use HubSpot's internal property names "
            "(lower-case letters, digits, underscores, e.g. 'firstname'), not labels"
        )
