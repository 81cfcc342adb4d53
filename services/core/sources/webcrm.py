"""Settings of a webCRM source: polls and full syncs through the webCRM REST API (pull).

webCRM is pull-only here: its REST API documents how to register hooks
(``/Persons/Hooks``: a TargetUrl and an event type) but neither the request webCRM
then sends nor how that request can be authenticated, so there is no push connector
to configure (see ``services/ingest/connectors/webcrm.py``).

``api.token`` is the application token (a GUID created under Configuration >
Integration > API > REST), which the connector exchanges for an hour-long access token.
The validators catch what an operator most often gets wrong, each with a message that
says what webCRM needs.
"""

from __future__ import annotations

from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from services.core.sources.common import (
    ApiSettings,
    PollSettings,
    SourceBase,
    checked_api,
    default_api_settings,
)

WEBCRM_API_BASE_URL: Final = "https://api.webcrm.com"
# "The default limit is 250 requests per minute ... with a sliding window" (api.webcrm.com).
REQUESTS_PER_MINUTE: Final = 250
# Below 250 / 60 = 4.17 per second, so a steady poll never reaches the limit.
DEFAULT_REQUESTS_PER_SECOND: Final = 4.0
# The page size webCRM's own integrations ask for (webCRMdotcom/ErpIntegrations).
MAX_PAGE_SIZE: Final = 1000
# Person fields that hold credentials of the person's portal logins: never forwarded.
PASSWORD_FIELDS: Final = ("PersonPassword", "PersonMemberPassword", "PersonCampaignPassword")


def webcrm_api_defaults(data: Any) -> Any:
    """webCRM has one API host and a known request limit, so both may be left out (a
    source's or a destination's ``api``)."""
    return default_api_settings(
        data, base_url=WEBCRM_API_BASE_URL, max_requests_per_second=DEFAULT_REQUESTS_PER_SECOND
    )


def checked_webcrm_api(api: ApiSettings, *, needs: str, adds: str) -> ApiSettings:
    """``api`` as webCRM takes it: a token (``needs`` says which) and at most its
    request limit per application token."""
    checked_api(api, needs=needs, example=WEBCRM_API_BASE_URL, adds=adds)
    if api.max_requests_per_second * 60 > REQUESTS_PER_MINUTE:
        raise ValueError(
            f"max_requests_per_second: webCRM takes at most {REQUESTS_PER_MINUTE} "
            "requests per minute per application token (4.16 per second)"
        )
    return api


class WebCrmSource(SourceBase):
    kind: Literal["webcrm"]
    email_field: str = "PersonEmail"
    api: ApiSettings = Field(
        description=f"the webCRM REST API; base_url defaults to {WEBCRM_API_BASE_URL}, token "
        "is the application token, max_requests_per_second defaults to "
        f"{DEFAULT_REQUESTS_PER_SECOND} (webCRM allows {REQUESTS_PER_MINUTE} per minute)"
    )
    poll: PollSettings | None = None
    time_zone: str = Field(
        default="UTC",
        description="the IANA zone of webCRM times written without an offset (e.g. "
        "PersonUpdatedAt); webCRM's own integrations compare them with UTC times",
    )
    excluded_fields: list[str] = Field(
        default_factory=lambda: list(PASSWORD_FIELDS),
        description="person fields never read into crmsync (by default the password fields)",
    )

    @model_validator(mode="before")
    @classmethod
    def _api_defaults(cls, data: Any) -> Any:
        return webcrm_api_defaults(data)

    @field_validator("api")
    @classmethod
    def _api(cls, api: ApiSettings) -> ApiSettings:
        return checked_webcrm_api(
            api,
            needs="webCRM's REST API needs an application token (Configuration > "
            "Integration > API > REST)",
            adds="/Auth/ApiLogin and /Queries",
        )

    @field_validator("poll")
    @classmethod
    def _poll(cls, poll: PollSettings | None) -> PollSettings | None:
        if poll is not None and poll.page_size > MAX_PAGE_SIZE:
            raise ValueError(f"page_size: read at most {MAX_PAGE_SIZE} persons per request")
        return poll

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"not an IANA time zone: {name!r}") from None
        return name

    @field_validator("excluded_fields")
    @classmethod
    def _keeps_what_the_connector_needs(cls, names: list[str]) -> list[str]:
        needed = {"PersonId", "PersonUpdatedAt", "PersonCreatedAt"} & set(names)
        if needed:
            raise ValueError(f"the connector needs {', '.join(sorted(needed))}")
        return names
