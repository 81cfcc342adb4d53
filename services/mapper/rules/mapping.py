"""Field mapping: one ContactChange into the ProfileUpdate its source's rules make.

``map_change`` is a transformation in the Kafka Connect sense: it never mutates its
input and returns a new value. For one change:

1. A deletion detaches the record: a DELETE carrying its identities.
2. ``sync_if``: a record that does not match is left alone (no update), or detached
   when the source says ``when_unmatched: delete``.
3. Each mapped CRM field present in the change is transformed by its rule; computed
   attributes are built; defaults fill attributes still without a value. A value a
   rule cannot accept rejects the whole change (``RuleError``), never a silent null;
   or, when its rule's ``on_invalid`` (else the source's) is ``drop_field``, is left
   out as if the CRM had not sent it (no clear, no default) and reported as an
   ``invalid`` drop. The email field, the change's identity, always rejects.
4. Blanks never clear: a blank value is left out, unless the source owns the
   attribute and lists it in ``clears``; then it is an explicit clear.
5. Ownership: attributes the source may not write are dropped (and reported).
6. Consent: mapped checkboxes become subscription changes (only from the consent
   source; an unclear value rejects the change, or is dropped as in step 3).
7. Identities: the CRM id always; the email (validated, lower-cased) when present,
   also written to the ``email`` attribute unless the mapping maps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, NamedTuple

from services.core.contracts import (
    ConsentChange,
    ContactChange,
    FieldValue,
    Identity,
    Operation,
    ProfileUpdate,
    UpdateOperation,
)
from services.core.mapping_settings import Computed, FieldRule, ProfileSettings, writable
from services.core.sources.common import SourceBase
from services.mapper.rules.conditions import matches
from services.mapper.rules.consent import consent_changes
from services.mapper.rules.errors import InvalidValue, RuleError
from services.mapper.rules.expressions import (
    Expression,
    ExpressionError,
    Template,
    compile_expression,
    compile_template,
)
from services.mapper.rules.identity import CRM, EMAIL, match_key
from services.mapper.rules.normalise import normalise_email
from services.mapper.rules.transforms import apply_rule
from services.mapper.rules.values import is_blank

EMAIL_ATTRIBUTE: Final = "email"
# Sets of changed fields whose attributes are remembered per source (a bound on a
# source whose changes name ever new sets of fields).
TOUCHED_CACHE_SIZE: Final = 4096


DropCode = Literal["unmatched", "ownership", "blank", "stale", "invalid"]


class Touched(NamedTuple):
    """What a change touches of a record mapped before: its fresh fields, the
    attributes they feed (``CompiledSource.attributes_from``), and the identities the
    record already has (kept unless the email is among the fields)."""

    fields: frozenset[str]
    attributes: frozenset[str]
    identities: tuple[Identity, ...]


# Drop and Mapped are NamedTuples rather than frozen dataclasses: several are built
# per change, and a tuple is built in a fraction of the time.
class Drop(NamedTuple):
    """An attribute the rules left out of the update, and why (for the audit)."""

    attribute: str
    code: DropCode
    reason: str


class RuleStep(NamedTuple):
    """One field rule as the mapping runs it: the CRM field, the rule, and its text."""

    crm_field: str
    rule: FieldRule
    text: str


class Mapped(NamedTuple):
    """What one change becomes: an update (None when there is nothing to apply), and
    what the rules dropped on the way."""

    update: ProfileUpdate | None
    drops: tuple[Drop, ...] = ()
    rules: Mapping[str, str] = MappingProxyType({})
    """Which rule decided each attribute of the update (for the audit)."""
    invalid: tuple[InvalidValue, ...] = ()
    """The refused values ``drop_field`` left out (each also an ``invalid`` drop), with
    their refusal, for the log and the metrics."""


@dataclass(frozen=True)
class CompiledSource:
    """A source's rules with their expressions and templates compiled once."""

    name: str
    settings: SourceBase
    rules: tuple[tuple[str, FieldRule], ...]
    computed: Mapping[str, Expression | Template]
    maps_email: bool = field(default=False)
    inputs: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """The CRM fields each attribute is made from."""
    consent_fields: Mapping[str, str] = field(default_factory=dict)
    """Per subscription, the CRM field its consent rule reads (for the audit)."""
    _touched: dict[frozenset[str], frozenset[str]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _rules_for: dict[frozenset[str] | None, tuple[RuleStep, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def rules_for(self, only: frozenset[str] | None) -> tuple[RuleStep, ...]:
        """The field rules that make the attributes in ``only`` (all, for None), in
        their configured order, each with its text for the audit; remembered per set
        like ``attributes_from``."""
        found = self._rules_for.get(only)
        if found is None:
            found = tuple(
                RuleStep(crm_field, rule, f"map {crm_field} ({rule.type})")
                for crm_field, rule in self.rules
                if only is None or rule.attribute in only
            )
            if len(self._rules_for) < TOUCHED_CACHE_SIZE:
                self._rules_for[only] = found
        return found

    def attributes_from(self, fields: Iterable[str]) -> frozenset[str]:
        """The attributes a change of ``fields`` can affect (remembered per set of
        fields: a source's changes name the same few sets over and over)."""
        changed = frozenset(fields)
        touched = self._touched.get(changed)
        if touched is None:
            found = {a for a, made_of in self.inputs.items() if made_of & changed}
            if self.settings.email_field in changed and not self.maps_email:
                found.add(EMAIL_ATTRIBUTE)
            touched = frozenset(found)
            if len(self._touched) < TOUCHED_CACHE_SIZE:
                self._touched[changed] = touched
        return touched

    @classmethod
    def of(cls, name: str, settings: SourceBase) -> CompiledSource:
        rules = tuple(settings.field_rules())
        computed: dict[str, Expression | Template] = {}
        for attribute, spec in settings.computed.items():
            if spec.template is not None:
                computed[attribute] = compile_template(spec.template)
            elif spec.expression is not None:
                computed[attribute] = compile_expression(spec.expression)
        maps_email = any(rule.attribute == EMAIL_ATTRIBUTE for _f, rule in rules)
        inputs: dict[str, frozenset[str]] = {}
        for crm_field, rule in rules:
            inputs[rule.attribute] = inputs.get(rule.attribute, frozenset()) | {crm_field}
        for attribute, compiled_rule in computed.items():
            inputs[attribute] = inputs.get(attribute, frozenset()) | compiled_rule.fields
        consent_fields = {rule.subscription: rule.field for rule in settings.consent}
        return cls(name, settings, rules, computed, maps_email, inputs, consent_fields)


def map_change(
    change: ContactChange,
    *,
    source: CompiledSource,
    profile: ProfileSettings,
    fields: Mapping[str, FieldValue] | None = None,
    changed: Touched | None = None,
) -> Mapped:
    """Map ``change`` (with ``fields`` in place of its own, when given: the whole
    record as the mapper's state knows it).

    With ``changed``, only what those fields feed is mapped (steps 3 to 7): the
    attributes made from them, the consents they carry, and the identities when the
    email is among them (else ``changed.identities``). The caller vouches that the
    rest was mapped under the same rules before and stands.
    """
    fields = change.fields if fields is None else fields
    settings = source.settings
    if changed is not None and settings.email_field not in changed.fields:
        identities = changed.identities
    else:
        identities = _identities(change, fields, settings)
    # Step 1
    if change.operation is Operation.DELETE:
        return Mapped(_update(change, source, identities, UpdateOperation.DELETE))
    # Step 2
    if settings.sync_if is not None and not matches(settings.sync_if, fields):
        if settings.when_unmatched == "delete":
            return Mapped(_update(change, source, identities, UpdateOperation.DELETE))
        return Mapped(None, (Drop("*", "unmatched", "record does not match sync_if"),))
    # Step 3
    only = None if changed is None else changed.attributes
    values, rules, invalid = _attribute_values(fields, source, only)
    _identity_and_defaults(
        values, rules, identities=identities, source=source, only=only, invalid=invalid
    )
    # Steps 4 and 5
    attributes: dict[str, FieldValue] = {}
    cleared: list[str] = []
    drops: list[Drop] = [_invalid_drop(refused) for refused in invalid]
    for attribute, value in values.items():
        if not writable(profile, source=change.source, attribute=attribute):
            drops.append(Drop(attribute, "ownership", f"{change.source} does not own it"))
        elif not is_blank(value):
            attributes[attribute] = value
        elif attribute in settings.clears:
            cleared.append(attribute)
            rules[attribute] = f"clear ({rules[attribute]})"
        else:
            drops.append(Drop(attribute, "blank", "blank, and a blank never clears"))
    # Step 6
    consent_rules = settings.consent
    if changed is not None:
        consent_rules = [rule for rule in consent_rules if rule.field in changed.fields]
    consents, invalid_consents = consent_changes(
        fields,
        consent_rules,
        source=change.source,
        profile=profile,
        changed_at=change.source_modified_at,
        on_invalid=settings.on_invalid,
    )
    if invalid_consents:
        invalid = [*invalid, *invalid_consents]
        drops.extend(_invalid_drop(refused) for refused in invalid_consents)
    update = _update(
        change,
        source,
        identities,
        UpdateOperation.UPSERT,
        attributes=attributes,
        cleared=tuple(sorted(cleared)),
        consents=consents,
    )
    return Mapped(update, tuple(drops), rules, tuple(invalid))


def _identity_and_defaults(
    values: dict[str, FieldValue],
    rules: dict[str, str],
    *,
    identities: tuple[Identity, ...],
    source: CompiledSource,
    only: frozenset[str] | None,
    invalid: list[InvalidValue],
) -> None:
    """The email attribute from the identity, and defaults for attributes still blank
    (only those in ``only``, when given). An attribute whose value was dropped as
    invalid gets no default: it keeps what it had, as if its field had not come."""
    settings = source.settings
    email = next((i.value for i in identities if i.kind == EMAIL), None)
    if email is not None and not source.maps_email and (only is None or EMAIL_ATTRIBUTE in only):
        values[EMAIL_ATTRIBUTE] = email
        rules[EMAIL_ATTRIBUTE] = f"identity {settings.email_field}"
    dropped = {refused.attribute for refused in invalid}
    for attribute, default in settings.defaults.items():
        if (
            (only is None or attribute in only)
            and is_blank(values.get(attribute))
            and attribute not in dropped
        ):
            values[attribute] = default
            rules[attribute] = "default"


def _attribute_values(
    fields: Mapping[str, FieldValue], source: CompiledSource, only: frozenset[str] | None
) -> tuple[dict[str, FieldValue], dict[str, str], list[InvalidValue]]:
    """Every attribute's value and rule (only those in ``only``, when given), and the
    values refused and dropped."""
    settings = source.settings
    region = settings.default_region
    values: dict[str, FieldValue] = {}
    rules: dict[str, str] = {}
    invalid: list[InvalidValue] = []
    for crm_field, rule, text in source.rules_for(only):
        if crm_field in fields:
            try:
                value = apply_rule(fields[crm_field], rule, where=crm_field, default_region=region)
            except RuleError as error:
                if crm_field == settings.email_field or not _drops(rule, settings):
                    raise
                invalid.append(InvalidValue(rule.attribute, error))
                continue
            values[rule.attribute] = value
            rules[rule.attribute] = text
    for attribute, compiled in source.computed.items():
        if only is not None and attribute not in only:
            continue
        spec = settings.computed[attribute]
        try:
            values[attribute] = _computed_value(
                compiled, spec, fields=fields, attribute=attribute, region=region
            )
        except RuleError as error:
            if not _drops(spec, settings):
                raise
            invalid.append(InvalidValue(attribute, error))
            continue
        rules[attribute] = f"computed {compiled.text!r}"
    return values, rules, invalid


def _computed_value(
    compiled: Expression | Template,
    spec: Computed,
    *,
    fields: Mapping[str, FieldValue],
    attribute: str,
    region: str | None,
) -> FieldValue:
    """The computed attribute's value; RuleError naming the attribute when an
    expression fails on the record's values or its result cannot be coerced."""
    raw: FieldValue
    if isinstance(compiled, Template):
        raw = compiled.render(fields)
    else:
        try:
            raw = compiled.evaluate(fields)
        except ExpressionError as error:
            raise RuleError(attribute, str(error), value=error.value) from error
    rule = FieldRule(attribute=attribute, type=spec.type)
    return apply_rule(raw, rule, where=attribute, default_region=region)


def _drops(rule: FieldRule | Computed, settings: SourceBase) -> bool:
    """Whether a value ``rule`` refuses is dropped rather than rejecting the change."""
    return (rule.on_invalid or settings.on_invalid) == "drop_field"


def _invalid_drop(refused: InvalidValue) -> Drop:
    # The reason the rejection would have carried, value and all: the audit holds
    # the record's values anyway.
    return Drop(refused.attribute, "invalid", str(refused.error))


def _identities(
    change: ContactChange, fields: Mapping[str, FieldValue], settings: SourceBase
) -> tuple[Identity, ...]:
    crm = Identity(CRM, f"{change.source}:{change.record_id}")
    raw = fields.get(settings.email_field)
    if is_blank(raw):
        return (crm,)
    email = normalise_email(raw, where=settings.email_field)
    return (Identity(EMAIL, email), crm)


def _update(
    change: ContactChange,
    source: CompiledSource,
    identities: tuple[Identity, ...],
    operation: UpdateOperation,
    *,
    attributes: Mapping[str, FieldValue] | None = None,
    cleared: tuple[str, ...] = (),
    consents: tuple[ConsentChange, ...] = (),
) -> ProfileUpdate:
    # Positional: one is built for every change.
    return ProfileUpdate(
        match_key(identities, prefer=source.settings.match_key),
        change.source,
        change.record_id,
        change.event_id,
        operation,
        change.source_modified_at,
        change.received_at,
        identities,
        attributes or {},
        change.sequence,
        source.settings.mapping_version,
        cleared,
        consents,
    )


__all__ = [
    "CompiledSource",
    "Drop",
    "InvalidValue",
    "Mapped",
    "RuleError",
    "Touched",
    "is_blank",
    "map_change",
]
