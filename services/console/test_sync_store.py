"""What the writer would make of one ProfileUpdate, judged against the stored profile,
as pure logic: old -> new per attribute and consent, and the ProfileChanged event the
writer would emit for the destinations.

The writer's own rules decide (services/writer/profiles.py ``ConflictRules``): who may
write an attribute, which of two writes wins by source priority or version, who is a
subscription's consent source. What a read of the store does not show is not guessed:
a stored value carries its modification time but not its sequence or record, so a tie
in time is left to the writer (``WRITER_DECIDES``) rather than called either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final

from services.console.test_sync_report import (
    AttributeOutcome,
    ConsentOutcome,
    StoreOutcome,
    ValueVerdict,
)
from services.core.contracts import FieldValue, Identity, ProfileUpdate, UpdateOperation
from services.core.mapping_settings import AttributePolicy, ProfileSettings
from services.core.profile_changed import (
    AttributeChange,
    ConsentStatusChange,
    ProfileChanged,
    ProfileChangeKind,
)
from services.core.versions import to_micros
from services.writer.profiles import ConflictRules, StoredValue
from services.writer.stores.base import StoredAttribute, StoredProfile

# The unknown sequence and record id of a stored value, at both ends of their range:
# a verdict that holds at both ends holds whatever they are.
_LOWEST: Final = (-(2**63), "")
_HIGHEST: Final = (2**63 - 1, "\U0010ffff")
WRITTEN: Final = frozenset({ValueVerdict.NEW, ValueVerdict.CHANGED, ValueVerdict.CLEARED})
"""The verdicts under which the profile's value changes (and a ProfileChanged says so)."""
TEST_EVENT_ID: Final = "test-sync"


def store_outcome(
    update: ProfileUpdate,
    found: Sequence[StoredProfile],
    *,
    settings: ProfileSettings,
    rule_texts: Mapping[str, str],
) -> StoreOutcome:
    """``found``: the profiles owning the update's identities, match key's first.
    ``rule_texts``: per attribute, the mapping rule that made its value."""
    rules = ConflictRules(settings)
    profile = found[0] if found else None
    profile_id = profile.profile_id if profile is not None else None
    if update.operation is not UpdateOperation.UPSERT:
        crm = _crm_identity(update)
        note = (
            f"detaches {crm.kind}:{crm.value} from profile {profile_id}"
            if profile is not None and crm in profile.identities
            else "no profile holds this record: nothing to detach"
        )
        return StoreOutcome(profile_id=profile_id, note=note)
    attributes = _attribute_outcomes(
        update, profile, rules=rules, settings=settings, rule_texts=rule_texts
    )
    consents = _consent_outcomes(update, profile, rules=rules)
    return StoreOutcome(
        profile_id=profile_id,
        attributes=attributes,
        consents=consents,
        note=_identity_note(found, settings.on_identity_conflict),
    )


def attributes_after(profile: StoredProfile | None, outcome: StoreOutcome) -> dict[str, FieldValue]:
    """The profile's attributes as the update would leave them (what ``send_if`` reads)."""
    values = {name: a.value for name, a in (profile.attributes if profile else {}).items()}
    for attribute in outcome.attributes:
        if attribute.verdict is ValueVerdict.CLEARED:
            values.pop(attribute.attribute, None)
        elif attribute.verdict in WRITTEN:
            values[attribute.attribute] = attribute.new
    return values


def profile_change(
    update: ProfileUpdate,
    profile: StoredProfile | None,
    outcome: StoreOutcome,
    *,
    now: datetime,
) -> ProfileChanged | None:
    """The event the writer would commit for the destinations; None when the profile
    would not change (the writer emits nothing then)."""
    known = set(profile.identities) if profile is not None else set()
    if update.operation is not UpdateOperation.UPSERT:
        crm = _crm_identity(update)
        if profile is None or crm not in known:
            return None
        kind = ProfileChangeKind.DETACHED
        added: tuple[Identity, ...] = ()
        removed: tuple[Identity, ...] = (crm,)
    else:
        kind = ProfileChangeKind.CREATED if profile is None else ProfileChangeKind.UPDATED
        added = tuple(i for i in update.identities if i not in known)
        removed = ()
    attributes = tuple(
        AttributeChange(a.attribute, a.old, a.new)
        for a in outcome.attributes
        if a.verdict in WRITTEN
    )
    consents = tuple(
        ConsentStatusChange(c.subscription, c.channel, c.old, c.new, update.source_modified_at)
        for c in outcome.consents
        if c.verdict in WRITTEN
    )
    if kind is ProfileChangeKind.UPDATED and not (attributes or consents or added):
        return None
    return ProfileChanged(
        event_id=TEST_EVENT_ID,
        profile_id=profile.profile_id if profile is not None else 0,
        kind=kind,
        committed_at=now,
        source=update.source,
        record_id=update.record_id,
        source_event_id=update.event_id,
        source_modified_at=update.source_modified_at,
        mapping_version=update.mapping_version,
        identities=tuple(sorted({*known, *update.identities} - set(removed))),
        identities_added=added,
        identities_removed=removed,
        attributes=attributes,
        consents=consents,
    )


def _attribute_outcomes(
    update: ProfileUpdate,
    profile: StoredProfile | None,
    *,
    rules: ConflictRules,
    settings: ProfileSettings,
    rule_texts: Mapping[str, str],
) -> tuple[AttributeOutcome, ...]:
    stored = profile.attributes if profile is not None else {}
    writes: list[tuple[str, FieldValue]] = [
        (name, value) for name, value in update.attributes.items() if value is not None
    ]
    writes += [(name, None) for name in update.cleared]
    outcomes: list[AttributeOutcome] = []
    for name, value in writes:
        old = stored.get(name)
        old_value = old.value if old is not None else None
        verdict, why = _attribute_verdict(
            name, value, old, update=update, rules=rules, settings=settings
        )
        outcomes.append(
            AttributeOutcome(name, old_value, value, verdict, rule=rule_texts.get(name), why=why)
        )
    return tuple(outcomes)


def _attribute_verdict(
    name: str,
    value: FieldValue,
    old: StoredAttribute | None,
    *,
    update: ProfileUpdate,
    rules: ConflictRules,
    settings: ProfileSettings,
) -> tuple[ValueVerdict, str | None]:
    refusal = rules.refusal(name, update.source)
    if refusal is not None:
        return ValueVerdict.KEPT, refusal
    if old is None:
        # A clear of what the profile does not hold changes nothing.
        return (ValueVerdict.UNCHANGED, None) if value is None else (ValueVerdict.NEW, None)
    if _same(old.value, value):
        return ValueVerdict.UNCHANGED, None
    incoming = StoredValue(
        value,
        update.source,
        update.record_id,
        (to_micros(update.source_modified_at), update.sequence),
        update.mapping_version,
        0,
    )
    wins = {_wins(rules, name, incoming, old, unknown) for unknown in (_LOWEST, _HIGHEST)}
    if wins == {True}:
        return (ValueVerdict.CLEARED if value is None else ValueVerdict.CHANGED), None
    if wins == {False}:
        return ValueVerdict.KEPT, _why_kept(
            settings.attributes.get(name), old, source=update.source
        )
    return ValueVerdict.WRITER_DECIDES, (
        f"written at the same time as the stored value from {old.source}: "
        "the writer's tie rules decide"
    )


def _wins(
    rules: ConflictRules,
    name: str,
    incoming: StoredValue,
    old: StoredAttribute,
    unknown: tuple[int, str],
) -> bool:
    sequence, record_id = unknown
    stored = StoredValue(
        old.value,
        old.source,
        record_id,
        (to_micros(old.source_modified_at), sequence),
        old.mapping_version,
        0,
    )
    return rules.wins(name, incoming, stored)


def _why_kept(policy: AttributePolicy | None, old: StoredAttribute, *, source: str) -> str:
    if policy is not None and policy.policy == "source_priority" and old.source != source:
        # Between two sources of a priority list the rank decides, not the time.
        return f"the stored value from {old.source} ranks above {source} in its priority"
    return f"the stored value from {old.source} is newer ({old.source_modified_at.isoformat()})"


def _consent_outcomes(
    update: ProfileUpdate, profile: StoredProfile | None, *, rules: ConflictRules
) -> tuple[ConsentOutcome, ...]:
    stored = {(c.subscription, c.channel): c for c in (profile.consents if profile else ())}
    outcomes: list[ConsentOutcome] = []
    for consent in update.consents:
        channel = consent.channel.value
        new = consent.status.value
        old = stored.get((consent.subscription, channel))
        old_status = old.status if old is not None else None
        allowed = rules.consent_source(consent.subscription, channel)
        verdict: ValueVerdict
        why = None
        if allowed != update.source:
            verdict = ValueVerdict.KEPT
            why = "no such subscription" if allowed is None else f"consent source is {allowed}"
        elif old is None:
            verdict = ValueVerdict.NEW
        elif old.status == new:
            verdict = ValueVerdict.UNCHANGED
        elif to_micros(consent.changed_at) <= to_micros(old.changed_at):
            verdict = ValueVerdict.KEPT
            why = f"the stored consent is as new or newer ({old.changed_at.isoformat()})"
        else:
            verdict = ValueVerdict.CHANGED
        outcomes.append(
            ConsentOutcome(consent.subscription, channel, old_status, new, verdict, why)
        )
    return tuple(outcomes)


def _identity_note(found: Sequence[StoredProfile], merge_policy: str) -> str | None:
    if len(found) < 2:
        return None
    ids = " and ".join(str(p.profile_id) for p in found)
    if merge_policy == "reject":
        return f"its identities belong to profiles {ids}: the writer would reject it for review"
    return f"its identities belong to profiles {ids}: the writer would merge them into the first"


def _crm_identity(update: ProfileUpdate) -> Identity:
    return Identity("crm", f"{update.source}:{update.record_id}")


def _same(old: FieldValue, new: FieldValue) -> bool:
    # True == 1 in Python; a boolean attribute turning into a number is a change.
    return type(old) is type(new) and old == new
