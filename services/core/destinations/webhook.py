"""Settings of a signed webhook destination (Standard Webhooks)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.core.destinations.common import DestinationCommon
from services.core.settings_base import SecretRef
from services.core.sources.common import ApiSettings


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
