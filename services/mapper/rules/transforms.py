"""Field transformations: one CRM value through a ``FieldRule`` into an attribute value.

The mapper calls ``apply_rule`` for every mapped field of a change. The steps, in
the order ``FieldRule`` documents:

1. Blank input (None, "", text of whitespace only, an empty list) gives None without
   error; what a blank means (never clear, or clear when the source may) is decided
   later by the mapping.
2. ``values``: the value map, looked up by the value's trimmed text (``value_text``:
   12.0 is "12", True is "true"); a list maps item by item. A value the map does not
   list is rejected, kept or blanked as ``unmapped`` says.
3. ``split``: the first word, the rest after it, or the last word of a text.
4. The coercion to ``type``; a result that is blank is None.

Coercions (each is idempotent: coercing its own output again gives it back):

- keep: the value as it is.
- string: text trimmed; numbers and booleans as ``value_text`` prints them; a list's
  non-blank items joined with ``separator``.
- number: an int or a finite float. Text must be plain decimal notation: an optional
  sign, digits, an optional ``.`` fraction and exponent (``-1234.5``, ``1e3``).
  Thousands separators and decimal commas are refused rather than guessed ("1,234"
  is 1234 in one locale and 1.234 in another). Integer text gives an int. Booleans
  are not numbers. Integers are 64-bit (the Avro contract's long).
- integer: as number, then whole numbers only: 12.0 and "1e3" pass, 12.5 is an error.
- boolean: True/False; 1/0; text true/false, yes/no, y/n, 1/0, on/off in any case.
- date: ISO 8601 text (a date, or a date and time, reduced to its date in
  ``timezone``), else the first of ``formats`` (strptime) that matches, else Unix
  time: a number (or text of 9 or more digits, shorter digit runs being years or
  codes rather than times) is seconds when its size is under 10**10 and
  milliseconds otherwise (10**10 seconds is the year 2286; 10**10 milliseconds is
  April 1970). Written as ``YYYY-MM-DD``.
- datetime: read as date; a time without an offset is in ``timezone`` (an
  ambiguous or skipped local time takes the offset before the change, PEP 495
  fold=0); a date alone is midnight there. Written as ISO 8601 in UTC with ``Z``.
- multi: a list of non-blank texts: a list's items, or a text split on
  ``separator``, each trimmed; order and duplicates are kept.
- email, phone, currency: ``normalise.py``.

Every value that cannot be coerced raises ``RuleError(where, reason)``; a reason that
quotes the value says which part it is, so that logs can leave it out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.core.contracts import FieldValue
from services.core.mapping_settings import FieldRule, FieldValueType
from services.mapper.rules.errors import RuleError
from services.mapper.rules.normalise import (
    normalise_currency,
    normalise_email,
    normalise_phone,
)
from services.mapper.rules.values import INT_LIMIT, is_blank, is_number, parse_number, value_text

BOOLEAN_TEXT: Final[dict[str, bool]] = {
    **dict.fromkeys(("true", "yes", "y", "1", "on"), True),
    **dict.fromkeys(("false", "no", "n", "0", "off"), False),
}
MILLISECONDS_FROM: Final = 10**10
MIN_UNIX_TIME_DIGITS: Final = 9
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
SHOWN_CHARACTERS: Final = 40


@dataclass(frozen=True, slots=True)
class _Target:
    """What a coercion needs besides the value."""

    rule: FieldRule
    where: str
    region: str | None

    def fail(self, problem: str) -> RuleError:
        return RuleError(self.where, problem)

    def refuse(self, value: FieldValue, problem: str) -> RuleError:
        """``problem`` after the value (cut short): '<value> <problem>'."""
        shown = _shown(value)
        return RuleError(self.where, f"{shown} {problem}", value=shown)


def apply_rule(
    value: FieldValue, rule: FieldRule, *, where: str, default_region: str | None
) -> FieldValue:
    """The attribute value of one CRM value (see the module docstring), or None when
    blank; RuleError naming ``where`` when the value cannot be accepted."""
    if is_blank(value):
        return None
    target = _Target(rule, where, default_region)
    if rule.values is not None:
        value = _map_values(value, target)
        if is_blank(value):
            return None
    if rule.split is not None:
        value = _split(value, target)
        if is_blank(value):
            return None
    coerced = _COERCIONS[rule.type](value, target)
    return None if is_blank(coerced) else coerced


def _shown(value: FieldValue) -> str:
    return repr(value_text(value)[:SHOWN_CHARACTERS])


def _map_values(value: FieldValue, target: _Target) -> FieldValue:
    if isinstance(value, list):
        mapped = (_map_one(item, target) for item in value)
        return [value_text(item) for item in mapped if not is_blank(item)]
    return _map_one(value, target)


def _map_one(value: FieldValue, target: _Target) -> FieldValue:
    values = target.rule.values or {}
    key = value_text(value).strip()
    if key in values:
        return values[key]
    if target.rule.unmapped == "keep":
        return value
    if target.rule.unmapped == "blank":
        return None
    raise target.refuse(key, "is not in the value map")


def _split(value: FieldValue, target: _Target) -> FieldValue:
    if not isinstance(value, str):
        raise target.fail("split takes text")
    words = value.split()
    if target.rule.split == "first":
        return words[0]
    if target.rule.split == "last":
        return words[-1]
    return " ".join(words[1:]) or None


# --- coercions -------------------------------------------------------------------


def _keep(value: FieldValue, target: _Target) -> FieldValue:
    return value


def _string(value: FieldValue, target: _Target) -> FieldValue:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        items = (value_text(item).strip() for item in value)
        return target.rule.separator.join(item for item in items if item)
    if is_number(value) and not math.isfinite(value):
        raise target.fail("not a finite number")
    return value_text(value)


def _number(value: FieldValue, target: _Target) -> int | float:
    if isinstance(value, bool):
        raise target.fail("a boolean is not a number")
    number = parse_number(value) if isinstance(value, str) else value
    if not is_number(number):
        hint = "" if not isinstance(value, str) else " (plain decimal notation, e.g. -1234.5)"
        raise target.refuse(value, f"is not a number{hint}")
    if isinstance(number, float) and not math.isfinite(number):
        raise target.fail("not a finite number")
    if isinstance(number, int) and abs(number) >= INT_LIMIT:
        raise target.refuse(value, "is out of range (integers are 64-bit)")
    return number


def _integer(value: FieldValue, target: _Target) -> int:
    number = _number(value, target)
    if isinstance(number, int):
        return number
    if not number.is_integer():
        raise target.refuse(value, "is not a whole number")
    if abs(number) >= INT_LIMIT:
        raise target.refuse(value, "is out of range (integers are 64-bit)")
    return int(number)


def _boolean(value: FieldValue, target: _Target) -> bool:
    if isinstance(value, bool):
        return value
    if is_number(value) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value.strip().lower() in BOOLEAN_TEXT:
        return BOOLEAN_TEXT[value.strip().lower()]
    raise target.refuse(value, "is not a boolean (true/false, yes/no, 1/0, on/off)")


def _date(value: FieldValue, target: _Target) -> str:
    moment = _moment(value, target)
    if isinstance(moment, datetime):
        if moment.tzinfo is not None:
            moment = _shifted(moment, _zone(target), target)
        moment = moment.date()
    return moment.isoformat()


def _datetime(value: FieldValue, target: _Target) -> str:
    moment = _moment(value, target)
    if not isinstance(moment, datetime):
        moment = datetime.combine(moment, time())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_zone(target))
    return _shifted(moment, UTC, target).isoformat().replace("+00:00", "Z")


def _multi(value: FieldValue, target: _Target) -> list[str] | None:
    if isinstance(value, list):
        items = [value_text(item).strip() for item in value]
    elif isinstance(value, str):
        items = [item.strip() for item in value.split(target.rule.separator)]
    else:  # a number or a boolean: one item
        items = [str(_string(value, target))]
    return [item for item in items if item] or None


def _email(value: FieldValue, target: _Target) -> str:
    return normalise_email(value, where=target.where)


def _phone(value: FieldValue, target: _Target) -> str:
    return normalise_phone(value, region=target.region, where=target.where)


def _currency(value: FieldValue, target: _Target) -> str:
    return normalise_currency(value, where=target.where)


_COERCIONS: Final[dict[FieldValueType, Callable[[FieldValue, _Target], FieldValue]]] = {
    "keep": _keep,
    "string": _string,
    "number": _number,
    "integer": _integer,
    "boolean": _boolean,
    "date": _date,
    "datetime": _datetime,
    "multi": _multi,
    "email": _email,
    "phone": _phone,
    "currency": _currency,
}


# --- dates and times -----------------------------------------------------------------


def _moment(value: FieldValue, target: _Target) -> date | datetime:
    """A date, a naive local datetime or an aware datetime, from any accepted form."""
    if isinstance(value, str):
        moment = _parsed(value.strip(), target.rule.formats)
        if moment is not None:
            return moment
        digits = value.strip().lstrip("+-")
        if digits.isascii() and digits.isdigit() and len(digits) >= MIN_UNIX_TIME_DIGITS:
            return _unix_time(int(value.strip()), target)
    elif is_number(value):
        return _unix_time(value, target)
    raise target.refuse(value, "is not a date or time")


def _parsed(text: str, formats: list[str]) -> date | datetime | None:
    """ISO 8601 first (a date alone stays a date), then the configured formats."""
    readers: tuple[Callable[[str], date | datetime], ...] = (
        date.fromisoformat,
        datetime.fromisoformat,
    )
    for reader in readers:
        with suppress(ValueError):
            return reader(text)
    for fmt in formats:
        with suppress(ValueError):
            return datetime.strptime(text, fmt)
    return None


def _unix_time(number: int | float, target: _Target) -> datetime:
    if not math.isfinite(number):
        raise target.fail("not a finite number")
    try:
        if abs(number) < MILLISECONDS_FROM:
            return EPOCH + timedelta(seconds=number)
        return EPOCH + timedelta(milliseconds=number)
    except OverflowError:
        raise target.refuse(number, "is out of range as a Unix time") from None


def _shifted(moment: datetime, zone: tzinfo, target: _Target) -> datetime:
    try:
        return moment.astimezone(zone)
    except (OverflowError, ValueError):
        shown = moment.isoformat()
        raise RuleError(target.where, f"{shown} is out of range", value=shown) from None


def _zone(target: _Target) -> tzinfo:
    try:
        return _zone_named(target.rule.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise target.fail(f"unknown timezone {target.rule.timezone!r}") from None


@lru_cache(maxsize=64)
def _zone_named(name: str) -> tzinfo:
    return UTC if name == "UTC" else ZoneInfo(name)
