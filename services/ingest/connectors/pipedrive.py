"""The Pipedrive connector: Webhooks v2 events (push) and the persons API v2 (pull).

Documented behaviour followed (Pipedrive developer documentation):

- "Guide for Webhooks v2" (pipedrive.readme.io/docs/guide-for-webhooks-v2): one event
  per POST, ``{"meta": {...}, "data": ..., "previous": ...}``; ``meta.version`` is
  "2.0", ``meta.action`` create / change / delete, ``meta.entity`` the object type,
  ``meta.entity_id`` the object's id, ``meta.id`` "ID of the event triggering the
  webhook" (retries carry the same id and a higher ``meta.attempt``), ``meta.timestamp``
  (the example is ISO 8601, the table says a 10-character Unix time: both are read).
  ``data`` is the object's current state (null on delete); ``previous`` is null on
  create, the changed fields' previous values on change, and the last state on delete.
  A webhook authenticates only with the HTTP Basic credentials given when it was
  created (``http_auth_user`` / ``http_auth_password``): there is no signature and no
  signed timestamp, so a captured request could be replayed; its event id makes a
  replay a duplicate downstream, never a new change.
- API v2 "Get all persons" (GET /api/v2/persons): ``updated_since`` (RFC 3339, "later
  than or equal to"), ``sort_by=update_time``, ``sort_direction=asc``, ``limit`` (100
  by default, at most 500), ``cursor``; the answer is ``{"success": true, "data": [...],
  "additional_data": {"next_cursor": "..." | null}}``. Persons carry ``emails`` /
  ``phones`` / ``im`` as lists of ``{value, primary, label}`` and custom fields in a
  ``custom_fields`` object keyed by 40-character hashes ("Pipedrive API v2 migration
  guide": currency, address, date range and time fields are objects with ``value``).
- "Authentication": the API token goes in the ``x-api-token`` header (never the query
  string, which could end up in a log). "Rate limiting": over the burst or daily token
  budget the API answers 429; the documented headers are ``x-ratelimit-limit`` /
  ``-remaining`` / ``-reset``. ``ApiClient`` retries 429, waiting ``Retry-After`` when
  sent, else ``x-ratelimit-reset`` seconds (``reset_wait``), else backing off.

Steps of a webhook:

1. ``authenticate``: the Authorization header must be ``Basic`` with exactly the
   configured user and password (one constant-time comparison of ``user:password``).
2. ``parse``: a v2 event about a person becomes one ContactChange. Events about other
   objects (a ``*.*`` webhook) are dropped with 200, or refused with 400 when the source
   says ``other_entities: reject``; a v1 payload is refused naming ``meta.version``.
   An event with ``meta.change_source`` "api" (Pipedrive's mark of a change made
   through the API, beside "app") by one of ``own_user_ids`` (``meta.user_id``, the
   user of the token) is the echo of crmsync's own write as a destination: dropped.
   create / change: the fields of ``data``; the change's time is ``data.update_time``,
   the clock polls read too, so push and pull order the same versions alike. delete:
   the fields of ``previous`` (the last state) and ``meta.merged_to_id`` when the delete
   is half of a merge; its time is ``meta.timestamp``, never earlier than the last
   state's update time, so a deletion is never older than the version it ends. The
   ``previous`` of a change event is not needed: ``data`` is the complete new state.

Person fields: the lists of contact points become lists of their values (``emails``,
``phones``, ``im``) plus the primary one as a plain string (``primary_email``,
``primary_phone``, ``primary_im``: the item marked ``primary``, else the first).
Webhooks v2 tag each custom field value with its type (``{"type": "varchar", "value":
...}``, ``{"type": "enum", "id": 3}``, ``{"type": "set", "values": [{"id": 1}]}``, as
public v2 integrations show; the guide links its examples from the migration guide);
the tag is removed so that a webhook and a poll give the same field names and values
(``custom_fields.<hash>``, or ``custom_fields.<hash>.value`` / ``.currency`` for the
object-valued types).

Steps of a pull: page through ``GET /api/v2/persons`` sorted by ``update_time``
ascending, ``updated_since`` the poll's start (none for a full sync); every page
advances the watermark to its newest ``update_time``; the checkpoint's cursor holds the
query's ``updated_since`` with Pipedrive's opaque ``next_cursor``, so a resumed pull
continues the very same query. Cursor paging has no documented result-window limit.
The list does not return deleted persons: deletions arrive by webhook only (a person
marked ``is_deleted`` would still become a DELETE).

One CRM's connector in one module (its webhooks, pull pages and field conversions), read
against Pipedrive's documentation as a whole; hence over 400 lines.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from services.core import metrics
from services.core.api_client import ApiClient, ApiError
from services.core.bearer import same
from services.core.contracts import ContactChange, FieldValue, Operation, Origin, RejectedEvent
from services.core.sources.pipedrive import PERSONS_MAX_LIMIT, PipedriveSource, PipedriveWebhooks
from services.ingest.auth import header
from services.ingest.connectors.base import (
    AuthError,
    Checkpoint,
    InboundRequest,
    PayloadError,
    PullPage,
    SourceConnectors,
    Stamp,
    WebhookAnswer,
    json_answer,
)
from services.ingest.fields import (
    flatten,
    load_json,
    parse_timestamp,
    pulled_changes,
    record_identifier,
    version_event_id,
)

log = logging.getLogger(__name__)

PERSONS_PATH: Final = "/api/v2/persons"
WEBHOOKS_VERSION: Final = "2.0"
PERSON: Final = "person"
ACTIONS: Final = frozenset({"create", "change", "delete"})
# Lists of {value, primary, label} and the plain-string field of their primary item.
CONTACT_POINTS: Final = {"emails": "primary_email", "phones": "primary_phone", "im": "primary_im"}
# A deletion is stamped at least this much after the last state it ends.
AFTER_LAST_STATE: Final = timedelta(microseconds=1)


# --- person fields -------------------------------------------------------------------


def person_fields(person: Mapping[str, Any], *, where: str) -> dict[str, FieldValue]:
    """A person (API v2 or webhook v2 shape) as flat fields, the primary email a string."""
    record = dict(person)
    primaries: dict[str, FieldValue] = {}
    for name, primary_name in CONTACT_POINTS.items():
        if name in record:
            values, primary = contact_points(record[name], where=f"{where}.{name}")
            record[name] = values
            primaries[primary_name] = primary
    custom = record.get("custom_fields")
    if isinstance(custom, Mapping):
        record["custom_fields"] = {key: untagged(value) for key, value in custom.items()}
    fields = flatten(record, where=where)
    fields.update(primaries)
    return fields


def contact_points(items: Any, *, where: str) -> tuple[list[str], str | None]:
    """The values of a list of ``{value, primary, label}`` and the primary value."""
    if items is None:
        return [], None
    if not isinstance(items, list):
        raise PayloadError(where, "expected a list of {value, primary, label} objects")
    values: list[str] = []
    primary: str | None = None
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise PayloadError(f"{where}[{index}]", "expected an object with 'value'")
        value = item.get("value")
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise PayloadError(f"{where}[{index}].value", "must be a string")
        values.append(value)
        if primary is None and item.get("primary") is True:
            primary = value
    return values, primary if primary is not None else (values[0] if values else None)


def untagged(value: Any) -> Any:
    """A webhook v2 custom field value without its type tag, shaped as API v2 has it."""
    if not isinstance(value, Mapping) or "type" not in value:
        return value
    rest = {key: item for key, item in value.items() if key != "type"}
    options = rest.get("values")
    if isinstance(options, list):
        # Multiple options: [{"id": 1}, {"id": 2}] -> [1, 2], as API v2 lists them.
        return [o["id"] if isinstance(o, Mapping) and "id" in o else o for o in options]
    if rest.keys() == {"id"}:
        return rest["id"]
    if rest.keys() == {"value"}:
        return rest["value"]
    return rest


# --- push ----------------------------------------------------------------------------


def verify_basic(headers: Mapping[str, str], *, expected: bytes) -> None:
    """HTTP Basic (RFC 7617): ``Basic base64(user:password)``, compared in constant time."""
    scheme, _, encoded = header(headers, "Authorization").partition(" ")
    if scheme.lower() != "basic":
        raise AuthError("expected HTTP Basic credentials")
    try:
        presented = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise AuthError("malformed Basic credentials") from None
    if not same(presented, expected):
        raise AuthError("invalid Basic credentials")


@dataclass(frozen=True)
class Event:
    """The meta block of one Webhooks v2 event, checked."""

    event_id: str
    action: str
    record_id: str
    occurred_at: datetime


class PipedriveWebhookConnector:
    def __init__(self, *, source: str, settings: PipedriveWebhooks) -> None:
        self.source = source
        self._other_entities = settings.other_entities
        # Webhooks v2 send ids as strings ("123"), v1 sent numbers: compared as text.
        self._own_user_ids = frozenset(str(user) for user in settings.own_user_ids)
        # Resolved once; only this byte string is kept, never logged.
        self._expected = f"{settings.username}:{settings.password.resolve()}".encode()

    def authenticate(self, request: InboundRequest, *, now: datetime) -> None:
        # Pipedrive sends no timestamp or signature to check against ``now``.
        verify_basic(request.headers, expected=self._expected)

    def answer(self, request: InboundRequest, accepted: int) -> WebhookAnswer:
        # Any 2XX counts as delivered.
        return json_answer(accepted)

    def parse(self, request: InboundRequest, *, received_at: datetime) -> Sequence[ContactChange]:
        document = load_json(request.body)
        if not isinstance(document, dict):
            raise PayloadError("body", "must be a JSON object (one Webhooks v2 event)")
        meta = document.get("meta")
        if not isinstance(meta, dict):
            raise PayloadError("body.meta", "missing or not an object")
        version = meta.get("version")
        if version != WEBHOOKS_VERSION:
            raise PayloadError(
                "body.meta.version", f"expected '2.0' (Webhooks v2), got {str(version)[:20]!r}"
            )
        entity = meta.get("entity")
        if not isinstance(entity, str) or not entity:
            raise PayloadError("body.meta.entity", "missing or not a string")
        if entity != PERSON:
            return self._other_entity(entity)
        if self._own_write(meta):
            metrics.ECHOES_DROPPED.labels(self.source).inc()
            return []
        event = self._event(meta)
        if event.action == "delete":
            return [self._deletion(document, meta, event=event, at=received_at)]
        return [self._upsert(document, event=event, at=received_at)]

    def _own_write(self, meta: Mapping[str, Any]) -> bool:
        user = meta.get("user_id")
        return (
            meta.get("change_source") == "api"
            and isinstance(user, int | str)
            and not isinstance(user, bool)
            and str(user) in self._own_user_ids
        )

    def _other_entity(self, entity: str) -> Sequence[ContactChange]:
        if self._other_entities == "reject":
            raise PayloadError("body.meta.entity", f"{entity[:40]!r} events are not persons")
        log.info("pipedrive event ignored source=%s entity=%s", self.source, entity[:40])
        return []

    @staticmethod
    def _event(meta: Mapping[str, Any]) -> Event:
        action = meta.get("action")
        if action not in ACTIONS:
            raise PayloadError("body.meta.action", "expected create, change or delete")
        return Event(
            event_id=record_identifier(meta.get("id"), where="body.meta.id"),
            action=str(action),
            record_id=record_identifier(meta.get("entity_id"), where="body.meta.entity_id"),
            occurred_at=parse_timestamp(meta.get("timestamp"), where="body.meta.timestamp"),
        )

    def _upsert(self, document: Mapping[str, Any], *, event: Event, at: datetime) -> ContactChange:
        data = document.get("data")
        if not isinstance(data, dict):
            raise PayloadError("body.data", f"a {event.action} event carries the person")
        if "id" in data and record_identifier(data["id"], where="body.data.id") != event.record_id:
            raise PayloadError("body.data.id", "does not match meta.entity_id")
        modified_at = event.occurred_at
        if data.get("update_time") is not None:
            modified_at = parse_timestamp(data["update_time"], where="body.data.update_time")
        return self._change(
            event,
            operation=Operation.UPSERT,
            modified_at=modified_at,
            fields=person_fields(data, where="body.data"),
            at=at,
        )

    def _deletion(
        self, document: Mapping[str, Any], meta: Mapping[str, Any], *, event: Event, at: datetime
    ) -> ContactChange:
        last = document.get("previous")
        if last is not None and not isinstance(last, dict):
            raise PayloadError("body.previous", "must be the person's last state or null")
        fields = person_fields(last, where="body.previous") if last else {}
        modified_at = event.occurred_at
        if last and last.get("update_time") is not None:
            last_update = parse_timestamp(last["update_time"], where="body.previous.update_time")
            modified_at = max(modified_at, last_update + AFTER_LAST_STATE)
        if meta.get("merged_to_id") is not None:
            fields["merged_to_id"] = record_identifier(
                meta["merged_to_id"], where="body.meta.merged_to_id"
            )
        return self._change(
            event, operation=Operation.DELETE, modified_at=modified_at, fields=fields, at=at
        )

    def _change(
        self,
        event: Event,
        *,
        operation: Operation,
        modified_at: datetime,
        fields: dict[str, FieldValue],
        at: datetime,
    ) -> ContactChange:
        return ContactChange(
            source=self.source,
            record_id=event.record_id,
            operation=operation,
            event_id=event.event_id,
            source_modified_at=modified_at,
            received_at=at,
            fields=fields,
            origin=Origin.WEBHOOK,
        )


# --- pull ----------------------------------------------------------------------------


class ApiToken:
    """Pipedrive's API token, sent in the ``x-api-token`` header."""

    def __init__(self, token: str) -> None:
        self._headers = {"x-api-token": token}

    async def headers(self) -> Mapping[str, str]:
        return self._headers

    async def refresh(self) -> bool:
        # A refused personal API token stays refused: nothing to refresh.
        return False


def rfc3339(moment: datetime) -> str:
    """``updated_since`` as documented (``2025-01-01T10:20:00Z``): whole seconds, rounded
    down so that the filter still includes the moment itself."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Position:
    """Where a pull stands: its query's ``updated_since`` and Pipedrive's next cursor."""

    since: str | None
    cursor: str | None = None

    def dump(self) -> str:
        return json.dumps({"since": self.since, "cursor": self.cursor}, separators=(",", ":"))

    @classmethod
    def load(cls, text: str) -> Position:
        document = json.loads(text)
        since, cursor = document.get("since"), document.get("cursor")
        if not isinstance(since, str | None) or not isinstance(cursor, str | None):
            raise ValueError("not a pipedrive pull position")
        return cls(since=since, cursor=cursor)


class PipedrivePullConnector:
    def __init__(self, *, source: str, settings: PipedriveSource) -> None:
        self.source = source
        size = settings.poll.page_size if settings.poll is not None else 100
        self._limit = min(size, PERSONS_MAX_LIMIT)

    async def pages(
        self,
        api: ApiClient,
        *,
        since: datetime | None,
        resume: Checkpoint | None,
        stamp: Stamp,
    ) -> AsyncIterator[PullPage]:
        position = self._start(since, resume)
        watermark = resume.watermark if resume is not None else None
        while True:
            document = await api.get_json(PERSONS_PATH, params=self._params(position))
            records, next_cursor = self._page(document)
            changes, rejected = self._changes(records, stamp=stamp)
            if changes:
                newest = max(c.source_modified_at for c in changes)
                watermark = newest if watermark is None else max(watermark, newest)
            position = Position(since=position.since, cursor=next_cursor)
            cursor = position.dump() if next_cursor is not None else None
            yield PullPage(
                changes=changes,
                checkpoint=Checkpoint(watermark=watermark, cursor=cursor),
                rejected=rejected,
            )
            if cursor is None:
                return

    def _start(self, since: datetime | None, resume: Checkpoint | None) -> Position:
        fresh = Position(since=rfc3339(since) if since is not None else None)
        if resume is None or resume.cursor is None:
            return fresh
        try:
            return Position.load(resume.cursor)
        except (ValueError, AttributeError):
            # Starting the query over reads some persons twice but misses none.
            log.warning("pipedrive pull restarts: unreadable position source=%s", self.source)
            return fresh

    def _params(self, position: Position) -> dict[str, str]:
        params = {"sort_by": "update_time", "sort_direction": "asc", "limit": str(self._limit)}
        if position.since is not None:
            params["updated_since"] = position.since
        if position.cursor is not None:
            params["cursor"] = position.cursor
        return params

    @staticmethod
    def _page(document: Any) -> tuple[list[Any], str | None]:
        # "Each response sent from the API contains a success parameter" (Responses).
        if not isinstance(document, dict) or document.get("success") is not True:
            raise ApiError(status=200, path=PERSONS_PATH, detail="not a successful list answer")
        records = document.get("data") or []
        if not isinstance(records, list):
            raise ApiError(status=200, path=PERSONS_PATH, detail="'data' is not a list")
        additional = document.get("additional_data") or {}
        cursor = additional.get("next_cursor") if isinstance(additional, dict) else None
        if cursor is not None and not isinstance(cursor, str):
            raise ApiError(status=200, path=PERSONS_PATH, detail="next_cursor is not a string")
        return records, cursor or None

    def _changes(
        self, records: list[Any], *, stamp: Stamp
    ) -> tuple[list[ContactChange], list[RejectedEvent]]:
        return pulled_changes(
            self.source,
            ((f"data[{i}]", record) for i, record in enumerate(records)),
            convert=lambda record, where: self._change(record, where=where, stamp=stamp),
        )

    def _change(self, record: Any, *, where: str, stamp: Stamp) -> ContactChange:
        if not isinstance(record, dict):
            raise PayloadError(where, "must be a JSON object")
        record_id = record_identifier(record.get("id"), where=f"{where}.id")
        modified_at = parse_timestamp(record.get("update_time"), where=f"{where}.update_time")
        return ContactChange(
            source=self.source,
            record_id=record_id,
            operation=Operation.DELETE if record.get("is_deleted") is True else Operation.UPSERT,
            event_id=version_event_id(self.source, record_id, modified_at),
            source_modified_at=modified_at,
            received_at=datetime.now(UTC),
            fields=person_fields(record, where=where),
            origin=stamp.origin,
            sync_id=stamp.sync_id,
        )


def reset_wait(headers: Mapping[str, str]) -> float | None:
    """Pipedrive's ``x-ratelimit-reset``: seconds until the rate-limit window resets."""
    value = headers.get("x-ratelimit-reset", "").strip()
    try:
        return float(value) if value else None
    except ValueError:
        return None


def connectors(source: str, settings: PipedriveSource) -> SourceConnectors:
    webhook = None
    if settings.webhooks is not None:
        webhook = PipedriveWebhookConnector(source=source, settings=settings.webhooks)
    if settings.api is None:
        return SourceConnectors(webhook=webhook)
    token = settings.api.token.resolve() if settings.api.token is not None else ""
    return SourceConnectors(
        webhook=webhook,
        pull=PipedrivePullConnector(source=source, settings=settings),
        api=settings.api,
        poll=settings.poll,
        credentials=ApiToken(token),
        wait_hint=reset_wait,
    )
