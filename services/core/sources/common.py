"""Settings every source shares: mapping, API access, polling, webhook authentication.

Each CRM's own settings model (one module per CRM in this package) builds on
``SourceBase`` and adds what its connector needs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from croniter import croniter
from pydantic import Field, field_validator, model_validator

from services.core.mapping_settings import SourceMapping
from services.core.settings_base import SecretRef, Strict


class PollSettings(Strict):
    """When and how a source without (reliable) webhooks is asked for what changed."""

    enabled: bool = True
    interval_seconds: int | None = Field(default=None, ge=5)
    cron: str | None = Field(default=None, description="crontab expression, UTC")
    overlap_seconds: int = Field(
        default=300,
        ge=0,
        description="re-read this much before the watermark, so clock skew and late "
        "commits in the CRM cannot hide a change at the boundary",
    )
    page_size: int = Field(default=100, ge=1, le=10_000)
    start_from: datetime | None = Field(
        default=None,
        description="where the first poll starts; by default the first poll only "
        "records the current time (run a full sync to backfill)",
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str | None) -> str | None:
        if cron is not None and not croniter.is_valid(cron):
            raise ValueError(f"not a valid cron expression: {cron!r}")
        return cron

    @model_validator(mode="after")
    def _one_schedule(self) -> PollSettings:
        if (self.interval_seconds is None) == (self.cron is None):
            raise ValueError("a poll has exactly one of 'interval_seconds' or 'cron'")
        return self


class ApiSettings(Strict):
    """How crmsync calls the CRM's REST API (polls and full syncs)."""

    base_url: str = Field(pattern=r"^https?://", description="e.g. https://api.hubapi.com")
    token: SecretRef | None = Field(default=None, description="bearer token / API key")
    max_requests_per_second: float = Field(default=5.0, gt=0)
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=6, ge=1, le=50)
    backoff_initial_seconds: float = Field(default=0.5, gt=0)
    backoff_max_seconds: float = Field(default=60.0, gt=0)


class NoAuth(Strict):
    kind: Literal["none"]


class BearerAuth(Strict):
    kind: Literal["bearer"]
    token: SecretRef


class HmacSha256Auth(Strict):
    """HMAC-SHA256 of the raw body (optionally prefixed by a timestamp), hex in a header."""

    kind: Literal["hmac_sha256"]
    secret: SecretRef
    signature_header: str = "X-Signature"
    timestamp_header: str | None = None
    tolerance_seconds: int = Field(default=300, ge=1)


class StandardWebhooksAuth(Strict):
    """The Standard Webhooks scheme: webhook-id, webhook-timestamp, webhook-signature."""

    kind: Literal["standard_webhooks"]
    secret: SecretRef = Field(description="the whsec_... signing secret")
    tolerance_seconds: int = Field(default=300, ge=1)


WebhookAuth = Annotated[
    NoAuth | BearerAuth | HmacSha256Auth | StandardWebhooksAuth, Field(discriminator="kind")
]


class CsvSettings(Strict):
    """How a CRM's export file reads, for ``crmsync import csv`` (a full sync from a file)."""

    delimiter: str = Field(default=",", min_length=1, max_length=1)
    encoding: str = Field(default="utf-8-sig", description="utf-8-sig also accepts a BOM")
    record_id_column: str = "id"
    modified_at_column: str | None = Field(
        default=None, description="without it, every row counts as modified at import time"
    )
    deleted_column: str | None = None
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="header -> field name; headers not listed keep their own name",
    )


class SourceBase(SourceMapping):
    """What every source has, whatever its CRM: how its records map to profiles
    (``SourceMapping``), how it is matched, and how its webhooks and files read."""

    email_field: str = "email"
    match_key: Literal["email", "crm_id"] = "email"
    max_body_bytes: int | None = Field(
        default=None, ge=1024, description="webhook body cap; default: services.ingest"
    )
    csv: CsvSettings = Field(
        default_factory=CsvSettings, description="how this source's export files read"
    )

    @model_validator(mode="after")
    def _identity_never_dropped(self) -> SourceBase:
        problem = self.identity_dropped(self.email_field)
        if problem is not None:
            raise ValueError(problem)
        return self


def default_api_settings(data: Any, **defaults: Any) -> Any:
    """For a source's before-validator: fill ``api`` settings a CRM's own API makes
    obvious (its one host, its documented request rate) when the config leaves them out."""
    if not isinstance(data, dict) or not isinstance(data.get("api"), dict):
        return data
    return {**data, "api": {**defaults, **data["api"]}}


def checked_api(api: ApiSettings, *, needs: str | None, example: str, adds: str) -> ApiSettings:
    """A CRM API's settings: a token when ``needs`` says which one, and a
    ``base_url`` that is only the host (the connector adds the paths itself)."""
    if needs is not None and api.token is None:
        raise ValueError(f"token: {needs} as {{env: VARIABLE}} or {{file: PATH}}")
    parts = urlsplit(api.base_url)
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(
            f"base_url is the API host only (e.g. {example}); the connector adds {adds} itself"
        )
    return api
