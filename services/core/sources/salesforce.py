"""Settings of a Salesforce source: outbound messages and change events (push), SOQL (pull).

A Salesforce source has any of:

- ``outbound_messages``: the SOAP ``notifications`` a workflow rule or flow posts to
  ``/webhooks/<source>``. They carry no signature: the sender is proven by the
  organization's id inside the message and, because an org id is no secret, a shared
  token in the endpoint URL's query string and/or the verdict of a TLS-terminating
  proxy that checked Salesforce's client certificate.
- ``change_events``: Change Data Capture events (JSON) a relay such as a Pub/Sub API
  subscriber posts to the same URL, authenticated with one of the shared schemes
  (bearer, HMAC-SHA256, Standard Webhooks), never unauthenticated.
- ``api`` (+ ``oauth``): the REST query endpoint for polls and full syncs, with an
  OAuth 2.0 access token (client credentials or refresh token flow) or a static token.

The validators catch what an operator most often gets wrong, each with a message that
says what Salesforce needs.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import Field, field_validator, model_validator

from services.core.settings_base import SecretRef, Strict
from services.core.sources.common import (
    ApiSettings,
    BearerAuth,
    HmacSha256Auth,
    PollSettings,
    SourceBase,
    StandardWebhooksAuth,
    checked_api,
)

DEFAULT_API_VERSION: Final = "62.0"
TOKEN_PATH: Final = "/services/oauth2/token"  # noqa: S105 - a path, not a secret
# "The default is 2,000; the minimum is 200, and the maximum is 2,000" (Query Options
# header, batchSize).
MIN_BATCH_SIZE: Final = 200
MAX_BATCH_SIZE: Final = 2000
# What every pulled record needs: its id and its modification time.
REQUIRED_FIELDS: Final = ("Id", "LastModifiedDate")
DEFAULT_FIELDS: Final = (
    "FirstName",
    "LastName",
    "Email",
    "Phone",
    "HasOptedOutOfEmail",
)
# API names: an object, or a field possibly reached through relationships (Account.Name).
# Only such names are ever written into a SOQL statement.
OBJECT_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
FIELD_PATH: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*){0,4}$")
# An organization id: 15 characters (case-sensitive) or 18 (with the checksum suffix).
ORGANIZATION_ID: Final = re.compile(r"^00D[A-Za-z0-9]{12}([A-Za-z0-9]{3})?$")

FieldType = Literal["boolean", "int", "double", "string"]
# Outbound messages carry every value as XML text; these standard Contact and Lead
# checkboxes are read as booleans, so that push and pull give the same JSON types.
DEFAULT_FIELD_TYPES: Final[dict[str, FieldType]] = {
    "IsDeleted": "boolean",
    "HasOptedOutOfEmail": "boolean",
    "HasOptedOutOfFax": "boolean",
    "DoNotCall": "boolean",
    "IsEmailBounced": "boolean",
    "IsConverted": "boolean",
    "IsUnreadByOwner": "boolean",
}


class SalesforceOutboundMessages(Strict):
    """How crmsync proves an outbound message comes from the configured org."""

    organization_id: str = Field(
        description="the org's id (Setup > Company Information), 15 or 18 characters; "
        "messages from any other org are refused"
    )
    token: SecretRef | None = Field(
        default=None,
        description="a shared secret the outbound message's endpoint URL carries in its "
        "query string (https://.../webhooks/<source>?token=<secret>); recommended, since "
        "an org id is not a secret",
    )
    token_param: str = Field(default="token", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    client_cert_header: str | None = Field(
        default=None,
        description="header a TLS-terminating proxy sets after verifying the client "
        "certificate Salesforce presents (e.g. X-SSL-Client-Verify); the proxy must drop "
        "that header from incoming requests",
    )
    client_cert_value: str | None = Field(
        default=None, description="the value the proxy sets for a verified certificate"
    )
    field_types: dict[str, FieldType] = Field(
        default_factory=dict,
        description="how to read values that are not text (every value in a SOAP message "
        "is text); added to the standard checkboxes "
        f"({', '.join(DEFAULT_FIELD_TYPES)}), 'string' keeps one as text",
    )

    @field_validator("organization_id")
    @classmethod
    def _organization(cls, value: str) -> str:
        if not ORGANIZATION_ID.match(value):
            raise ValueError(
                "an organization id starts with 00D and has 15 or 18 letters and digits"
            )
        return value

    @model_validator(mode="after")
    def _certificate_pair(self) -> SalesforceOutboundMessages:
        if (self.client_cert_header is None) != (self.client_cert_value is None):
            raise ValueError("client_cert_header and client_cert_value go together")
        return self


RelayAuth = Annotated[
    BearerAuth | HmacSha256Auth | StandardWebhooksAuth, Field(discriminator="kind")
]


class SalesforceChangeEvents(Strict):
    """Change Data Capture events posted by a relay (e.g. a Pub/Sub API subscriber)."""

    auth: RelayAuth = Field(description="how the relay authenticates its requests")
    gap_events: Literal["reject", "acknowledge"] = Field(
        default="reject",
        description="gap and overflow events carry no field data: refuse them with 400 "
        "(kept in the rejected topic; run a full sync), or acknowledge them and rely on "
        "the poll, which reads the records again by LastModifiedDate",
    )
    own_client: str | None = Field(
        default=None,
        pattern=r"^[^;,=\s]+$",
        description="the client name the Salesforce destination sends in its "
        "Sforce-Call-Options header: change events whose changeOrigin names it "
        "(client=<own_client>) are the echo of crmsync's own write and are dropped",
    )


class SalesforceOAuth(Strict):
    """How the connector gets an access token from ``/services/oauth2/token``."""

    grant_type: Literal["client_credentials", "refresh_token"] = "client_credentials"
    token_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description=f"default: api.base_url + {TOKEN_PATH} (the client credentials flow "
        "needs the org's My Domain URL; the refresh token flow may use "
        "https://login.salesforce.com)",
    )
    client_id: str = Field(min_length=1, description="the app's consumer key")
    client_secret: SecretRef = Field(description="the app's consumer secret")
    refresh_token: SecretRef | None = Field(
        default=None, description="needed by the refresh_token grant"
    )

    @model_validator(mode="after")
    def _refresh_token(self) -> SalesforceOAuth:
        if self.grant_type == "refresh_token" and self.refresh_token is None:
            raise ValueError("the refresh_token grant needs 'refresh_token'")
        if self.grant_type == "client_credentials" and self.refresh_token is not None:
            raise ValueError("'refresh_token' is only used by the refresh_token grant")
        return self


class SalesforceSource(SourceBase):
    kind: Literal["salesforce"]
    email_field: str = "Email"
    outbound_messages: SalesforceOutboundMessages | None = None
    change_events: SalesforceChangeEvents | None = None
    api: ApiSettings | None = Field(
        default=None,
        description="the REST API for polls and full syncs; base_url is the org's My "
        "Domain URL (https://<domain>.my.salesforce.com)",
    )
    oauth: SalesforceOAuth | None = Field(
        default=None, description="OAuth 2.0 access tokens; without it, api.token is used"
    )
    poll: PollSettings | None = None
    api_version: str = Field(default=DEFAULT_API_VERSION, pattern=r"^[1-9][0-9]\.0$")
    object: str = Field(default="Contact", description="the sObject polled and pushed")
    push_objects: list[str] = Field(
        default_factory=list,
        description="further sObject types accepted from push (e.g. Lead); never polled",
    )
    fields: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FIELDS),
        description="fields a poll selects; Id and LastModifiedDate are always added",
    )
    include_deleted: bool = Field(
        default=True,
        description="poll with queryAll and IsDeleted, so records deleted since the last "
        "poll (still in the recycle bin) become deletions",
    )
    batch_size: int = Field(
        default=MAX_BATCH_SIZE,
        ge=MIN_BATCH_SIZE,
        le=MAX_BATCH_SIZE,
        description="records per query batch (Sforce-Query-Options); Salesforce may return fewer",
    )

    @field_validator("object")
    @classmethod
    def _object(cls, value: str) -> str:
        if not OBJECT_NAME.match(value):
            raise ValueError(f"{value!r} is not an sObject API name (e.g. Contact)")
        return value

    @field_validator("push_objects")
    @classmethod
    def _push_objects(cls, values: list[str]) -> list[str]:
        for value in values:
            if not OBJECT_NAME.match(value):
                raise ValueError(f"{value!r} is not an sObject API name (e.g. Lead)")
        return values

    @field_validator("fields")
    @classmethod
    def _fields(cls, values: list[str]) -> list[str]:
        for value in values:
            if not FIELD_PATH.match(value):
                raise ValueError(f"{value!r} is not a field API name (e.g. Email, Account.Name)")
        return values

    @field_validator("api")
    @classmethod
    def _api(cls, api: ApiSettings | None) -> ApiSettings | None:
        if api is None:
            return None
        # No token hint: the token usually comes from the OAuth flow, not the config.
        return checked_api(
            api,
            needs=None,
            example="the org's My Domain URL, https://acme.my.salesforce.com",
            adds="/services/data/...",
        )

    @model_validator(mode="after")
    def _complete(self) -> SalesforceSource:
        if self.outbound_messages is None and self.change_events is None and self.api is None:
            raise ValueError(
                "a salesforce source needs 'outbound_messages' or 'change_events' "
                "(Salesforce pushes changes), 'api' (polls and full syncs), or both"
            )
        if self.api is not None and self.api.token is None and self.oauth is None:
            raise ValueError("'api' needs 'oauth' (or api.token, a session id) to authenticate")
        if self.oauth is not None and self.api is None:
            raise ValueError("'oauth' authenticates API calls: add 'api' with the base_url")
        if self.poll is not None:
            self._check_poll(self.poll)
        return self

    def _check_poll(self, poll: PollSettings) -> None:
        if self.api is None:
            raise ValueError("a poll reads Salesforce's query API: add 'api'")
        if "page_size" in poll.model_fields_set:
            raise ValueError(
                "poll.page_size: Salesforce sizes query batches itself; set 'batch_size' "
                f"({MIN_BATCH_SIZE}-{MAX_BATCH_SIZE}) instead"
            )

    @model_validator(mode="after")
    def _gap_events_need_a_poll(self) -> SalesforceSource:
        events = self.change_events
        acknowledging = events is not None and events.gap_events == "acknowledge"
        if acknowledging and (self.poll is None or not self.poll.enabled):
            raise ValueError(
                "change_events.gap_events 'acknowledge' relies on a poll to read the "
                "records again: add an enabled 'poll', or use 'reject'"
            )
        return self

    @property
    def select_fields(self) -> list[str]:
        """The fields a query selects: the required ones first, each once."""
        required = [*REQUIRED_FIELDS, *(("IsDeleted",) if self.include_deleted else ())]
        chosen = [*required, *self.fields]
        return list(dict.fromkeys(chosen))

    @property
    def accepted_objects(self) -> frozenset[str]:
        return frozenset((self.object, *self.push_objects))
