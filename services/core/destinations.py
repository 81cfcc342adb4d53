"""The ``destinations:`` section: where profile changes go out, one entry per system.

Every destination says which profile attributes and consents flow out under which of
its field names, and which crmsync source reads the same system (``source``): a
change that came from that source is never sent back to it. Each kind adds how to
reach the system; the outbound service (services/outbound/) delivers.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from services.core.settings_base import SecretRef, Strict
from services.core.sources.common import ApiSettings


class DestinationCommon(Strict):
    source: str | None = Field(
        default=None,
        description="the crmsync source that reads this same system: changes that came "
        "from it are never sent back there",
    )
    attributes: dict[str, str] = Field(
        default_factory=dict,
        description="profile attribute -> the destination's field; only these flow out "
        "(empty: every attribute, under its own name)",
    )
    consents: dict[str, str] = Field(
        default_factory=dict,
        description="subscription -> the destination's field, true when opted in",
    )
    paused: bool = Field(
        default=False,
        description="deliver nothing: changes wait in Kafka (the destination's consumer "
        "group keeps its place) and go out in order once unpaused",
    )


class WebhookDestination(DestinationCommon):
    """Any HTTP endpoint, sent Standard Webhooks (signed JSON, retried with backoff)."""

    kind: Literal["webhook"]
    api: ApiSettings = Field(
        description="base_url: the endpoint's URL; the request rate, timeout and retries"
    )
    secret: SecretRef = Field(description="the whsec_... signing secret the receiver checks")
    batch_size: int = Field(
        default=100, ge=1, le=1000, description="profile changes per webhook at most"
    )


class CdpDestination(DestinationCommon):
    """The product documents' CDP (Experiture's public API): profiles upserted with its
    records API, ``POST /records/{object_name}/upsert-batch`` with a ``matchKey``."""

    kind: Literal["cdp"]
    api: ApiSettings = Field(
        description="base_url: the API's, e.g. https://api.experiture.ai/public/v1; token: "
        "a bearer token of the workspace"
    )
    object_name: str = Field(default="profiles", pattern=r"^[a-z][a-z0-9_]*$")
    match_key: str = Field(
        description="the record field the CDP finds the row by: one of its identity keys, "
        "e.g. email or hubspot_contact_id"
    )
    identities: dict[str, str] = Field(
        default_factory=lambda: {"email": "email"},
        description="a profile's identity -> the record field carrying it: 'email', or "
        "'crm:<source>' for that source's record id (e.g. crm:hubspot: hubspot_contact_id)",
    )
    send_clears: bool = Field(
        default=False,
        description="send an attribute its source cleared as null, which clears it in the "
        "CDP; by default it is left out, and the CDP keeps its value",
    )
    batch_size: int = Field(default=500, ge=1, le=10_000, description="records per request")


DestinationSettings = Annotated[WebhookDestination | CdpDestination, Field(discriminator="kind")]
