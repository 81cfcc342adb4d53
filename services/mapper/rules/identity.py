"""Which identities a change carries, and which one it matches profiles by."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from services.core.contracts import FieldValue, Identity

EMAIL: Final = "email"
CRM: Final = "crm"


def normalise_email(value: FieldValue) -> str | None:
    """Trimmed and lower-cased, or None when the value is not an email address."""
    if not isinstance(value, str):
        return None
    email = value.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or " " in email:
        return None
    return email


def identities_of(
    *, source: str, record_id: str, fields: Mapping[str, FieldValue], email_field: str
) -> tuple[Identity, ...]:
    crm = Identity(CRM, f"{source}:{record_id}")
    email = normalise_email(fields.get(email_field))
    return (crm,) if email is None else (Identity(EMAIL, email), crm)


def match_key(identities: tuple[Identity, ...], *, prefer: Literal["email", "crm_id"]) -> str:
    """The configured identity when the change carries it, else the CRM record id."""
    wanted = EMAIL if prefer == "email" else CRM
    chosen = next((i for i in identities if i.kind == wanted), None)
    if chosen is None:
        chosen = next(i for i in identities if i.kind == CRM)
    return f"{chosen.kind}:{chosen.value}"
