"""Sync conditions: does a record's CRM data match a source's ``sync_if``?

The mapper asks ``matches`` for every change of a source with a ``sync_if``
condition, over the change's raw CRM fields (before any transformation). A
``Condition`` combines clauses with ``all`` or ``any`` and nests.

Rules, chosen because CRMs send the same value in several spellings ("1" for 1,
"true" or "yes" for a ticked checkbox) and a condition should not care:

- exists: the field is present and not blank (None, whitespace, an empty list);
  missing: the opposite.
- eq / ne: a blank field equals nothing (use ``exists``/``missing`` for blanks).
  Otherwise two values are equal when: one is a boolean and the other reads as the
  same boolean (True, 1, "true", "yes", "y", "on", any case; the transforms'
  boolean vocabulary); else both read as numbers (numbers, or text in plain decimal
  notation) and are numerically equal ("1.0" equals 1); else their trimmed texts
  are equal (case-sensitive). ``ne`` is exactly ``not eq``, so a missing field is
  ``ne`` every value.
- in / not_in: eq against any value of the list; not_in is ``not in``.
- A list field (multi-select) is eq / in when any of its items is.
- gt / ge / lt / le: numerically when both read as numbers; else by time when both
  are ISO 8601 dates or times (a date is midnight UTC, a time without an offset is
  UTC); else the comparison cannot be made and the clause is false: a record that
  cannot be compared does not match. A blank or list field never compares.

Nothing here raises for a record's data: a condition is a filter, and a record that
does not match is simply not synced (what happens then is ``when_unmatched``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from services.core.contracts import FieldValue
from services.core.mapping_settings import Clause, Condition, ScalarSetting
from services.mapper.rules.transforms import BOOLEAN_TEXT
from services.mapper.rules.values import is_blank, is_number, parse_number, value_text

_ORDER: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}


def matches(condition: Condition, fields: Mapping[str, FieldValue]) -> bool:
    """Whether ``fields`` satisfy ``condition`` (see the module docstring)."""
    if condition.all is not None:
        return all(_holds(part, fields) for part in condition.all)
    return any(_holds(part, fields) for part in condition.any or ())


def _holds(part: Clause | Condition, fields: Mapping[str, FieldValue]) -> bool:
    if isinstance(part, Condition):
        return matches(part, fields)
    return clause_holds(part, fields.get(part.field))


def clause_holds(clause: Clause, value: FieldValue) -> bool:
    """Whether one clause holds for the value of its field (None when absent)."""
    match clause.op:
        case "exists":
            return not is_blank(value)
        case "missing":
            return is_blank(value)
        case "eq" | "ne":
            return _equal_any(value, [_setting(clause)]) is (clause.op == "eq")
        case "in" | "not_in":
            settings = clause.value if isinstance(clause.value, list) else []
            return _equal_any(value, settings) is (clause.op == "in")
    return _ordered(clause.op, value, _setting(clause))


def _setting(clause: Clause) -> ScalarSetting:
    # Clause's validator guarantees one scalar for every operator but in/not_in.
    value = clause.value
    return "" if value is None or isinstance(value, list) else value


def _equal_any(value: FieldValue, settings: Sequence[ScalarSetting]) -> bool:
    if is_blank(value):
        return False
    items: Sequence[FieldValue] = value if isinstance(value, list) else [value]
    return any(equal(item, setting) for item in items for setting in settings)


def equal(value: FieldValue, setting: ScalarSetting) -> bool:
    """CRM value vs config setting, by the rules of the module docstring."""
    if is_blank(value):
        return False
    if isinstance(value, bool) or isinstance(setting, bool):
        left, right = _as_boolean(value), _as_boolean(setting)
        return left is not None and left is right
    left_number, right_number = _as_number(value), _as_number(setting)
    if left_number is not None and right_number is not None:
        return left_number == right_number
    return value_text(value).strip() == value_text(setting).strip()


def _ordered(op: str, value: FieldValue, setting: ScalarSetting) -> bool:
    if is_blank(value) or isinstance(value, list):
        return False
    compare = _ORDER[op]
    left_number, right_number = _as_number(value), _as_number(setting)
    if left_number is not None and right_number is not None:
        return compare(left_number, right_number)
    left_time, right_time = _as_instant(value), _as_instant(setting)
    if left_time is not None and right_time is not None:
        return compare(left_time, right_time)
    return False


def _as_boolean(value: FieldValue) -> bool | None:
    if isinstance(value, bool):
        return value
    if is_number(value):
        return value == 1 if value in (0, 1) else None
    if isinstance(value, str):
        return BOOLEAN_TEXT.get(value.strip().lower())
    return None


def _as_number(value: FieldValue) -> int | float | None:
    if isinstance(value, bool):
        return None
    if is_number(value):
        return value if math.isfinite(value) else None
    return parse_number(value) if isinstance(value, str) else None


def _as_instant(value: FieldValue) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
