"""What every destination's settings say: the system it mirrors, what flows out, paused."""

from __future__ import annotations

from pydantic import Field

from services.core.settings_base import Strict


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
