"""Consent mapping: a CRM checkbox becomes opt-in or opt-out of one subscription.

Consent is explicit (guarantee 7): a checkbox value that is not clearly checked or
unchecked is never guessed: it rejects the change, or, when its rule's ``on_invalid``
(else the source's) is ``drop_field``, leaves that subscription's consent as it is
while the rest of the change applies. A blank leaves consent as it is, and only the
subscription's configured consent source may change it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final

from services.core.contracts import Channel, ConsentChange, ConsentStatus, FieldValue
from services.core.mapping_settings import ConsentRule, OnInvalid, ProfileSettings
from services.mapper.rules.errors import InvalidValue, RuleError
from services.mapper.rules.values import is_blank

CHECKED: Final = frozenset({"true", "yes", "y", "1", "on", "checked", "x"})
UNCHECKED: Final = frozenset({"false", "no", "n", "0", "off", "unchecked"})
CONSENT_PREFIX: Final = "consent:"
"""How a subscription is named among attributes (audit changes and drops)."""


def checkbox(value: FieldValue, *, where: str) -> bool | None:
    """True (checked), False (unchecked) or None (blank); anything else is refused."""
    if is_blank(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in CHECKED:
            return True
        if text in UNCHECKED:
            return False
    shown = repr(value)
    raise RuleError(
        where, f"{shown} is not a checkbox value (consent is never guessed)", value=shown
    )


def consent_changes(
    fields: Mapping[str, FieldValue],
    rules: Sequence[ConsentRule],
    *,
    source: str,
    profile: ProfileSettings,
    changed_at: datetime,
    on_invalid: OnInvalid = "reject",
) -> tuple[tuple[ConsentChange, ...], tuple[InvalidValue, ...]]:
    """The consent changes the checkboxes in ``fields`` make, and the unclear values
    dropped (by rules whose ``on_invalid``, else the source's ``on_invalid``, is
    ``drop_field``); RuleError for an unclear value any other rule reads."""
    changes = []
    invalid = []
    for rule in rules:
        if rule.field not in fields:
            continue
        try:
            checked = checkbox(fields[rule.field], where=rule.field)
        except RuleError as error:
            if (rule.on_invalid or on_invalid) != "drop_field":
                raise
            invalid.append(InvalidValue(CONSENT_PREFIX + rule.subscription, error))
            continue
        if checked is None:
            continue
        subscription = profile.subscriptions.get(rule.subscription)
        if subscription is None or subscription.source != source:
            # The config check forbids this; refusing here too keeps consent safe even
            # if a config were ever loaded without it.
            raise RuleError(
                rule.field, f"{source} is not the consent source of {rule.subscription}"
            )
        opted_in = checked == (rule.checked_means == "opt_in")
        changes.append(
            ConsentChange(
                subscription=rule.subscription,
                channel=Channel(rule.channel.upper()),
                status=ConsentStatus.OPT_IN if opted_in else ConsentStatus.OPT_OUT,
                changed_at=changed_at,
            )
        )
    return tuple(changes), tuple(invalid)
