"""The basic value helpers every rule uses: what counts as blank, as a number, how a
value prints and how a text reads as a number. The expression language, the
transforms and the conditions all judge values the same way through these."""

from __future__ import annotations

import math
import re
from typing import Final, TypeGuard

from services.core.contracts import FieldValue

# The Avro contract carries integers as 64-bit longs.
INT_LIMIT: Final = 2**63
# Floats are integral and exact below 2**53; those print without ".0".
EXACT_FLOAT_LIMIT: Final = 2**53
LIST_SEPARATOR: Final = ";"
# Plain decimal notation only: no thousands separators, no decimal comma, no nan/inf,
# no Unicode digits; so "1,234" is never misread as 1.234 or 1234.
_NUMBER: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")


def is_number(value: object) -> TypeGuard[int | float]:
    """An int or float; booleans are not numbers here (True + 1 is a mistake)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


_NEVER_BLANK: Final = frozenset((int, float, bool))


def is_blank(value: object) -> bool:
    """None, text of whitespace only, or a list without a non-blank item."""
    if value is None:
        return True
    # Exact type checks first: the mapper asks this dozens of times per change, and
    # decoded values are plain str, int, float, bool or list.
    if type(value) is str:
        return not value.strip()
    if type(value) in _NEVER_BLANK:
        return False
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list):
        return all(is_blank(item) for item in value)
    return False


def value_text(value: FieldValue, *, separator: str = LIST_SEPARATOR) -> str:
    """A value as text, the one way expressions, templates and rules print values:
    booleans as ``true``/``false``, whole floats without ``.0`` (CRMs send 12.0 for
    12), other floats in Python's shortest round-trip form, lists joined."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < EXACT_FLOAT_LIMIT:
        return str(int(value))
    if isinstance(value, list):
        return separator.join(value_text(item) for item in value)
    return str(value) if isinstance(value, int | str) else repr(value)


def parse_number(text: str) -> int | float | None:
    """The number a text writes in plain decimal notation (``-12``, ``1234.5``,
    ``1e3``), or None. An integer text gives an int, anything else a float."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    try:
        number: int | float = int(text) if _INTEGER.fullmatch(text) else float(text)
    except ValueError:  # more digits than Python converts
        return None
    return number if math.isfinite(number) else None
