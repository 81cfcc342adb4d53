"""The mapping config: how a source's CRM fields become profile attributes and consent.

Per source (``sources.<name>``):

- ``mapping``: CRM field -> attribute name, or a ``FieldRule`` (a transformation), or a
  list of rules (one CRM field feeding several attributes, e.g. a full name split
  into first and last name);
- ``computed``: attribute -> a value built from several CRM fields (a template or a
  small expression);
- ``defaults``: attribute -> the value a record gets when the source gives none;
- ``sync_if`` and ``when_unmatched``: which records sync, and what happens to a record
  that stops matching;
- ``consent``: CRM checkboxes -> opt-in / opt-out of a subscription on one channel;
- ``clears``: attributes this source may clear by sending a blank (it must own them);
- ``default_region``: where phone numbers without a country code are from;
- ``on_invalid``: what a value a rule cannot accept does when the rule does not say:
  reject the whole change, or drop that field and apply the rest.

Across sources (``profile``): which source owns each attribute and how conflicts
between sources resolve, and which source is the consent source of each
subscription. Settings cross-checks sources against it at start-up.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import Field, field_validator, model_validator

from services.core.settings_base import Strict

FieldValueType = Literal[
    "keep",
    "string",
    "number",
    "integer",
    "boolean",
    "date",
    "datetime",
    "multi",
    "email",
    "phone",
    "currency",
]
ATTRIBUTE_NAME: Final = r"^[a-z][a-z0-9_]{0,62}$"
MAX_CONSENT_RULES: Final = 100
ScalarSetting = str | int | float | bool
OnInvalid = Literal["reject", "drop_field"]
ON_INVALID_RULE: Final = (
    "a value this rule cannot accept: 'reject' the whole change (to the rejected topic, "
    "replayable once fixed), or 'drop_field': leave it out and apply the rest of the "
    "change; the attribute keeps its stored value, as if the CRM had not sent the "
    "field (no clear, no default), and the audit records the drop with code 'invalid'. "
    "Unset: the source's on_invalid"
)


class FieldRule(Strict):
    """One CRM field into one attribute, transformed on the way.

    Applied in this order: ``values`` (a value map), then ``split`` (one part of a
    text), then the coercion to ``type``. A value that cannot be coerced rejects the
    change with the field and the reason, or is dropped (``on_invalid``); it never
    becomes a silent null.
    """

    attribute: str = Field(pattern=ATTRIBUTE_NAME)
    type: FieldValueType = Field(
        default="keep",
        description="keep the CRM's value as it is, or coerce it (email and phone are "
        "also normalised: lower-cased email, E.164 phone; currency is an ISO 4217 code)",
    )
    values: dict[str, ScalarSetting] | None = Field(
        default=None,
        description="a value map, by the CRM value's text (e.g. status codes to names)",
    )
    unmapped: Literal["reject", "keep", "blank"] = Field(
        default="reject",
        description="a value the value map does not list: reject the change, keep the "
        "value as it is, or treat it as blank",
    )
    split: Literal["first", "rest", "last"] | None = Field(
        default=None,
        description="take a part of a text split on whitespace (first word, the rest "
        "after it, or the last word): a full name into first and last name",
    )
    separator: str = Field(
        default=";", min_length=1, description="between the items of a multi-select text"
    )
    timezone: str = Field(
        default="UTC", description="the zone of dates and times written without one"
    )
    formats: list[str] = Field(
        default_factory=list,
        description="strptime formats tried after ISO 8601, e.g. '%d.%m.%Y'",
    )
    on_invalid: OnInvalid | None = Field(
        default=None,
        description=f"{ON_INVALID_RULE} (an unmapped value-map entry with unmapped: "
        "reject, a split of a non-text, a value that cannot be coerced to type). Not "
        "for the source's email_field: the email is the change's identity, and an "
        "invalid one always rejects the change",
    )


class Computed(Strict):
    """An attribute built from several CRM fields: a template or an expression."""

    template: str | None = Field(
        default=None,
        description="text with {field} placeholders, e.g. '{firstname} {lastname}'; "
        "blank when every placeholder is blank",
    )
    expression: str | None = Field(
        default=None,
        description="a small expression over fields: + - * /, comparisons, and or not, "
        "'x if c else y', and lower() upper() trim() coalesce() round()",
    )
    type: FieldValueType = "keep"
    on_invalid: OnInvalid | None = Field(
        default=None,
        description=f"{ON_INVALID_RULE} (an expression that fails on the record's "
        "values, e.g. a division by zero, or a result that cannot be coerced to type)",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Computed:
        if (self.template is None) == (self.expression is None):
            raise ValueError("a computed attribute has exactly one of 'template' or 'expression'")
        return self


Operator = Literal["eq", "ne", "in", "not_in", "exists", "missing", "gt", "ge", "lt", "le"]


class Clause(Strict):
    """One test of one CRM field, e.g. ``{field: customer_type, op: eq, value: A}``."""

    field: str = Field(min_length=1)
    op: Operator
    value: ScalarSetting | list[ScalarSetting] | None = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Clause:
        if self.op in ("exists", "missing"):
            if self.value is not None:
                raise ValueError(f"'{self.op}' takes no value")
        elif self.op in ("in", "not_in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"'{self.op}' takes a non-empty list of values")
        elif self.value is None or isinstance(self.value, list):
            raise ValueError(f"'{self.op}' takes one value")
        return self


class Condition(Strict):
    """Clauses combined: every one (``all``) or at least one (``any``); nestable."""

    all: list[Clause | Condition] | None = None
    any: list[Clause | Condition] | None = None

    @model_validator(mode="after")
    def _one_combinator(self) -> Condition:
        if (self.all is None) == (self.any is None):
            raise ValueError("a condition has exactly one of 'all' or 'any'")
        if not (self.all or self.any):
            raise ValueError("a condition needs at least one clause")
        return self


class ConsentRule(Strict):
    """A CRM checkbox -> opt-in or opt-out of one subscription on one channel."""

    field: str = Field(min_length=1)
    subscription: str = Field(pattern=ATTRIBUTE_NAME)
    channel: Literal["email", "sms"]
    checked_means: Literal["opt_in", "opt_out"] = Field(
        default="opt_in",
        description="what a checked box means: opt_in for 'subscribed', opt_out for "
        "'unsubscribed' or 'do not contact' boxes",
    )
    on_invalid: OnInvalid | None = Field(
        default=None,
        description="a value that is not clearly checked or unchecked (consent is never "
        "guessed): 'reject' the whole change, or 'drop_field': leave this "
        "subscription's consent as it is and apply the rest of the change (the audit "
        "records the drop with code 'invalid'). Unset: the source's on_invalid",
    )


MappingTarget = Annotated[str, Field(pattern=ATTRIBUTE_NAME)] | FieldRule | list[FieldRule]


class SourceMapping(Strict):
    """The mapping part of a source's settings (``SourceBase`` inherits it)."""

    mapping: dict[str, MappingTarget] = Field(
        default_factory=dict,
        description="CRM field -> attribute, or {attribute, type, values, split, ...}",
    )
    computed: dict[Annotated[str, Field(pattern=ATTRIBUTE_NAME)], Computed] = Field(
        default_factory=dict
    )
    defaults: dict[Annotated[str, Field(pattern=ATTRIBUTE_NAME)], ScalarSetting] = Field(
        default_factory=dict, description="attribute -> value when the source gives none"
    )
    sync_if: Condition | None = None
    when_unmatched: Literal["keep", "delete"] = Field(
        default="keep",
        description="a record that stops matching sync_if: leave its profile as it is, "
        "or detach the record from its profile",
    )
    consent: list[ConsentRule] = Field(default_factory=list, max_length=MAX_CONSENT_RULES)
    clears: list[str] = Field(
        default_factory=list,
        description="attributes this source owns and may clear by sending a blank",
    )
    default_region: str | None = Field(
        default=None,
        pattern=r"^[A-Z]{2}$",
        description="ISO 3166 country of phone numbers written without a country code",
    )
    on_invalid: OnInvalid = Field(
        default="reject",
        description="for mapping, computed and consent rules that set no on_invalid: a "
        "value a rule cannot accept rejects the whole change ('reject'), or is left out "
        "while the rest applies ('drop_field'). Never for the email_field: an invalid "
        "email (the change's identity) always rejects the change",
    )
    mapping_version: int = Field(default=1, ge=1)

    @field_validator("consent")
    @classmethod
    def _one_rule_per_subscription_and_channel(cls, rules: list[ConsentRule]) -> list[ConsentRule]:
        seen: set[tuple[str, str]] = set()
        for rule in rules:
            if (rule.subscription, rule.channel) in seen:
                raise ValueError(
                    f"{rule.subscription}/{rule.channel} is mapped twice; one CRM field "
                    "decides one subscription on one channel"
                )
            seen.add((rule.subscription, rule.channel))
        return rules

    def field_rules(self) -> list[tuple[str, FieldRule]]:
        """Every (CRM field, rule) pair, the shorthand ``field: attribute`` included."""
        rules: list[tuple[str, FieldRule]] = []
        for field, target in self.mapping.items():
            if isinstance(target, str):
                rules.append((field, FieldRule(attribute=target)))
            elif isinstance(target, FieldRule):
                rules.append((field, target))
            else:
                rules.extend((field, rule) for rule in target)
        return rules

    def identity_dropped(self, email_field: str) -> str | None:
        """Why the config is wrong when a mapping rule of ``email_field`` (the
        identity) says drop_field, else None."""
        if any(
            crm_field == email_field and rule.on_invalid == "drop_field"
            for crm_field, rule in self.field_rules()
        ):
            return (
                f"mapping.{email_field}: on_invalid: drop_field cannot apply to the "
                "email field, the change's identity; an invalid email always rejects "
                "the change"
            )
        return None

    def attributes(self) -> set[str]:
        """Every attribute this source can write."""
        mapped = {rule.attribute for _field, rule in self.field_rules()}
        return mapped | set(self.computed) | set(self.defaults)


Policy = Literal["owner_only", "last_writer_wins", "source_priority"]


class AttributePolicy(Strict):
    """Who may write an attribute, and which write wins when several may."""

    policy: Policy = "owner_only"
    owner: str | None = Field(default=None, description="the source owning it (owner_only)")
    priority: list[str] = Field(
        default_factory=list, description="sources, strongest first (source_priority)"
    )

    @model_validator(mode="after")
    def _policy_settings(self) -> AttributePolicy:
        if self.policy == "owner_only" and self.owner is None:
            raise ValueError("owner_only names its 'owner'")
        if self.policy == "source_priority" and len(self.priority) < 2:
            raise ValueError("source_priority lists at least two sources in 'priority'")
        return self

    def may_write(self, source: str) -> bool:
        if self.policy == "owner_only":
            return source == self.owner
        if self.policy == "source_priority":
            return source in self.priority
        return True


class Subscription(Strict):
    channel: Literal["email", "sms"]
    source: str = Field(description="the consent source: the only one that may change it")


RetiredIdentityPolicy = Literal["stop_matching", "keep_matching"]
AtLimit = Literal["review", "keep_oldest"]


class IdentityLimit(Strict):
    """The most identities of one kind a profile may hold, and what happens beyond."""

    max: int | None = Field(default=None, ge=1, description="per profile; unset: no limit")
    max_per_source: int | None = Field(
        default=None,
        ge=1,
        description="crm identities only: the most records of one source a profile holds",
    )
    at_limit: AtLimit = Field(
        default="review",
        description="'review': the change that would pass the limit is rejected (the "
        "rejected topic, replayable once resolved); 'keep_oldest': the profile keeps the "
        "identities it has and the change's extra ones are left out (a merge past a limit "
        "always goes to review)",
    )


def _default_limits() -> dict[str, IdentityLimit]:
    # See docs/identity.md for why these defaults.
    return {"email": IdentityLimit(max=5), "crm": IdentityLimit(max=25)}


class IdentitySettings(Strict):
    retired: RetiredIdentityPolicy = Field(
        default="stop_matching",
        description="an identity no source record asserts any more (the email changed, "
        "the record was deleted or detached): 'stop_matching' keeps it only as history; "
        "'keep_matching' lets it go on finding its profile (a CRM record id never does)",
    )
    limits: dict[str, IdentityLimit] = Field(
        default_factory=_default_limits,
        description="per identity kind ('email', 'crm'); kinds not named have no limit",
    )

    @model_validator(mode="after")
    def _per_source_is_for_crm(self) -> IdentitySettings:
        for kind, limit in self.limits.items():
            if limit.max_per_source is not None and kind != "crm":
                raise ValueError(f"limits.{kind}: max_per_source applies to crm identities only")
        return self


class ProfileSettings(Strict):
    attributes: dict[Annotated[str, Field(pattern=ATTRIBUTE_NAME)], AttributePolicy] = Field(
        default_factory=dict,
        description="who writes each attribute: an attribute one source maps is owned by "
        "it; one several sources map and nobody declares is last-writer-wins, with no "
        "owner (so none of them may clear it)",
    )
    subscriptions: dict[Annotated[str, Field(pattern=ATTRIBUTE_NAME)], Subscription] = Field(
        default_factory=dict
    )
    on_identity_conflict: Literal["merge", "reject"] = Field(
        default="merge",
        description="a change whose identities belong to two profiles: merge them into "
        "the one its match key finds, or reject the change for review",
    )
    identities: IdentitySettings = Field(default_factory=IdentitySettings)


Problem = tuple[str, str]
"""Where in the config (a dotted path) and what is wrong."""


def check_profile(profile: ProfileSettings, sources: dict[str, Any]) -> list[Problem]:
    """Problems between the sources' mappings and the profile settings, each with its
    place (``sources.<name>...`` or ``profile...``); empty when consistent."""
    return [
        *_unknown_sources(profile, sources),
        *_clears_not_owned(profile, sources),
        *_consent_not_from_its_source(profile, sources),
    ]


def _unknown_sources(profile: ProfileSettings, sources: dict[str, Any]) -> list[Problem]:
    problems = [
        (f"profile.attributes.{attribute}", f"no source named {source!r}")
        for attribute, policy in sorted(profile.attributes.items())
        for source in [*([policy.owner] if policy.owner else []), *policy.priority]
        if source not in sources
    ]
    problems += [
        (f"profile.subscriptions.{name}", f"no source named {subscription.source!r}")
        for name, subscription in sorted(profile.subscriptions.items())
        if subscription.source not in sources
    ]
    return problems


def _clears_not_owned(profile: ProfileSettings, sources: dict[str, Any]) -> list[Problem]:
    return [
        (
            f"sources.{name}.clears",
            f"{attribute!r} is not owned by {name}; only an owner may clear an attribute",
        )
        for name, source in sources.items()
        for attribute in source.clears
        if attribute not in _owned(name, source, profile, _writers(sources))
    ]


def _writers(sources: dict[str, Any]) -> dict[str, set[str]]:
    writers: dict[str, set[str]] = {}
    for name, source in sources.items():
        for attribute in source.attributes():
            writers.setdefault(attribute, set()).add(name)
    return writers


def _consent_not_from_its_source(
    profile: ProfileSettings, sources: dict[str, Any]
) -> list[Problem]:
    problems: list[Problem] = []
    for name, source in sources.items():
        for index, rule in enumerate(source.consent):
            subscription = profile.subscriptions.get(rule.subscription)
            where = f"sources.{name}.consent[{index}]"
            if subscription is None:
                problems.append((where, f"no subscription {rule.subscription!r} in profile"))
            elif subscription.source != name:
                message = f"{rule.subscription!r} takes consent only from {subscription.source}"
                problems.append((where, message))
            elif subscription.channel != rule.channel:
                message = f"{rule.subscription!r} is on {subscription.channel}, not {rule.channel}"
                problems.append((where, message))
    return problems


def _owned(
    name: str, source: Any, profile: ProfileSettings, writers: dict[str, set[str]]
) -> set[str]:
    """Attributes ``name`` owns: declared owner_only for it, or undeclared and written by
    no other source. (An undeclared attribute several sources write is theirs jointly,
    last writer wins, and none of them owns it.)"""
    owned = set()
    for attribute in source.attributes():
        policy = profile.attributes.get(attribute)
        alone = writers.get(attribute, set()) <= {name}
        if (policy is None and alone) or (
            policy is not None and policy.policy == "owner_only" and policy.owner == name
        ):
            owned.add(attribute)
    return owned


def writable(profile: ProfileSettings, *, source: str, attribute: str) -> bool:
    """Whether ``source`` may write ``attribute`` (an undeclared one is its mapper's)."""
    policy = profile.attributes.get(attribute)
    return policy is None or policy.may_write(source)
