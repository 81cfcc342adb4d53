"""Settings of a Pipedrive source: Webhooks v2 (push), the persons API v2 (pull).

A Pipedrive source has ``webhooks`` (the HTTP Basic credentials set on the webhook as
``http_auth_user`` / ``http_auth_password``), ``api`` (the persons API with a personal
API token), or both. Webhooks are the real-time path; only they carry deletions, since
the persons list does not return deleted persons. The validators catch what an
operator most often gets wrong, each with a message that says what Pipedrive needs.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from services.core.settings_base import SecretRef, Strict
from services.core.sources.common import (
    ApiSettings,
    PollSettings,
    SourceBase,
    checked_api,
    default_api_settings,
)

PIPEDRIVE_API_BASE_URL: Final = "https://api.pipedrive.com"
# "Please note that a maximum value of 500 is allowed" (GET /api/v2/persons, limit).
PERSONS_MAX_LIMIT: Final = 500
# The connector's name for the person's primary email (see connectors/pipedrive.py).
PRIMARY_EMAIL_FIELD: Final = "primary_email"


def pipedrive_api_defaults(data: Any) -> Any:
    """Pipedrive answers on api.pipedrive.com, so ``base_url`` may be left out (a source's
    or a destination's ``api``)."""
    return default_api_settings(data, base_url=PIPEDRIVE_API_BASE_URL)


def checked_pipedrive_api(api: ApiSettings) -> ApiSettings:
    return checked_api(
        api,
        needs="Pipedrive's API needs the personal API token (Settings > "
        "Personal preferences > API)",
        example=PIPEDRIVE_API_BASE_URL,
        adds="/api/v2/persons",
    )


class PipedriveWebhooks(Strict):
    """How crmsync proves a webhook request comes from Pipedrive: the HTTP Basic
    credentials given to Pipedrive when the webhook was created."""

    username: str = Field(min_length=1, description="the webhook's http_auth_user")
    password: SecretRef = Field(description="the webhook's http_auth_password")
    other_entities: Literal["ignore", "reject"] = Field(
        default="ignore",
        description="events about other objects (deals, organizations, ...), e.g. from a "
        "'*.*' webhook: answer 200 and drop them, or refuse them with 400 (Pipedrive "
        "then retries and eventually bans the webhook)",
    )
    own_user_ids: list[int] = Field(
        default_factory=list,
        description="the Pipedrive user whose API token the Pipedrive destination writes "
        "with: events with meta.change_source 'api' and one of these meta.user_id are "
        "the echo of crmsync's own write and are dropped",
    )

    @field_validator("username")
    @classmethod
    def _no_colon(cls, username: str) -> str:
        # RFC 7617: the user-id of Basic credentials cannot contain a colon.
        if ":" in username:
            raise ValueError("a Basic auth user name cannot contain ':'")
        return username


class PipedriveSource(SourceBase):
    kind: Literal["pipedrive"]
    email_field: str = PRIMARY_EMAIL_FIELD
    webhooks: PipedriveWebhooks | None = Field(
        default=None, description="Webhooks v2 events Pipedrive posts to /webhooks/<source>"
    )
    api: ApiSettings | None = Field(
        default=None,
        description="the persons API for polls and full syncs; base_url defaults to "
        f"{PIPEDRIVE_API_BASE_URL} (or https://<company>.pipedrive.com), token is the "
        "personal API token, sent in the x-api-token header",
    )
    poll: PollSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _api_defaults(cls, data: Any) -> Any:
        return pipedrive_api_defaults(data)

    @field_validator("api")
    @classmethod
    def _api(cls, api: ApiSettings | None) -> ApiSettings | None:
        return None if api is None else checked_pipedrive_api(api)

    @field_validator("poll")
    @classmethod
    def _poll(cls, poll: PollSettings | None, info: ValidationInfo) -> PollSettings | None:
        if poll is None or "api" not in info.data:
            # Without 'api' in the data, 'api' itself failed and its error says why.
            return poll
        if info.data["api"] is None:
            raise ValueError("a poll reads Pipedrive's persons API: add 'api' with the token")
        if poll.page_size > PERSONS_MAX_LIMIT:
            raise ValueError(
                f"page_size: Pipedrive returns at most {PERSONS_MAX_LIMIT} persons per page"
            )
        return poll

    @model_validator(mode="after")
    def _complete(self) -> PipedriveSource:
        if self.webhooks is None and self.api is None:
            raise ValueError(
                "a pipedrive source needs 'webhooks' (Pipedrive posts changes), 'api' "
                "(polls and full syncs), or both"
            )
        return self
