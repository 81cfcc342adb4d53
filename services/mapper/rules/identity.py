"""Identity kinds, and which identity a change matches profiles by."""

from __future__ import annotations

from typing import Final, Literal

from services.core.contracts import Identity

EMAIL: Final = "email"
CRM: Final = "crm"


def match_key(identities: tuple[Identity, ...], *, prefer: Literal["email", "crm_id"]) -> str:
    """The configured identity when the change carries it, else the CRM record id."""
    wanted = EMAIL if prefer == "email" else CRM
    chosen = next((i for i in identities if i.kind == wanted), None)
    if chosen is None:
        chosen = next(i for i in identities if i.kind == CRM)
    return f"{chosen.kind}:{chosen.value}"
