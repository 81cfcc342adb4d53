"""One source record's memory, and what a change to it becomes.

The mapper keeps, per source record, the latest value and version of every CRM field
it has applied, and the attributes, consents and identities it last emitted.
``apply_change`` is the whole stateful decision for one change, as a pure function
(old state and change in, new state and outputs out), so that the stream engine
only stores and sends what it returns:

1. **Stale versions.** A version is (source modification time, sequence). A field
   whose version is not newer than the one applied is dropped: webhook, poll and
   full sync can deliver a record in any order, and a replay of the same change is
   not newer than itself, so applying a change twice equals applying it once. A
   deletion is stale when anything newer was applied; fields older than a deletion
   are stale too.
2. **The whole record.** Fresh fields are merged into the fields already known and
   the source's rules map the merged record. A partial change (a webhook naming
   one property) is thereby judged by the record's other fields too: sync
   conditions and computed attributes see the whole record.
3. **Change detection.** Only attributes whose value differs from what this source
   last emitted for the record, clears of attributes it had set, and consents that
   differ travel on; when nothing differs there is no update at all.
4. **Explanations.** Every emitted attribute and consent comes with the rule that
   decided it and the value it replaces; every drop says why. Drops are reported
   for the attributes and consents this change's fresh fields feed, not for the
   rest of the record, which an earlier change already accounted for. A value
   dropped as invalid (``on_invalid: drop_field``) is still remembered as the
   record's field, so that its version orders later changes; its attribute keeps
   what this source last emitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple

import msgspec
import orjson

from services.core import versions
from services.core.contracts import (
    ConsentChange,
    ContactChange,
    FieldValue,
    Identity,
    Operation,
    ProfileUpdate,
    UpdateOperation,
)
from services.core.mapping_settings import ProfileSettings
from services.core.versions import Version
from services.mapper.rules.consent import CONSENT_PREFIX
from services.mapper.rules.errors import InvalidValue
from services.mapper.rules.identity import EMAIL, match_key
from services.mapper.rules.mapping import CompiledSource, Drop, Touched, map_change
from services.mapper.rules.values import is_blank

OLDEST: Final[Version] = (-(2**63), -(2**63))
STATE_FORMAT: Final = 1
"""The JSON format (``to_json``), still read: states an earlier version stored."""
STATE_FORMAT_TAG: Final = b"\x02"
"""The first byte of a state in the current format (MessagePack, ``encode``)."""
# The default of a state's mappings: shared, so read-only.
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


def version_of(change: ContactChange) -> Version:
    """(source modification time in microseconds since the epoch, sequence)."""
    return versions.version_of(change.source_modified_at, change.sequence)


class RecordState(NamedTuple):
    """What the mapper remembers of one source record.

    A NamedTuple rather than a frozen dataclass: one is read, copied and written per
    change, and a tuple is built several times faster.
    """

    fields: Mapping[str, FieldValue] = _EMPTY
    versions: Mapping[str, Version] = _EMPTY
    """Per field, the newest version applied."""
    valued: Mapping[str, Version] = _EMPTY
    """Per field, the version of the newest non-blank value applied."""
    deleted: Version | None = None
    attributes: Mapping[str, FieldValue] = _EMPTY
    consents: Mapping[str, str] = _EMPTY
    identities: tuple[Identity, ...] = ()
    mapping_version: int = 0

    def but(self, **changes: Any) -> RecordState:
        """A copy with ``changes``."""
        return self._replace(**changes)

    def newest(self) -> Version:
        candidates = [*self.versions.values(), self.deleted or OLDEST]
        return max(candidates)

    def encode(self) -> bytes:
        """The state as stored: a format byte, then the tuple as MessagePack.

        msgspec writes and reads the NamedTuple (versions as tuples, identities as
        Identity) in C: a state is read and written once per change, and JSON with
        the conversions back to tuples took a fifth of the mapper's time per change.
        """
        return STATE_FORMAT_TAG + _STATE_ENCODER.encode(self)

    @classmethod
    def decode(cls, raw: bytes) -> RecordState:
        """A stored state, in the current format or the JSON one before it (states
        written by an earlier version are read, and written back in this format)."""
        if raw[:1] == STATE_FORMAT_TAG:
            try:
                return _STATE_DECODER.decode(memoryview(raw)[1:])
            except msgspec.DecodeError as exc:
                raise ValueError(f"undecodable record state: {exc}") from exc
        if raw[:1] == b"{":
            return cls.from_json(orjson.loads(raw))
        raise ValueError(f"unknown record state format {raw[:1]!r}")

    def to_json(self) -> dict[str, Any]:
        # Versions are tuples, which are JSON arrays; the mappings are dicts already on
        # the hot path, copied only when they are not.
        return {
            "v": STATE_FORMAT,
            "f": _plain(self.fields),
            "fv": _plain(self.versions),
            "vv": _plain(self.valued),
            "d": self.deleted,
            "a": _plain(self.attributes),
            "c": _plain(self.consents),
            "i": [tuple(identity) for identity in self.identities],
            "m": self.mapping_version,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecordState:
        if data.get("v") != STATE_FORMAT:
            raise ValueError(f"unknown record state format {data.get('v')!r}")
        deleted = data["d"]
        return cls(
            fields=data["f"],
            versions={name: (v[0], v[1]) for name, v in data["fv"].items()},
            valued={name: (v[0], v[1]) for name, v in data["vv"].items()},
            deleted=(deleted[0], deleted[1]) if deleted is not None else None,
            attributes=data["a"],
            consents=data["c"],
            identities=tuple(Identity(kind, value) for kind, value in data["i"]),
            mapping_version=data["m"],
        )


def _plain_mapping(value: object) -> object:
    # The defaults are read-only mapping proxies, which MessagePack takes as maps.
    if isinstance(value, MappingProxyType):
        return dict(value)
    raise NotImplementedError(f"cannot store a {type(value).__name__} in a record state")


_STATE_ENCODER: Final = msgspec.msgpack.Encoder(enc_hook=_plain_mapping)
_STATE_DECODER: Final = msgspec.msgpack.Decoder(RecordState)


class AttributeChange(NamedTuple):
    """One attribute (or consent) the update changes, for the audit."""

    attribute: str
    old: FieldValue
    new: FieldValue
    rule: str


class Step(NamedTuple):
    """The outcome of one change: the record's new state (None: unchanged), the update
    to emit (None: nothing to apply), what it changes, and what was dropped (the
    values dropped as invalid also with their refusal, in ``invalid``)."""

    state: RecordState | None
    update: ProfileUpdate | None
    changes: tuple[AttributeChange, ...] = ()
    drops: tuple[Drop, ...] = ()
    invalid: tuple[InvalidValue, ...] = ()


def apply_change(
    state: RecordState | None,
    change: ContactChange,
    *,
    source: CompiledSource,
    profile: ProfileSettings,
    incremental: bool = True,
) -> Step:
    """Raises what the rules raise (RuleError) for a change that cannot be mapped; the
    state is then left as it was.

    ``incremental=False`` maps the whole record on every change, as the incremental
    mapping must decide alike (a property test holds the two together)."""
    known = state or RecordState()
    version = version_of(change)
    if change.operation is Operation.DELETE:
        return _delete(known, change, version, source=source, profile=profile)
    deleted = known.deleted or OLDEST
    fresh: dict[str, FieldValue] = {}
    versions = dict(known.versions)
    valued = dict(known.valued)
    stale: list[Drop] = []
    for name, value in change.fields.items():
        blank = is_blank(value)
        if version <= deleted:
            applies = False
        elif version > versions.get(name, OLDEST):
            applies = True
        else:
            # Older than the field's newest version, which was blank: in version order
            # this value would have come first and the blank left it in place, so it
            # applies if it is the newest value the field has had (and the source
            # does not treat blanks as clears).
            applies = (
                not blank
                and version > valued.get(name, OLDEST)
                and not (source.attributes_from((name,)) & set(source.settings.clears))
            )
        if not applies:
            stale.append(Drop(name, "stale", "a newer version of this field was already applied"))
            continue
        fresh[name] = value
        versions[name] = max(version, versions.get(name, OLDEST))
        if not blank:
            valued[name] = version
    if not fresh:
        return Step(None, None, drops=tuple(stale))
    merged = {**known.fields, **fresh}
    fresh_fields = frozenset(fresh)
    touched = source.attributes_from(fresh_fields)
    changed = None
    if (
        incremental
        and known.identities
        and known.mapping_version == source.settings.mapping_version
        and source.settings.sync_if is None
    ):
        # Mapped before under these rules, and not detached since: what the fresh
        # fields do not feed stands as it was, so only what they feed is mapped. (With
        # sync_if a record may have been left alone while fields changed: not so.)
        changed = Touched(fresh_fields, touched, known.identities)
    mapped = map_change(change, source=source, profile=profile, fields=merged, changed=changed)
    # Most drops are of attributes the fresh fields feed: that test first, no call.
    drops = [
        *stale,
        *(
            d
            for d in mapped.drops
            if d.attribute in touched or _fed(d.attribute, fresh, source=source)
        ),
    ]
    invalid = tuple(
        i
        for i in mapped.invalid
        if i.attribute in touched or _fed(i.attribute, fresh, source=source)
    )
    update = mapped.update
    if update is None:
        # Unmatched and left alone: the record's fields are still remembered, so a
        # later partial change is judged by the whole record.
        remembered = known.but(fields=merged, versions=versions, valued=valued)
        return Step(remembered, None, drops=tuple(drops))
    if update.operation is not UpdateOperation.UPSERT:
        # Detached by sync_if: once, by every identity the record had.
        detached = known.but(
            fields=merged,
            versions=versions,
            valued=valued,
            attributes={},
            consents={},
            identities=(),
        )
        if not known.attributes and not known.identities:
            return Step(detached, None, drops=tuple(drops))
        return Step(detached, _with_known_identities(update, known), drops=tuple(drops))
    update = _blank_keeps_email(update, known, merged, source=source)
    update = _versioned_identities(update, versions, known.deleted, source=source)
    # The fields, their versions and the known attributes go into one new state, built
    # at once: a NamedTuple's _replace costs as much as building it twice.
    step = _changed(known, (merged, versions, valued), update, mapped.rules, drops, source=source)
    return step._replace(invalid=invalid) if invalid else step


def _fed(attribute: str, fresh: Mapping[str, FieldValue], *, source: CompiledSource) -> bool:
    """For a drop of something the fresh fields feed no attribute of: whether it
    stands for the whole change (``*``) or names a consent a fresh field decides."""
    if attribute == "*":
        return True
    subscription = attribute.removeprefix(CONSENT_PREFIX)
    return subscription != attribute and source.consent_fields.get(subscription) in fresh


def _changed(
    known: RecordState,
    remembered: tuple[Mapping[str, FieldValue], Mapping[str, Version], Mapping[str, Version]],
    update: ProfileUpdate,
    rules: Mapping[str, str],
    drops: list[Drop],
    *,
    source: CompiledSource,
) -> Step:
    before = known.attributes
    # Under a new mapping version every attribute travels once, so that the store
    # holds each under the version that made it (and the status can tell when a full
    # sync has brought every profile to the current mapping).
    remapped = known.mapping_version != update.mapping_version
    changes: list[AttributeChange] = []
    attributes: dict[str, FieldValue] = {}
    for attribute, value in update.attributes.items():
        if not remapped and attribute in before and _same(before[attribute], value):
            continue
        attributes[attribute] = value
        changes.append(AttributeChange(attribute, before.get(attribute), value, rules[attribute]))
    # Most changes clear nothing and change no consent: those steps are skipped whole.
    cleared = tuple([a for a in update.cleared if a in before]) if update.cleared else ()
    for attribute in cleared:
        changes.append(AttributeChange(attribute, before[attribute], None, rules[attribute]))
    consents = _changed_consents(known.consents, update.consents) if update.consents else ()
    for c in consents:
        field = source.consent_fields.get(c.subscription, "?")
        changes.append(
            AttributeChange(
                CONSENT_PREFIX + c.subscription,
                known.consents.get(c.subscription),
                c.status.value,
                f"consent {field} ({c.channel.value.lower()})",
            )
        )
    identities_changed = tuple(update.identities) != known.identities
    if cleared:
        new_attributes = {
            **{a: v for a, v in before.items() if a not in cleared},
            **attributes,
        }
    else:
        new_attributes = {**before, **attributes}
    # A state's mappings are never changed in place, so unchanged ones are shared.
    new_consents = (
        {**known.consents, **{c.subscription: c.status.value for c in consents}}
        if consents
        else known.consents or {}
    )
    fields, versions, valued = remembered
    new_state = RecordState(
        fields,
        versions,
        valued,
        known.deleted,
        new_attributes,
        new_consents,
        tuple(update.identities),
        update.mapping_version,
    )
    if not changes and not identities_changed:
        return Step(new_state, None, drops=tuple(drops))
    emitted = update.narrowed(attributes, cleared, consents)
    return Step(new_state, emitted, tuple(changes), tuple(drops))


def _delete(
    known: RecordState,
    change: ContactChange,
    version: Version,
    *,
    source: CompiledSource,
    profile: ProfileSettings,
) -> Step:
    if version <= known.newest():
        # Still remembered: a field older than this deletion is stale whenever it
        # comes, as it would be had the deletion come in version order.
        deleted = max(version, known.deleted or OLDEST)
        remembered = known.but(deleted=deleted) if deleted != known.deleted else None
        return Step(remembered, None, drops=(Drop("*", "stale", "a newer version was applied"),))
    mapped = map_change(change, source=source, profile=profile)
    update = mapped.update
    if update is not None:
        update = _with_known_identities(update, known)
    forgotten = RecordState(versions=known.versions, valued=known.valued, deleted=version)
    changes = tuple(
        AttributeChange(attribute, value, None, "delete")
        for attribute, value in known.attributes.items()
    )
    return Step(forgotten, update, changes)


def _versioned_identities(
    update: ProfileUpdate,
    versions: Mapping[str, Version],
    deleted: Version | None,
    *,
    source: CompiledSource,
) -> ProfileUpdate:
    """The update with the version of its identities: its email field's, or, when the
    record was deleted since, just after the deletion (it exists again from this
    change). The writer keeps a record's identities by it, so a late change of another
    field carries the emails the record has and changes none of them."""
    version = versions.get(source.settings.email_field, OLDEST)
    if deleted is not None:
        version = max(version, (deleted[0], deleted[1] + 1))
    if version == (update.identities_version or (-1, -1)):
        return update
    return update._replace(identities_version=version)


def _blank_keeps_email(
    update: ProfileUpdate,
    known: RecordState,
    fields: Mapping[str, FieldValue],
    *,
    source: CompiledSource,
) -> ProfileUpdate:
    """A blank email field never lets go of the record's email (the profile store
    retires an email its record stops asserting), unless the source clears what the
    field feeds: then a blank is the CRM saying the contact has no email."""
    email_field = source.settings.email_field
    if not is_blank(fields.get(email_field)) or not known.identities:
        return update
    if any(identity.kind == EMAIL for identity in update.identities):
        return update
    kept = tuple(identity for identity in known.identities if identity.kind == EMAIL)
    if not kept or source.attributes_from((email_field,)) & set(source.settings.clears):
        return update
    identities = (*kept, *update.identities)
    return update._replace(
        identities=identities,
        match_key=match_key(identities, prefer=source.settings.match_key),
    )


def _with_known_identities(update: ProfileUpdate, known: RecordState) -> ProfileUpdate:
    """A detaching update may carry no email; the writer finds the profile by every
    identity the record had."""
    if not known.identities:
        return update
    carried = tuple(dict.fromkeys((*known.identities, *update.identities)))
    return update._replace(identities=carried)


def _changed_consents(
    before: Mapping[str, str], consents: tuple[ConsentChange, ...]
) -> tuple[ConsentChange, ...]:
    return tuple(c for c in consents if before.get(c.subscription) != c.status.value)


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return mapping if type(mapping) is dict else dict(mapping)


def _same(old: FieldValue, new: FieldValue) -> bool:
    # True == 1 in Python; a boolean attribute turning into a number is a change.
    return type(old) is type(new) and old == new
