"""Settings of a SecuTix S-360 source: the contact webhook S-360 pushes to (push only).

S-360 ("Contact Webhook V2", an interface of type Firehose Contact in the S-360 back
office) POSTs the getContactData description of every created or updated contact to
crmsync, in buckets of contacts, after authenticating on the URL with the login and
password entered in the interface. What S-360 documents and what it leaves open is
listed in ``services/ingest/connectors/s360.py``; the settings below cover the open
points, so that an institution's payload can be read without changing code.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field, field_validator

from services.core.settings_base import SecretRef, Strict
from services.core.sources.common import SourceBase

PRIMARY_EMAIL: Final = "email"
"""The plain string field the connector fills with the contact's primary email."""
DEFAULT_EMAIL_PATHS: Final = (
    "email",
    "individualContact.email",
    "structureContact.email",
    "addresses(isMain).email",
    "addresses(isMain).email1",
)
# The payload is at most one run of the queue: S contacts (S = 100 by default), sent in
# buckets of bs. S-360 documents no upper bound for either; this one only guards memory.
DEFAULT_MAX_CONTACTS: Final = 1000


class S360BasicAuth(Strict):
    """HTTP Basic (RFC 7617) with the login and password set in the S-360 interface."""

    kind: Literal["basic"] = "basic"
    login: str = Field(min_length=1, pattern=r"^[^:]+$", description="no ':' (RFC 7617)")
    password: SecretRef


class S360Deletion(Strict):
    """Which contacts count as deleted or anonymised: a field and the values that say so."""

    field: str = Field(min_length=1, description="a field name as the connector flattens it")
    values: list[str] = Field(min_length=1)


class S360Source(SourceBase):
    kind: Literal["s360"]
    email_field: str = PRIMARY_EMAIL
    auth: S360BasicAuth
    modified_at_field: str | None = Field(
        default=None,
        description="the field holding the contact's last modification time, if the "
        "institution's payload has one; without it a contact's version is the time "
        "S-360 delivered it (S-360 reads the contact when it sends it)",
    )
    email_paths: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EMAIL_PATHS),
        min_length=1,
        description=f"fields tried in order for the primary email, copied into "
        f"'{PRIMARY_EMAIL}'; the first non-blank string wins",
    )
    list_keys: dict[str, str] = Field(
        default_factory=dict,
        description="list field -> key field of its items, e.g. {contactCriteria: code}: "
        "items become 'contactCriteria(code=X).value' (S-360's own filter notation) "
        "instead of 'contactCriteria[0].value'",
    )
    deletion: S360Deletion | None = Field(
        default=None,
        description="contacts S-360 sends as deleted or anonymised; by default every "
        "contact S-360 sends is an update (S-360 documents no deletion)",
    )
    max_contacts_per_request: int = Field(default=DEFAULT_MAX_CONTACTS, ge=1)

    @field_validator("list_keys")
    @classmethod
    def _not_addresses(cls, keys: dict[str, str]) -> dict[str, str]:
        if "addresses" in keys:
            raise ValueError("addresses are read as the main address: 'addresses(isMain).<field>'")
        return keys
