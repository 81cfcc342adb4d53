"""The generic webhook: any system that posts contacts as plain JSON.

The body is one object or a list of objects. Field names for the record id, the
modification time, an event id and a deletion flag come from the source's config.
Event ids, so that a sender's retry of the same body is recognised downstream: the
configured event-id field; else the Standard Webhooks ``webhook-id``, or the body's
SHA-256, with the record's position in the body.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from services.core.contracts import ContactChange, Operation, Origin
from services.core.sources.generic import GenericWebhookSource
from services.ingest.auth import Authenticator
from services.ingest.connectors.base import (
    InboundRequest,
    PayloadError,
    SourceConnectors,
    WebhookAnswer,
    json_answer,
)
from services.ingest.fields import flatten, load_json, parse_timestamp, record_identifier

MAX_RECORDS_PER_REQUEST: Final = 10_000


class GenericWebhookConnector:
    def __init__(self, *, source: str, settings: GenericWebhookSource) -> None:
        self.source = source
        self._settings = settings
        self._auth = Authenticator(settings.auth)

    def authenticate(self, request: InboundRequest, *, now: datetime) -> None:
        self._auth.verify(request, now=now)

    def answer(self, request: InboundRequest, accepted: int) -> WebhookAnswer:
        return json_answer(accepted)

    def parse(self, request: InboundRequest, *, received_at: datetime) -> Sequence[ContactChange]:
        document = load_json(request.body)
        # A delivery id names this request: the sender's (Standard Webhooks) or the
        # body's digest, so a sender retrying the same body gets the same event ids.
        delivery = request.headers.get("webhook-id") or (
            "sha256:" + hashlib.sha256(request.body).hexdigest()[:32]
        )
        if isinstance(document, dict):
            return [self._change(document, where="body", at=received_at, delivery=delivery)]
        if not isinstance(document, list) or not document:
            raise PayloadError("body", "must be a JSON object or a non-empty array of objects")
        if len(document) > MAX_RECORDS_PER_REQUEST:
            raise PayloadError("body", f"more than {MAX_RECORDS_PER_REQUEST} records")
        return [
            self._change(
                record,
                where=f"body[{index}]",
                at=received_at,
                delivery=f"{delivery}:{index}",
            )
            for index, record in enumerate(document)
        ]

    def _change(self, record: Any, *, where: str, at: datetime, delivery: str) -> ContactChange:
        if not isinstance(record, dict):
            raise PayloadError(where, "must be a JSON object")
        settings = self._settings
        record_id = record_identifier(
            record.get(settings.record_id_field), where=f"{where}.{settings.record_id_field}"
        )
        modified_at = at
        if settings.modified_at_field is not None:
            modified_at = parse_timestamp(
                record.get(settings.modified_at_field),
                where=f"{where}.{settings.modified_at_field}",
            )
        deleted = settings.deleted_field is not None and record.get(settings.deleted_field) is True
        fields = flatten(record, where=where)
        if settings.event_id_field is not None:
            event_id = record_identifier(
                record.get(settings.event_id_field), where=f"{where}.{settings.event_id_field}"
            )
        else:
            event_id = delivery
        return ContactChange(
            source=self.source,
            record_id=record_id,
            operation=Operation.DELETE if deleted else Operation.UPSERT,
            event_id=event_id,
            source_modified_at=modified_at,
            received_at=at,
            fields=fields,
            origin=Origin.WEBHOOK,
        )


def connectors(source: str, settings: GenericWebhookSource) -> SourceConnectors:
    return SourceConnectors(webhook=GenericWebhookConnector(source=source, settings=settings))
