"""Settings of the generic sources: a JSON webhook, and a generic REST poll."""

from __future__ import annotations

from typing import Literal

from services.core.sources.common import SourceBase, WebhookAuth


class GenericWebhookSource(SourceBase):
    """A CRM or system that posts its contacts as plain JSON: one object or a list."""

    kind: Literal["generic_webhook"]
    auth: WebhookAuth
    record_id_field: str = "id"
    modified_at_field: str | None = "updated_at"
    event_id_field: str | None = None
    deleted_field: str | None = None
