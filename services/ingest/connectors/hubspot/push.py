"""HubSpot push: webhook event batches, their signatures, and the changes they make.

Documented behaviour followed (developers.hubspot.com):

- "Webhooks API" (/docs/api/webhooks): HubSpot posts a JSON array of up to 100 events;
  each has ``eventId``, ``subscriptionId``, ``portalId``, ``appId``, ``occurredAt``
  (Unix ms), ``subscriptionType`` (the docs' table calls it ``eventType``),
  ``attemptNumber`` and ``objectId``; property changes add ``propertyName`` and
  ``propertyValue`` (a string); merges add ``primaryObjectId``, ``mergedObjectIds``,
  ``newObjectId``. Events come in no particular order and may repeat. The generic
  format (changelog "Generic Webhook Subscriptions") sends ``object.<action>`` with
  ``objectTypeId`` ``0-1`` for contacts.
- "Validating requests" (/docs/apps/developer-platform/build-apps/authentication/
  request-validation): v3 is base64(HMAC-SHA256(client secret, method + URI + body +
  X-HubSpot-Request-Timestamp)) in ``X-HubSpot-Signature-v3``, refused when the
  timestamp is older than 5 minutes, with ``%3A %2F %3F %40 %21 %24 %27 %28 %29 %2A
  %2C %3B`` decoded in the URI first; v2 (``X-HubSpot-Signature-Version: v2``) is
  hex(SHA-256(client secret + method + URI + body)) in ``X-HubSpot-Signature``.

Per event: a property change becomes a partial UPSERT (``{propertyName:
propertyValue}``); creation and restore an UPSERT carrying only ``hs_object_id``
(that is all the event says); deletion and privacy deletion a DELETE; a merge a
DELETE of every record merged away, then an UPSERT of the survivor (``newObjectId``
when HubSpot created one, else ``primaryObjectId``). ``event_id`` is HubSpot's
``eventId`` (suffixed for the extra changes of a merge), so a redelivery gets the same
ids. An event whose ``sourceId`` is one of ``own_source_ids`` is the echo of a write
crmsync itself made as a destination (HubSpot marks each change with ``changeSource``
and the ``sourceId`` of the app or user behind it) and is dropped, counted in
crmsync_echoes_dropped_total. Association changes carry no contact field and are
skipped; events about other objects or another HubSpot account are skipped or refused
as configured: a 400 would make HubSpot resend the whole batch, contacts included, ten
times in vain.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from services.core import metrics
from services.core.bearer import same
from services.core.contracts import ContactChange, FieldValue, Operation, Origin
from services.core.sources.hubspot import HubSpotSource
from services.ingest.auth import check_timestamp, header, hmac_sha256
from services.ingest.connectors.base import (
    AuthError,
    InboundRequest,
    PayloadError,
    WebhookAnswer,
    json_answer,
)
from services.ingest.fields import (
    load_json,
    record_identifier,
)

log = logging.getLogger(__name__)

V3_SIGNATURE: Final = "X-HubSpot-Signature-v3"
V3_TIMESTAMP: Final = "X-HubSpot-Request-Timestamp"
SIGNATURE: Final = "X-HubSpot-Signature"
SIGNATURE_VERSION: Final = "X-HubSpot-Signature-Version"
TIMESTAMP_TOLERANCE_S: Final = 300
# The URI characters HubSpot decodes before signing v3 (the docs' table).
V3_DECODED: Final = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}
PERCENT_ESCAPE: Final = re.compile(r"%[0-9A-Fa-f]{2}")
MAX_EVENTS_PER_REQUEST: Final = 100
CONTACT_TYPE_ID: Final = "0-1"
FIELD_ACTIONS: Final = frozenset({"creation", "propertyChange", "restore", "merge"})
DELETE_ACTIONS: Final = frozenset({"deletion", "privacyDeletion"})
SKIPPED_ACTIONS: Final = frozenset({"associationChange"})

OBJECT_ID: Final = "hs_object_id"
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS: Final = timedelta(milliseconds=1)


# --- push: signatures -------------------------------------------------------------------


def v3_uri(url: str) -> str:
    """The URI as HubSpot signs it for v3: the listed escapes decoded, others kept."""
    return PERCENT_ESCAPE.sub(lambda m: V3_DECODED.get(m.group().upper(), m.group()), url)


def v3_signature(secret: str, *, method: str, url: str, body: bytes, timestamp: str) -> str:
    message = method.encode() + v3_uri(url).encode() + body + timestamp.encode()
    return base64.b64encode(hmac_sha256(secret.encode(), message)).decode()


def v2_signature(secret: str, *, method: str, url: str, body: bytes) -> str:
    message = secret.encode() + method.encode() + url.encode() + body
    return hashlib.sha256(message).hexdigest()


# --- push: events -----------------------------------------------------------------------


def _occurred_at(value: Any, *, where: str) -> datetime:
    """HubSpot's ``occurredAt``: Unix milliseconds, as an integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PayloadError(where, "expected Unix milliseconds as an integer")
    try:
        return EPOCH + value * ONE_MS
    except OverflowError:
        raise PayloadError(where, f"timestamp {value} out of range") from None


def _text(event: Mapping[str, Any], name: str, *, where: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{where}.{name}", "missing or not a non-empty string")
    return value


class HubSpotWebhookConnector:
    def __init__(self, *, source: str, settings: HubSpotSource) -> None:
        webhooks = settings.webhooks
        if webhooks is None or webhooks.client_secret is None:
            raise ValueError(f"source {source!r} has no HubSpot webhook settings")
        self.source = source
        self._secret = webhooks.client_secret.resolve()
        self._versions = frozenset(webhooks.signature_versions)
        self._reject_others = webhooks.other_events == "reject"
        self._portal_id = settings.portal_id
        self._own_source_ids = frozenset(webhooks.own_source_ids)

    def authenticate(self, request: InboundRequest, *, now: datetime) -> None:
        headers = request.headers
        # A v3 signature, when present and accepted, decides: falling back to v2 would
        # let a replayed request with its v3 headers stripped through.
        if "v3" in self._versions and headers.get(V3_SIGNATURE):
            self._verify_v3(request, now=now)
            return
        if "v2" in self._versions:
            version = header(headers, SIGNATURE_VERSION).strip().lower()
            if version != "v2":
                raise AuthError(f"signature version {version!r} is not accepted")
            self._verify_v2(request)
            return
        raise AuthError(f"missing {V3_SIGNATURE} header")

    def _verify_v3(self, request: InboundRequest, *, now: datetime) -> None:
        timestamp = header(request.headers, V3_TIMESTAMP).strip()
        check_timestamp(timestamp, now=now, tolerance_seconds=TIMESTAMP_TOLERANCE_S)
        expected = v3_signature(
            self._secret,
            method=request.method,
            url=request.url,
            body=request.body,
            timestamp=timestamp,
        )
        if not same(header(request.headers, V3_SIGNATURE).strip(), expected):
            raise AuthError(f"invalid signature in {V3_SIGNATURE}")

    def _verify_v2(self, request: InboundRequest) -> None:
        expected = v2_signature(
            self._secret, method=request.method, url=request.url, body=request.body
        )
        if not same(header(request.headers, SIGNATURE).strip().lower(), expected):
            raise AuthError(f"invalid signature in {SIGNATURE}")

    def answer(self, request: InboundRequest, accepted: int) -> WebhookAnswer:
        return json_answer(accepted)

    def parse(self, request: InboundRequest, *, received_at: datetime) -> Sequence[ContactChange]:
        events = load_json(request.body)
        if not isinstance(events, list) or not events:
            raise PayloadError("body", "must be a non-empty JSON array of events")
        if len(events) > MAX_EVENTS_PER_REQUEST:
            raise PayloadError(
                "body", f"more than {MAX_EVENTS_PER_REQUEST} events (HubSpot sends at most 100)"
            )
        changes: list[ContactChange] = []
        skipped = 0
        for index, event in enumerate(events):
            found = self._event(event, where=f"body[{index}]", received_at=received_at)
            changes.extend(found)
            skipped += not found
        if skipped:
            log.info("hubspot events skipped source=%s skipped=%s", self.source, skipped)
        return changes

    def _event(self, event: Any, *, where: str, received_at: datetime) -> list[ContactChange]:
        """The changes one event makes; none for events this source does not take."""
        if not isinstance(event, dict):
            raise PayloadError(where, "must be a JSON object")
        kind_field = "subscriptionType" if "subscriptionType" in event else "eventType"
        kind = _text(event, kind_field, where=where)
        event_id = record_identifier(event.get("eventId"), where=f"{where}.eventId")
        occurred = _occurred_at(event.get("occurredAt"), where=f"{where}.occurredAt")
        action = self._contact_action(event, kind, where=f"{where}.{kind_field}")
        if action is None or action in SKIPPED_ACTIONS:
            return []
        if self._own_source_ids and str(event.get("sourceId")) in self._own_source_ids:
            metrics.ECHOES_DROPPED.labels(self.source).inc()
            return []
        stamp = _EventStamp(
            source=self.source, event_id=event_id, occurred=occurred, received=received_at
        )
        if action == "merge":
            return _merge(event, where=where, stamp=stamp)
        object_id = record_identifier(event.get("objectId"), where=f"{where}.objectId")
        if action in DELETE_ACTIONS:
            return [stamp.change(object_id, Operation.DELETE, {})]
        if action == "propertyChange":
            return [stamp.change(object_id, Operation.UPSERT, _property_change(event, where))]
        return [stamp.change(object_id, Operation.UPSERT, {OBJECT_ID: object_id})]

    def _contact_action(self, event: Mapping[str, Any], kind: str, *, where: str) -> str | None:
        """The action of a contact event of this source's account, else None (or a
        PayloadError when such events are refused). ``where`` names the type field."""
        event_where = where.rsplit(".", 1)[0]
        if self._portal_id is not None:
            portal = event.get("portalId")
            if isinstance(portal, bool) or not isinstance(portal, int):
                raise PayloadError(f"{event_where}.portalId", "missing or not an integer")
            if portal != self._portal_id:
                self._other(f"{event_where}.portalId", f"account {portal} is not this source's")
                return None
        family, _, action = kind.partition(".")
        if family == "object":
            type_id = _text(event, "objectTypeId", where=event_where)
            if type_id != CONTACT_TYPE_ID:
                self._other(f"{event_where}.objectTypeId", f"{type_id!r} is not contacts (0-1)")
                return None
        elif family != "contact":
            self._other(where, f"{kind!r} is not a contact event")
            return None
        if action not in FIELD_ACTIONS | DELETE_ACTIONS | SKIPPED_ACTIONS:
            self._other(where, f"unknown contact event {kind!r}")
            return None
        return action

    def _other(self, where: str, problem: str) -> None:
        """An event this source does not take: refused when so configured, else skipped."""
        if self._reject_others:
            raise PayloadError(where, problem)


@dataclass(frozen=True)
class _EventStamp:
    """What every change of one event shares."""

    source: str
    event_id: str
    occurred: datetime
    received: datetime

    def change(
        self,
        record_id: str,
        operation: Operation,
        fields: dict[str, FieldValue],
        *,
        suffix: str = "",
    ) -> ContactChange:
        return ContactChange(
            source=self.source,
            record_id=record_id,
            operation=operation,
            event_id=self.event_id + suffix,
            source_modified_at=self.occurred,
            received_at=self.received,
            fields=fields,
            origin=Origin.WEBHOOK,
        )


def _property_change(event: Mapping[str, Any], where: str) -> dict[str, FieldValue]:
    name = _text(event, "propertyName", where=where)
    if "propertyValue" not in event:
        raise PayloadError(f"{where}.propertyValue", "missing")
    value = event["propertyValue"]
    if value is not None and not isinstance(value, str):
        raise PayloadError(f"{where}.propertyValue", "must be a string, as HubSpot sends values")
    return {name: value}


def _merge(event: Mapping[str, Any], *, where: str, stamp: _EventStamp) -> list[ContactChange]:
    """Records merged away are deleted, then the survivor is upserted: the record
    HubSpot created for the merge (``newObjectId``) or else the primary one."""
    primary = record_identifier(event.get("primaryObjectId"), where=f"{where}.primaryObjectId")
    merged = event.get("mergedObjectIds")
    if not isinstance(merged, list) or not merged:
        raise PayloadError(f"{where}.mergedObjectIds", "must be a non-empty array of ids")
    merged_ids = [
        record_identifier(item, where=f"{where}.mergedObjectIds[{i}]")
        for i, item in enumerate(merged)
    ]
    survivor = primary
    if event.get("newObjectId") is not None:
        survivor = record_identifier(event["newObjectId"], where=f"{where}.newObjectId")
    gone = [r for r in dict.fromkeys([*merged_ids, primary]) if r != survivor]
    # Each change of the event needs its own stable id: a redelivery repeats them all.
    deletes = [
        stamp.change(record_id, Operation.DELETE, {}, suffix=f":merged:{record_id}")
        for record_id in gone
    ]
    return [*deletes, stamp.change(survivor, Operation.UPSERT, {OBJECT_ID: survivor})]
