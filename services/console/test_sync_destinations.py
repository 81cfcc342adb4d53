"""What each destination would be sent of one profile change, as pure logic.

Per destination, in the order the outbound delivery decides (services/outbound/
delivery.py, services/outbound/outgoing.py):

1. a destination reading the tested source's own system gets nothing: a change never
   goes back where it came from;
2. a profile that would not match the destination's ``send_if`` (the sources'
   condition clauses over the profile's attributes as the update would leave them) is
   filtered out;
3. the change is shaped by ``outgoing``, the delivery's own shaping: the
   destination's field names and transforms, its consent fields; a change touching
   nothing it takes is skipped, a value a transform refuses would be dead-lettered.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.console.test_sync_report import DestinationOutcome, DestinationVerdict
from services.core.contracts import FieldValue
from services.core.destinations import DestinationSettings
from services.core.profile_changed import ProfileChanged
from services.mapper.rules.conditions import matches
from services.mapper.rules.errors import RuleError
from services.outbound.outgoing import outgoing


def destination_outcomes(
    destinations: Mapping[str, DestinationSettings],
    *,
    source: str,
    event: ProfileChanged | None,
    attributes: Mapping[str, FieldValue],
) -> tuple[DestinationOutcome, ...]:
    """``event``: what the writer would emit (None: the profile would not change);
    ``attributes``: the profile's attributes after the update."""
    return tuple(
        _outcome(name, settings, source=source, event=event, attributes=attributes)
        for name, settings in destinations.items()
    )


def _outcome(
    name: str,
    settings: DestinationSettings,
    *,
    source: str,
    event: ProfileChanged | None,
    attributes: Mapping[str, FieldValue],
) -> DestinationOutcome:
    # Step 1
    if settings.source == source:
        return DestinationOutcome(
            name,
            DestinationVerdict.NOT_SENT,
            f"it is {source}'s own system: changes from there are never sent back",
        )
    if event is None:
        return DestinationOutcome(
            name, DestinationVerdict.NOTHING_TO_SEND, "the profile would not change"
        )
    # Step 2
    if settings.send_if is not None and not matches(settings.send_if, attributes):
        return DestinationOutcome(
            name, DestinationVerdict.FILTERED_OUT, "the profile would not match its send_if"
        )
    # Step 3
    try:
        shaped = outgoing(event, settings, destination=name)
    except RuleError as exc:
        return DestinationOutcome(
            name,
            DestinationVerdict.WOULD_DEAD_LETTER,
            f"not sendable to destination {name}: {exc}",
        )
    if isinstance(shaped, str):
        return DestinationOutcome(
            name, DestinationVerdict.NOTHING_TO_SEND, "the change touches nothing it takes"
        )
    return DestinationOutcome(
        name,
        DestinationVerdict.WOULD_SEND,
        fields=shaped.fields,
        consents=shaped.consents,
        paused=settings.paused,
    )
