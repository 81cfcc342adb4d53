"""What of a profile change goes to one destination: its own fields, nothing echoed.

A ``ProfileChanged`` event becomes an ``OutgoingChange`` for a destination when:

1. it did not come from the destination's own system (its ``source``): a change never
   goes back where it came from; a backfill's SNAPSHOT goes only to the destination it
   was made for (``crmsync destination push``), whatever its sources;
2. it changes something the destination takes: a mapped attribute (old and new value
   under the destination's field name, shaped by the field's ``transforms``), a mapped
   subscription's status, the profile's identities, a merge; or it creates, detaches
   or erases the profile.

A value a transform cannot shape raises RuleError (the delivery loop dead-letters the
change with it).

Anything else is skipped, counted by why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from services.core.contracts import FieldValue
from services.core.destinations import DestinationCommon
from services.core.destinations.common import FieldTransform
from services.core.mapping_settings import FieldRule
from services.core.profile_changed import ProfileChanged, ProfileChangeKind
from services.mapper.rules.transforms import apply_rule

ECHO: Final = "own_source"
ANOTHERS: Final = "another_destinations"
UNMAPPED: Final = "nothing_mapped"
OPT_IN: Final = "OPT_IN"


@dataclass(frozen=True)
class OutgoingChange:
    event: ProfileChanged
    fields: dict[str, FieldValue] = field(default_factory=dict)
    """The destination's field -> the new value (None: cleared)."""
    previous: dict[str, FieldValue] = field(default_factory=dict)
    """The destination's field -> the value before."""
    consents: dict[str, bool] = field(default_factory=dict)
    """The destination's field -> opted in."""


def outgoing(
    event: ProfileChanged, settings: DestinationCommon, *, destination: str | None = None
) -> OutgoingChange | str:
    """The change as the destination (named ``destination``) takes it, or why it is
    skipped."""
    # Step 1
    if event.kind is ProfileChangeKind.SNAPSHOT:
        if destination is not None and event.destination != destination:
            return ANOTHERS
    elif settings.source is not None and event.source == settings.source:
        return ECHO
    # Step 2
    fields: dict[str, FieldValue] = {}
    previous: dict[str, FieldValue] = {}
    for change in event.attributes:
        name = settings.attributes.get(change.name) if settings.attributes else change.name
        if name is not None:
            transform = settings.transforms.get(name)
            fields[name] = (
                change.new_value
                if transform is None
                else shaped_value(change.new_value, transform, field=name)
            )
            previous[name] = change.old_value
    consents = {
        settings.consents[c.subscription]: c.new_status == OPT_IN
        for c in event.consents
        if c.subscription in settings.consents
    }
    structural = (
        event.kind is not ProfileChangeKind.UPDATED
        or event.identities_added
        or event.identities_removed
        or event.merged_profile_ids
    )
    if not (fields or consents or structural):
        return UNMAPPED
    return OutgoingChange(event, fields, previous, consents)


def shaped_value(value: FieldValue, transform: FieldTransform, *, field: str) -> FieldValue:
    """``value`` as ``transform`` shapes it for ``field``; RuleError when it cannot."""
    # Built without validation: the transform's settings were validated with the config.
    rule = FieldRule.model_construct(
        attribute="value",
        type=transform.type,
        values=transform.values,
        unmapped=transform.unmapped,
        split=None,
        separator=transform.separator,
        timezone="UTC",
        formats=transform.formats,
    )
    return apply_rule(value, rule, where=f"transforms.{field}", default_region=None)
