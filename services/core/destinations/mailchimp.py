"""Settings of Mailchimp as a destination (the Marketing API 3.0: one audience's members)."""

from __future__ import annotations

import re
from typing import Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from services.core.destinations.common import DestinationCommon
from services.core.sources.common import ApiSettings

MAX_MEMBERS: Final = 500
"""Members in one batch subscribe request at most, as the API documents."""
STATUS_FIELD: Final = "status"
MAILCHIMP_HOST: Final = re.compile(r"^(?P<dc>[a-z]+[0-9]+)\.api\.mailchimp\.com$")
MERGE_TAG: Final = re.compile(r"^[A-Z][A-Z0-9_]*$")
API_PATH: Final = "/3.0"

MemberStatus = Literal["subscribed", "unsubscribed", "cleaned", "pending", "transactional"]


def data_center(base_url: str) -> str | None:
    """The data center of a Mailchimp API URL (``us6`` of https://us6.api.mailchimp.com),
    None for another host (a proxy or a test server)."""
    found = MAILCHIMP_HOST.match(urlsplit(base_url).hostname or "")
    return found.group("dc") if found else None


class MailchimpDestination(DestinationCommon):
    """Mailchimp: profiles as members of one audience (list), added or updated in
    batches of ``POST /lists/{list_id}``, erased with ``delete-permanent``."""

    kind: Literal["mailchimp"]
    api: ApiSettings = Field(
        description="base_url: https://<dc>.api.mailchimp.com/3.0, <dc> the data center "
        "the API key ends with (a key abc123-us6 is served by us6); token: the API key"
    )
    list_id: str = Field(
        pattern=r"^[0-9A-Za-z]+$",
        description="the audience's id (Audience settings, 'Audience name and defaults')",
    )
    status_if_new: MemberStatus = Field(
        default="transactional",
        description="the status of a member crmsync adds without a consent to go by: "
        "transactional (can be sent transactional mail, no marketing) unless the profile "
        "opted in; a consent change always sets subscribed or unsubscribed",
    )
    send_clears: bool = Field(
        default=False,
        description="send a merge field its source cleared as an empty string, which "
        "empties it in Mailchimp; by default it is left out and keeps its value",
    )
    batch_size: int = Field(
        default=MAX_MEMBERS, ge=1, le=MAX_MEMBERS, description="members per request"
    )

    @field_validator("api")
    @classmethod
    def _mailchimp_api(cls, api: ApiSettings) -> ApiSettings:
        parts = urlsplit(api.base_url)
        if api.token is None:
            raise ValueError("token: the Mailchimp API key, as {env: VARIABLE} or {file: PATH}")
        if parts.path.rstrip("/") != API_PATH or parts.query:
            raise ValueError(
                "base_url is the Marketing API's root, https://<dc>.api.mailchimp.com/3.0"
            )
        host = parts.hostname or ""
        if host.endswith("api.mailchimp.com") and data_center(api.base_url) is None:
            raise ValueError(
                "base_url: the host is the data center the API key ends with, e.g. "
                "https://us6.api.mailchimp.com/3.0 for a key ending in -us6"
            )
        return api

    @model_validator(mode="after")
    def _merge_fields_and_status(self) -> MailchimpDestination:
        if not self.attributes:
            raise ValueError(
                "attributes: Mailchimp takes only the audience's merge fields; map each "
                "attribute to its merge tag (e.g. first_name: FNAME)"
            )
        for attribute, tag in self.attributes.items():
            if not MERGE_TAG.match(tag) or tag == "EMAIL":
                raise ValueError(
                    f"attributes.{attribute}: {tag!r} is not a merge tag Mailchimp takes: "
                    "upper-case letters, digits and _ (e.g. FNAME); the email is the "
                    "member's address, not a merge field"
                )
        fields = set(self.consents.values())
        if fields - {STATUS_FIELD} or len(self.consents) > 1:
            raise ValueError(
                "consents: a Mailchimp member has one subscription status; map one "
                f"subscription to {STATUS_FIELD!r} (opted in: subscribed, out: unsubscribed)"
            )
        return self
