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


DestinationSettings = Annotated[WebhookDestination, Field(discriminator="kind")]
