"""What every destination's settings say: the system it mirrors, what flows out, paused."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.core.mapping_settings import Condition, FieldValueType, ScalarSetting
from services.core.settings_base import Strict


class FieldTransform(Strict):
    """How a profile attribute's value is shaped for one destination field: a value map,
    then the coercion to ``type`` (the transforms sources use, services/mapper/rules/
    transforms.py). A value that cannot be shaped dead-letters the change with why."""

    type: FieldValueType = Field(
        default="keep", description="keep the value, or coerce it (date, boolean, ...)"
    )
    values: dict[str, ScalarSetting] | None = Field(
        default=None, description="a value map, by the attribute value's text"
    )
    unmapped: Literal["reject", "keep", "blank"] = Field(
        default="keep",
        description="a value the map does not list: refuse the change, keep the value, "
        "or send it as blank",
    )
    separator: str = Field(default=";", min_length=1, description="multi-select items")
    formats: list[str] = Field(
        default_factory=list, description="strptime formats tried after ISO 8601"
    )


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
    transforms: dict[str, FieldTransform] = Field(
        default_factory=dict,
        description="destination field -> how its value is shaped on the way out",
    )
    send_if: Condition | None = Field(
        default=None,
        description="only profiles whose attributes match go out (the sources' sync "
        "condition clauses, over profile attributes); a profile that stops matching is "
        "left as it is in the destination. Needs the SQLite or PostgreSQL store",
    )
    consents: dict[str, str] = Field(
        default_factory=dict,
        description="subscription -> the destination's field, true when opted in",
    )
    direction: Literal["both", "outbound"] = Field(
        default="both",
        description="both: the system's changes come in through its source and "
        "crmsync's go out to it, conflicts settled by the attribute policies; outbound: "
        "crmsync is the truth for it, so its source's changes set nothing on profiles "
        "(only the ids it gives crmsync's own writes are linked). For inbound only, "
        "configure the source and no destination",
    )
    mapping_version: int = Field(
        default=1,
        ge=1,
        description="raise it when the attributes, consents or fields sent change: until "
        "a push under it (crmsync destination push NAME) the destination is due for one",
    )
    paused: bool = Field(
        default=False,
        description="deliver nothing: changes wait in Kafka (the destination's consumer "
        "group keeps its place) and go out in order once unpaused",
    )

    @model_validator(mode="after")
    def _transforms_name_sent_fields(self) -> DestinationCommon:
        if self.attributes:
            unknown = sorted(set(self.transforms) - set(self.attributes.values()))
            if unknown:
                raise ValueError(
                    f"transforms name fields no attribute is sent to: {', '.join(unknown)}"
                )
        return self

    @model_validator(mode="after")
    def _outbound_names_its_source(self) -> DestinationCommon:
        if self.direction == "outbound" and self.source is None:
            raise ValueError(
                "direction outbound names the source that reads the same system "
                "(source:), whose changes it then keeps from profiles"
            )
        return self


class ProfileAtATime(DestinationCommon):
    """A destination whose API writes one profile per request (or a few): its writes of
    a chunk's profiles go out side by side, each profile once per chunk (so no two
    writes of one profile ever race), under the API's request rate."""

    concurrency: int = Field(
        default=8,
        ge=1,
        le=64,
        description="profiles written at once within a chunk; the request rate "
        "(api.max_requests_per_second) still bounds them",
    )
