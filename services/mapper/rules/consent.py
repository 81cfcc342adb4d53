"""Consent mapping: a CRM checkbox becomes opt-in or opt-out of one subscription.

Consent is explicit (guarantee 7): a checkbox value that is not clearly checked or
unchecked rejects the change instead of being guessed, a blank leaves consent as it
is, and only the subscription's configured consent source may change it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final

from services.core.contracts import Channel, ConsentChange, ConsentStatus, FieldValue
from services.core.mapping_settings import ConsentRule, ProfileSettings
from services.mapper.rules.errors import RuleError
from services.mapper.rules.values import is_blank

CHECKED: Final = frozenset({"true", "yes", "y", "1", "on", "checked", "x"})
UNCHECKED: Final = frozenset({"false", "no", "n", "0", "off", "unchecked"})


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
    raise RuleError(where, f"{value!r} is not a checkbox value (consent is never guessed)")


def consent_changes(
    fields: Mapping[str, FieldValue],
    rules: Sequence[ConsentRule],
    *,
    source: str,
    profile: ProfileSettings,
    changed_at: datetime,
) -> tuple[ConsentChange, ...]:
    changes = []
    for rule in rules:
        if rule.field not in fields:
            continue
        checked = checkbox(fields[rule.field], where=rule.field)
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
    return tuple(changes)
