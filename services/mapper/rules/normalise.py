"""Strict normalisation of identity and money fields: email, phone, currency.

The transforms (``transforms.py``) call these for the ``email``, ``phone`` and
``currency`` types. Each returns the one canonical form of a value or raises
``RuleError`` naming the field and the reason; none returns None for bad data (the
blank check happens before them). Every canonical form is a fixed point: normalising
it again gives it back unchanged.

- email: trimmed and lower-cased; exactly one ``@``; a local part of RFC 5322
  "atext" characters (letters, digits, ``!#$%&'*+/=?^_`{|}~-``) and dots that neither
  lead, trail nor double; a domain of at least two labels of letters, digits and
  inner hyphens, not ending in a number (IP-address domains and quoted local parts
  are refused); at most 254 characters. Reasons never repeat the address (no plain
  emails in logs).
- phone: E.164 (``+4930123456``) through ``phonenumbers``; a number without a
  country code is read in the source's ``default_region``; only numbers valid for
  their region pass; an extension is refused, because E.164 cannot carry it and
  dropping it would lose data silently.
- currency: the ISO 4217 alphabetic code (``EUR``) from the code in any case or
  the numeric code (``978``, ``"008"``, 8) via ``pycountry``.
"""

from __future__ import annotations

import functools
import re
from typing import Final

import phonenumbers
import pycountry
from phonenumbers import NumberParseException, PhoneNumberFormat

from services.core.contracts import FieldValue
from services.mapper.rules.errors import RuleError

MAX_EMAIL_LENGTH: Final = 254
MAX_LOCAL_PART_LENGTH: Final = 64
MAX_LABEL_LENGTH: Final = 63
# Distinct (number, region) pairs whose E.164 form is remembered (about 200 bytes each).
PHONE_CACHE_SIZE: Final = 50_000
LOCAL_PART_SPECIALS: Final = frozenset("!#$%&'*+/=?^_`{|}~-")

_ATEXT: Final = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL: Final = rf"[a-z0-9](?:[a-z0-9-]{{0,{MAX_LABEL_LENGTH - 2}}}[a-z0-9])?"
# Lower-case ASCII: addresses are lower-cased before they are checked.
_PLAIN_ADDRESS: Final = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@(?:{_LABEL}\.)+{_LABEL}")

_PARSE_PROBLEMS: Final = {
    NumberParseException.INVALID_COUNTRY_CODE: "not a phone number: unknown country code",
    NumberParseException.NOT_A_NUMBER: "not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "not a phone number: too short after the prefix",
    NumberParseException.TOO_SHORT_NSN: "not a phone number: too short",
    NumberParseException.TOO_LONG: "not a phone number: too long",
}


def normalise_email(value: FieldValue, *, where: str) -> str:
    """The address trimmed and lower-cased, or RuleError when it is not one."""
    if not isinstance(value, str):
        raise RuleError(where, "an email address is text")
    email = value.strip().lower()
    problem = _email_problem(email)
    if problem is not None:
        raise RuleError(where, f"not an email address: {problem}")
    return email


def _email_problem(email: str) -> str | None:
    if _is_plain_address(email):
        return None
    return _detailed_email_problem(email)


def _is_plain_address(email: str) -> bool:
    """The common case, decided by one compiled pattern: an ASCII address that the
    detailed checks below accept too (they run only for what this does not accept,
    to name the problem, or to judge a non-ASCII address)."""
    if len(email) > MAX_EMAIL_LENGTH or _PLAIN_ADDRESS.fullmatch(email) is None:
        return False
    local, _at, domain = email.partition("@")
    return len(local) <= MAX_LOCAL_PART_LENGTH and not domain.rpartition(".")[2].isdigit()


def _detailed_email_problem(email: str) -> str | None:
    if not email:
        return "empty"
    if len(email) > MAX_EMAIL_LENGTH:
        return f"longer than {MAX_EMAIL_LENGTH} characters"
    if any(char.isspace() for char in email):
        return "contains whitespace"
    if email.count("@") != 1:
        return "needs exactly one @"
    local, _at, domain = email.partition("@")
    return _local_part_problem(local) or _domain_problem(domain)


def _local_part_problem(local: str) -> str | None:
    if not local:
        return "nothing before the @"
    if len(local) > MAX_LOCAL_PART_LENGTH:
        return f"more than {MAX_LOCAL_PART_LENGTH} characters before the @"
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return "a dot at the start or end of the name, or two dots in a row"
    if not all(char.isalnum() or char == "." or char in LOCAL_PART_SPECIALS for char in local):
        return "a character not allowed before the @"
    return None


def _domain_problem(domain: str) -> str | None:
    labels = domain.split(".")
    if len(labels) < 2:
        return "the domain has no dot"
    for label in labels:
        if not label:
            return "an empty part in the domain"
        if len(label) > MAX_LABEL_LENGTH:
            return f"a part of the domain longer than {MAX_LABEL_LENGTH} characters"
        if not all(char.isalnum() or char == "-" for char in label):
            return "a character not allowed in the domain"
        if label.startswith("-") or label.endswith("-"):
            return "a part of the domain starts or ends with a hyphen"
    if labels[-1].isdigit():
        return "the domain ends in a number"
    return None


def normalise_phone(value: FieldValue, *, region: str | None, where: str) -> str:
    """The number in E.164, or RuleError; ``region`` (ISO 3166 alpha-2) is where a
    number written without a country code is from."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise RuleError(where, "a phone number is text or a whole number")
    text = str(value).strip()
    if not text:
        raise RuleError(where, "the phone number is empty")
    e164, problem = _e164(text, region)
    if problem is not None:
        raise RuleError(where, problem)
    return e164


# Parsing a number costs about 40 µs; a record remapped under a new mapping version,
# a source with sync_if, or a full sync after webhooks meets the same numbers again.
@functools.lru_cache(maxsize=PHONE_CACHE_SIZE)
def _e164(text: str, region: str | None) -> tuple[str, str | None]:
    """The number in E.164, or what is wrong with it."""
    # An unknown region only matters to a number without a country code.
    known = region if region in phonenumbers.SUPPORTED_REGIONS else None
    try:
        number = phonenumbers.parse(text, known)
    except NumberParseException as exc:
        country_code_wanted = known is None and not text.startswith("+")
        if exc.error_type == NumberParseException.INVALID_COUNTRY_CODE and country_code_wanted:
            return "", _no_region(region)
        return "", _PARSE_PROBLEMS.get(exc.error_type, "not a phone number")
    if number.extension:
        return "", "the phone number has an extension, which E.164 cannot carry"
    if not phonenumbers.is_valid_number(number):
        return "", "not a valid phone number for its country"
    return phonenumbers.format_number(number, PhoneNumberFormat.E164), None


def _no_region(region: str | None) -> str:
    if region is None:
        return "no country code and no default_region"
    return f"no country code, and default_region {region!r} is not a known region"


def normalise_currency(value: FieldValue, *, where: str) -> str:
    """The ISO 4217 alphabetic code, from an alphabetic or numeric code."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise RuleError(where, "a currency code is text or a number")
    code = str(value).strip().upper()
    currency = None
    if code.isascii() and code.isalpha() and len(code) == 3:
        currency = pycountry.currencies.get(alpha_3=code)
    elif code.isascii() and code.isdigit() and len(code) <= 3:
        # Numeric codes are three digits; CRMs storing them as numbers lose the zeros.
        currency = pycountry.currencies.get(numeric=code.zfill(3))
    if currency is None:
        shown = repr(code[:20])
        raise RuleError(where, f"{shown} is not an ISO 4217 currency code", value=shown)
    return str(currency.alpha_3)
