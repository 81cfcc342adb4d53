"""Settings of a generic REST destination: a JSON API without a dedicated kind."""

from __future__ import annotations

import re
import string
from typing import Final, Literal

from pydantic import Field, model_validator

from services.core.destinations.common import ProfileAtATime
from services.core.settings_base import SecretRef
from services.core.sources.common import ApiSettings

PLACEHOLDERS: Final = frozenset({"profile_id", "email", "crm_id"})
POINTER: Final = re.compile(r"^(/([^/~]|~[01])*)*$")
CREDENTIALS_STATUSES: Final = frozenset({401, 403})


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


class RestDestination(ProfileAtATime):
    """Any JSON API: each profile (or a batch of them) sent as mapped fields."""

    kind: Literal["rest"]
    api: ApiSettings = Field(
        description="base_url: the API's base URL; token: a bearer token, if it takes one"
    )
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    path: str = Field(
        description="where a profile goes, e.g. /contacts/{crm_id}; placeholders "
        "{profile_id}, {email}, {crm_id} (the profile's id in 'source')"
    )
    create_method: Literal["POST", "PUT"] = "POST"
    create_path: str | None = Field(
        default=None,
        description="where a profile without a crm_id goes when 'path' needs one, e.g. "
        "/contacts; without it such a profile is refused",
    )
    delete_path: str | None = Field(
        default=None,
        description="DELETE this path for an erased profile (404 counts as done); without "
        "it an erased profile is refused for an operator",
    )
    identities: dict[str, str] = Field(
        default_factory=lambda: {"email": "email"},
        description="'email' or 'crm' -> the body field carrying the profile's email or "
        "its id in 'source'",
    )
    batch_key: str | None = Field(
        default=None,
        min_length=1,
        description="send up to batch_size profiles in one body {batch_key: [...]}; "
        "'path' then has no placeholders",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="static headers")
    secret_headers: dict[str, SecretRef] = Field(
        default_factory=dict, description="headers whose values are secrets"
    )
    idempotency_header: str | None = Field(
        default=None,
        description="e.g. Idempotency-Key: a key derived from the request's event ids, the "
        "same whenever the same changes are sent",
    )
    retry_statuses: list[int] = Field(
        default_factory=lambda: [408, 425],
        description="4xx answers retried like 429 and 5xx; every other 4xx refuses",
    )
    id_pointer: str | None = Field(
        default=None,
        description="JSON pointer (RFC 6901) to the created record's id in the answer, "
        "e.g. /data/id; in a batch '{index}' stands for the profile's place, "
        "e.g. /results/{index}/id",
    )
    send_clears: bool = Field(
        default=False, description="send a cleared attribute as null; by default left out"
    )
    batch_size: int = Field(default=100, ge=1, le=10_000, description="profiles per chunk")

    @model_validator(mode="after")
    def _consistent(self) -> RestDestination:
        for name in ("path", "create_path", "delete_path"):
            template = getattr(self, name)
            if template is None:
                continue
            unknown = placeholders(template) - PLACEHOLDERS
            if unknown:
                raise ValueError(
                    f"{name}: unknown placeholder {sorted(unknown)[0]}; use "
                    f"{{profile_id}}, {{email}} or {{crm_id}}"
                )
        if self.batch_key is not None and placeholders(self.path):
            raise ValueError("path: a batch goes to one URL, without placeholders")
        if self.batch_key is not None and self.create_path is not None:
            raise ValueError("create_path: a batch has no separate create path")
        uses_crm = {"crm_id"} & (
            placeholders(self.path)
            | placeholders(self.create_path or "")
            | placeholders(self.delete_path or "")
        )
        if (uses_crm or "crm" in self.identities) and self.source is None:
            raise ValueError("source: {crm_id} is the profile's id in that source; name it")
        if self.create_path is not None and "crm_id" in placeholders(self.create_path):
            raise ValueError("create_path: a profile being created has no crm_id yet")
        if self.id_pointer is not None and not POINTER.match(
            self.id_pointer.replace("{index}", "0")
        ):
            raise ValueError("id_pointer: a JSON pointer such as /data/id")
        wrong = [s for s in self.retry_statuses if not 400 <= s < 500 or s in CREDENTIALS_STATUSES]
        if wrong:
            raise ValueError(
                f"retry_statuses: 4xx other than 401/403 (5xx and 429 are always retried): {wrong}"
            )
        return self
