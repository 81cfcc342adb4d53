"""How a reader names a profile: by email or by a source record (SOURCE:ID).

Shared by ``crmsync profile get`` and the writer's read API, so both accept and
normalise the same things.
"""

from __future__ import annotations

from services.core.contracts import Identity
from services.mapper.rules.errors import RuleError
from services.mapper.rules.normalise import normalise_email


class BadLookup(ValueError):
    """The reader's identity is malformed; the message says how to write it."""


def identity_of(*, email: str | None, crm_id: str | None, flag: str = "") -> Identity:
    """The identity to look up; exactly one of ``email`` and ``crm_id``."""
    if (email is None) == (crm_id is None):
        raise BadLookup("give exactly one of email or id (SOURCE:ID)")
    if crm_id is None:
        try:
            return Identity("email", normalise_email(email or "", where=f"{flag}email"))
        except RuleError as exc:
            raise BadLookup(str(exc)) from exc
    source, colon, record_id = crm_id.partition(":")
    if not colon or not source or not record_id:
        raise BadLookup(f"{flag}id takes SOURCE:ID, e.g. demo:1001")
    return Identity("crm", f"{source}:{record_id}")
