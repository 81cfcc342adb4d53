"""Strict normalisation: email, E.164 phone, ISO 4217 currency."""

from __future__ import annotations

import phonenumbers
import pycountry
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from services.core.contracts import FieldValue
from services.mapper.rules.errors import RuleError
from services.mapper.rules.normalise import (
    _detailed_email_problem,
    _email_problem,
    _is_plain_address,
    normalise_currency,
    normalise_email,
    normalise_phone,
)

pytestmark = pytest.mark.unit

# --- email ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ada@example.com", "ada@example.com"),
        ("  Ada.Lovelace@Example.COM \n", "ada.lovelace@example.com"),
        ("first+tag@mail.example.co.uk", "first+tag@mail.example.co.uk"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("x_y-z@sub-domain.example.org", "x_y-z@sub-domain.example.org"),
        ("jörg@bücher.de", "jörg@bücher.de"),
        ("a@b.co", "a@b.co"),
        ("1@example.com", "1@example.com"),
    ],
)
def test_email_is_trimmed_and_lower_cased(value: str, expected: str) -> None:
    assert normalise_email(value, where="email") == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ada", "exactly one @"),
        ("ada@@example.com", "exactly one @"),
        ("a@b@example.com", "exactly one @"),
        ("@example.com", "nothing before the @"),
        ("ada@", "no dot"),
        ("ada@localhost", "no dot"),
        ("ada lovelace@example.com", "whitespace"),
        ("ada@exa mple.com", "whitespace"),
        ("ada\t@example.com", "whitespace"),
        (".ada@example.com", "dot"),
        ("ada.@example.com", "dot"),
        ("ada..king@example.com", "dot"),
        ("ada@example..com", "empty part"),
        ("ada@.example.com", "empty part"),
        ("ada@example.com.", "empty part"),
        ("ada@-example.com", "hyphen"),
        ("ada@example-.com", "hyphen"),
        ("ada@exam_ple.com", "not allowed in the domain"),
        ("ada@[127.0.0.1]", "not allowed in the domain"),
        ("ada@127.0.0.1", "ends in a number"),
        ('"ada"@example.com', "not allowed before the @"),
        ("ada(comment)@example.com", "not allowed before the @"),
        ("a\x00a@example.com", "not allowed before the @"),
        ("a" * 65 + "@example.com", "more than 64"),
        ("ada@" + "a" * 64 + ".com", "longer than 63"),
        ("ada@" + ("a" * 60 + ".") * 5 + "com", "longer than 254"),
    ],
)
def test_email_refusals_name_the_reason(value: str, reason: str) -> None:
    with pytest.raises(RuleError) as raised:
        normalise_email(value, where="email")
    assert raised.value.where == "email"
    assert reason in raised.value.problem


def test_email_reason_never_repeats_the_address() -> None:
    with pytest.raises(RuleError) as raised:
        normalise_email("secret.person@@example.com", where="email")
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize("value", [None, 5, 1.5, True, ["a@b.co"]])
def test_email_must_be_text(value: FieldValue) -> None:
    with pytest.raises(RuleError, match="text"):
        normalise_email(value, where="email")


ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
LABELS = st.text(alphabet="abcxyzABC019-", min_size=1, max_size=12).filter(
    lambda label: not label.startswith("-") and not label.endswith("-")
)
EMAILS = st.builds(
    lambda local, labels, tld, pad: f"{pad}{local}@{'.'.join(labels)}.{tld}{pad}",
    st.lists(st.text(alphabet=ATEXT, min_size=1, max_size=8), min_size=1, max_size=3).map(".".join),
    st.lists(LABELS, min_size=1, max_size=3),
    st.text(alphabet="comCOMdeDE", min_size=2, max_size=4),
    st.sampled_from(["", " ", "\t", "  \n"]),
)


@given(EMAILS)
def test_well_formed_emails_normalise_to_a_fixed_point(value: str) -> None:
    email = normalise_email(value, where="email")
    assert email == value.strip().lower()
    assert normalise_email(email, where="email") == email


@given(st.text(max_size=40))
def test_any_text_is_a_fixed_point_or_refused(value: str) -> None:
    try:
        email = normalise_email(value, where="email")
    except RuleError:
        return
    assert normalise_email(email, where="email") == email


ADDRESS_LIKE = st.one_of(
    EMAILS.map(lambda value: value.strip().lower()),
    st.text(alphabet="ab9.-_@+é ", max_size=30),
    st.builds(
        lambda local, domain: f"{local}@{domain}",
        st.text(alphabet="a.-+_", min_size=0, max_size=70),
        st.text(alphabet="a1.-", min_size=0, max_size=80),
    ),
)


@given(ADDRESS_LIKE)
def test_the_fast_path_agrees_with_the_detailed_checks(email: str) -> None:
    # The pattern only ever says yes for what the detailed checks accept; everything
    # else goes to them, so the two paths decide alike.
    if _is_plain_address(email):
        assert _detailed_email_problem(email) is None
    assert _email_problem(email) == _detailed_email_problem(email)


# --- phone ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "region", "expected"),
    [
        ("+49 30 1234567", None, "+49301234567"),
        ("+49 (0)30 123 45 67", "US", "+49301234567"),
        ("030 1234567", "DE", "+49301234567"),
        ("0151 23456789", "DE", "+4915123456789"),
        ("0049 151 23456789", "DE", "+4915123456789"),
        ("(201) 555-0123", "US", "+12015550123"),
        ("201.555.0123", "US", "+12015550123"),
        (12015550123, "US", "+12015550123"),
        ("+12015550123", None, "+12015550123"),
        ("07400 123456", "GB", "+447400123456"),
        ("+44 7400 123456", "XX", "+447400123456"),  # a country code needs no region
    ],
)
def test_phone_becomes_e164(value: str | int, region: str | None, expected: str) -> None:
    assert normalise_phone(value, region=region, where="phone") == expected


@pytest.mark.parametrize(
    ("value", "region", "reason"),
    [
        ("030 1234567", None, "no country code and no default_region"),
        ("030 1234567", "XX", "default_region 'XX' is not a known region"),
        ("abc", "DE", "not a phone number"),
        ("1", "DE", "not a phone number"),
        ("123", "DE", "not a valid phone number"),
        ("+999 1234567", None, "unknown country code"),
        ("+1 201 555 0123 ext. 12", None, "extension"),
        ("12" * 150, "DE", "not a phone number"),
        ("", "DE", "empty"),
        (True, "DE", "text or a whole number"),
        (12.5, "DE", "text or a whole number"),
        (["+4930123456"], "DE", "text or a whole number"),
    ],
)
def test_phone_refusals(value: FieldValue, region: str | None, reason: str) -> None:
    with pytest.raises(RuleError) as raised:
        normalise_phone(value, region=region, where="phone")
    assert reason in raised.value.problem


EXAMPLE_NUMBERS = [
    (region, number)
    for region in sorted(phonenumbers.SUPPORTED_REGIONS)
    for kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE)
    if (number := phonenumbers.example_number_for_type(region, kind)) is not None
]
FORMATS = [PhoneNumberFormat.E164, PhoneNumberFormat.INTERNATIONAL, PhoneNumberFormat.NATIONAL]


@given(st.sampled_from(EXAMPLE_NUMBERS), st.sampled_from(FORMATS))
def test_every_region_s_numbers_normalise_to_a_fixed_point(
    example: tuple[str, phonenumbers.PhoneNumber], style: int
) -> None:
    region, number = example
    assume(phonenumbers.is_valid_number(number))
    text = phonenumbers.format_number(number, style)
    e164 = normalise_phone(text, region=region, where="phone")
    assert e164 == phonenumbers.format_number(number, PhoneNumberFormat.E164)
    assert normalise_phone(e164, region=None, where="phone") == e164
    assert normalise_phone(e164, region=region, where="phone") == e164


@given(
    st.one_of(st.text(alphabet="+0123456789 ()-.x", max_size=25), st.integers()),
    st.sampled_from([None, "DE", "US", "GB", "XX"]),
)
def test_phone_is_e164_fixed_point_or_refused(value: str | int, region: str | None) -> None:
    try:
        e164 = normalise_phone(value, region=region, where="phone")
    except RuleError:
        return
    assert e164.startswith("+")
    assert e164[1:].isdigit()
    assert normalise_phone(e164, region=None, where="phone") == e164


# --- currency -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("EUR", "EUR"),
        ("eur", "EUR"),
        (" EUR ", "EUR"),
        ("978", "EUR"),
        (978, "EUR"),
        ("840", "USD"),
        ("008", "ALL"),
        (8, "ALL"),
        ("chf", "CHF"),
    ],
)
def test_currency_becomes_its_alphabetic_code(value: str | int, expected: str) -> None:
    assert normalise_currency(value, where="currency") == expected


@pytest.mark.parametrize(
    "value", ["EURO", "€", "E", "XYZ", "000", "1000", "", "Eur ope", True, 9.78, None, ["EUR"]]
)
def test_currency_refusals(value: FieldValue) -> None:
    with pytest.raises(RuleError) as raised:
        normalise_currency(value, where="currency")
    assert raised.value.where == "currency"


CURRENCIES = sorted((c.alpha_3, c.numeric) for c in pycountry.currencies)


@given(st.sampled_from(CURRENCIES), st.booleans(), st.sampled_from(["", " ", "\t"]))
def test_every_currency_normalises_to_a_fixed_point(
    currency: tuple[str, str], lower: bool, pad: str
) -> None:
    alpha, numeric = currency
    written = f"{pad}{alpha.lower() if lower else alpha}{pad}"
    assert normalise_currency(written, where="c") == alpha
    assert normalise_currency(numeric, where="c") == alpha
    assert normalise_currency(int(numeric), where="c") == alpha
    assert normalise_currency(alpha, where="c") == alpha
