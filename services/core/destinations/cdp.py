"""Settings of the product documents' CDP as a destination (its records API)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.core.destinations.common import DestinationCommon
from services.core.sources.common import ApiSettings


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
