"""Salesforce Change Data Capture events, posted as JSON by a relay (e.g. a Pub/Sub API
subscriber): one change per record id, gap and overflow events refused or acknowledged."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from services.core import metrics
from services.core.contracts import ContactChange, FieldValue, Operation, Origin
from services.core.sources.salesforce import (
    SalesforceChangeEvents,
)
from services.ingest.auth import Authenticator
from services.ingest.connectors.base import (
    InboundRequest,
    PayloadError,
)
from services.ingest.connectors.salesforce.times import salesforce_time
from services.ingest.fields import (
    flatten,
    load_json,
    scalar_or_list,
)

log = logging.getLogger(__name__)

RECORD_CHANGES: Final = frozenset({"CREATE", "UPDATE", "DELETE", "UNDELETE"})
GAP_CHANGES: Final = frozenset(
    {"GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE", "GAP_OVERFLOW"}
)
MAX_EVENTS: Final = 1000
# ContactChange.sequence = commitNumber (the transaction's system change number, which
# increases with each commit) then sequenceNumber (the change's place in it), so changes
# with the same LastModifiedDate are ordered. Both fit in 63 bits. (The docs warn that
# commitNumber can restart when an org moves to another database instance; versions a
# second or more apart are still ordered by their LastModifiedDate.)
SEQUENCE_BITS: Final = 16
MAX_COMMIT_NUMBER: Final = (1 << (63 - SEQUENCE_BITS)) - 1


@dataclass(frozen=True)
class EventHeader:
    entity: str
    change_type: str
    record_ids: list[str]
    commit_at: datetime
    commit_number: int
    transaction_key: str
    sequence_number: int
    changed: list[str]
    nulled: list[str]
    diff: list[str]
    origin: str

    @property
    def sequence(self) -> int:
        commit = min(max(self.commit_number, 0), MAX_COMMIT_NUMBER)
        return (commit << SEQUENCE_BITS) | min(max(self.sequence_number, 0), 0xFFFF)


def soql_name(path: str) -> str:
    """A change event's field path as the field's own API name, the name queries and
    outbound messages use: compound fields arrive nested ("Get Compound Fields in Change
    Events"), e.g. Name.FirstName -> FirstName, MailingAddress.City -> MailingCity,
    Location__c.Latitude -> Location__Latitude__s."""
    compound, dot, component = path.partition(".")
    if not dot or "." in component:
        return path
    if compound == "Name":
        return component
    if compound.endswith("Address"):
        return compound.removesuffix("Address") + component
    if compound.endswith("__c") and component in ("Latitude", "Longitude"):
        return f"{compound.removesuffix('__c')}__{component}__s"
    return path


def _int(value: Any, *, where: str, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(where, "expected an integer")
    return value


def _names(value: Any, *, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PayloadError(where, "expected a list of field names")
    if any(v.startswith("0x") or re.match(r"^\d+-0x", v) for v in value):
        raise PayloadError(
            where, "bitmap-encoded (Pub/Sub API): the relay must decode it into field names"
        )
    return value


def read_header(payload: Mapping[str, Any], *, where: str) -> EventHeader:
    header = payload.get("ChangeEventHeader")
    where = f"{where}.ChangeEventHeader"
    if not isinstance(header, Mapping):
        raise PayloadError(where, "missing: not a change event")
    record_ids = header.get("recordIds")
    if not isinstance(record_ids, list) or not all(isinstance(r, str) and r for r in record_ids):
        raise PayloadError(f"{where}.recordIds", "expected a list of record ids")
    entity = header.get("entityName")
    change_type = header.get("changeType")
    key = header.get("transactionKey")
    for name, value in (
        ("entityName", entity),
        ("changeType", change_type),
        ("transactionKey", key),
    ):
        if not isinstance(value, str) or not value:
            raise PayloadError(f"{where}.{name}", "missing or not a string")
    return EventHeader(
        entity=str(entity),
        change_type=str(change_type),
        record_ids=record_ids,
        commit_at=salesforce_time(
            _int(header.get("commitTimestamp"), where=f"{where}.commitTimestamp"),
            where=f"{where}.commitTimestamp",
        ),
        commit_number=_int(header.get("commitNumber"), where=f"{where}.commitNumber", default=0),
        transaction_key=str(key),
        sequence_number=_int(header.get("sequenceNumber"), where=f"{where}.sequenceNumber"),
        changed=_names(header.get("changedFields"), where=f"{where}.changedFields"),
        nulled=_names(header.get("nulledFields"), where=f"{where}.nulledFields"),
        diff=_names(header.get("diffFields"), where=f"{where}.diffFields"),
        origin=str(header.get("changeOrigin") or ""),
    )


def made_by(change_origin: str, client: str) -> bool:
    """Whether a change event's ``changeOrigin`` names ``client``: Salesforce fills it
    for API writes as ``com/salesforce/api/<api>/<version>;client=<client>``, the client
    from the writer's ``Sforce-Call-Options`` header."""
    _, _, options = change_origin.partition(";")
    return any(option.strip() == f"client={client}" for option in options.split(";") if option)


def _path_value(body: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """(found, value) of a dotted path in the event body."""
    value: Any = body
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


def event_fields(
    payload: Mapping[str, Any], *, header: EventHeader, where: str
) -> dict[str, FieldValue]:
    """The record fields an event carries, by their API names.

    CREATE and UNDELETE carry the record; an UPDATE carries what ``changedFields`` names
    (a relay decoding Pub/Sub API events also has every other field, as null), and
    ``nulledFields`` were set to null. Fields in ``diffFields`` hold a diff, not a value:
    they are left out (the next poll or full sync reads their value).
    """
    body = {k: v for k, v in payload.items() if k != "ChangeEventHeader"}
    updating = header.change_type == "UPDATE"
    if updating and header.changed:
        chosen = _changed_values(body, header.changed)
    else:
        chosen = _body_values(body, keep_nulls=not updating)
    chosen.update(dict.fromkeys(header.nulled))
    skipped = set(header.diff)
    fields: dict[str, FieldValue] = {}
    for path, value in chosen.items():
        if path in skipped or path.split(".", 1)[0] in skipped:
            continue
        name = soql_name(path)
        if isinstance(value, Mapping):
            nested = flatten(value, where=f"{where}.{path}")
            fields.update({f"{name}.{key}": item for key, item in nested.items()})
        else:
            fields[name] = scalar_or_list(value, where=f"{where}.{path}")
    return fields


def _changed_values(body: Mapping[str, Any], changed: list[str]) -> dict[str, Any]:
    """The values of the changed fields; a changed compound field gives its components."""
    chosen: dict[str, Any] = {}
    for path in changed:
        found, value = _path_value(body, path)
        if found and isinstance(value, Mapping):
            chosen.update({f"{path}.{k}": v for k, v in value.items()})
        elif found:
            chosen[path] = value
    return chosen


def _body_values(body: Mapping[str, Any], *, keep_nulls: bool) -> dict[str, Any]:
    """Every field of the body, compound fields by component."""
    chosen: dict[str, Any] = {}
    for name, value in body.items():
        parts = (
            {f"{name}.{k}": v for k, v in value.items()}
            if isinstance(value, Mapping)
            else {name: value}
        )
        chosen.update({p: v for p, v in parts.items() if keep_nulls or v is not None})
    return chosen


class ChangeEvents:
    """Change Data Capture events posted by a relay, as changes.

    Salesforce delivers change events only to its own subscribers (Pub/Sub API, the
    Streaming API), so a relay subscribes and posts them here as JSON: one event, a list
    of events, or CometD messages (``{"data": {"payload": ...}}``), with bitmap fields
    decoded into names. The relay authenticates with a shared scheme (bearer, HMAC-SHA256
    or Standard Webhooks); an unauthenticated relay is not configurable. An event whose
    ``changeOrigin`` names ``own_client`` is crmsync's own write as a destination,
    echoed back: it is dropped.

    Each record id of an event becomes one change: event id ``transactionKey``,
    ``sequenceNumber`` and record id (unique per change, the same when the relay posts
    it again); time ``LastModifiedDate`` when the event has it (the clock polls read),
    else ``commitTimestamp`` (deletions); sequence from commitNumber and sequenceNumber.
    Gap and overflow events, and events whose recordIds is a wildcard ("003*"), carry no
    data: by ``gap_events`` they are refused with 400, naming what to do, or answered
    200 and left to the poll.
    """

    def __init__(self, *, source: str, settings: SalesforceChangeEvents) -> None:
        self.source = source
        self._auth = Authenticator(settings.auth)
        self._gap_events = settings.gap_events
        self._own_client = settings.own_client

    def authenticate(self, request: InboundRequest, *, now: datetime) -> None:
        self._auth.verify(request, now=now)

    def changes(
        self, request: InboundRequest, *, accepted: frozenset[str], received_at: datetime
    ) -> list[ContactChange]:
        document = load_json(request.body)
        events = document if isinstance(document, list) else [document]
        if not events:
            raise PayloadError("body", "no events")
        if len(events) > MAX_EVENTS:
            raise PayloadError("body", f"more than {MAX_EVENTS} events")
        changes: list[ContactChange] = []
        for index, event in enumerate(events):
            where = f"body[{index}]" if isinstance(document, list) else "body"
            payload, where = self._payload(event, where=where)
            changes.extend(self._changes(payload, where=where, accepted=accepted, at=received_at))
        return changes

    @staticmethod
    def _payload(event: Any, *, where: str) -> tuple[Mapping[str, Any], str]:
        if isinstance(event, Mapping) and "ChangeEventHeader" in event:
            return event, where
        if isinstance(event, Mapping) and isinstance(event.get("payload"), Mapping):
            return event["payload"], f"{where}.payload"
        data = event.get("data") if isinstance(event, Mapping) else None
        if isinstance(data, Mapping) and isinstance(data.get("payload"), Mapping):
            return data["payload"], f"{where}.data.payload"
        raise PayloadError(where, "not a change event: no ChangeEventHeader")

    def _changes(
        self, payload: Mapping[str, Any], *, where: str, accepted: frozenset[str], at: datetime
    ) -> list[ContactChange]:
        header = read_header(payload, where=where)
        if header.entity not in accepted:
            raise PayloadError(
                f"{where}.ChangeEventHeader.entityName",
                f"{header.entity} is not one of {sorted(accepted)}",
            )
        wildcard = any(r.endswith("*") for r in header.record_ids)
        if header.change_type in GAP_CHANGES or wildcard:
            return self._gap(header, where=where)
        if header.change_type not in RECORD_CHANGES:
            raise PayloadError(
                f"{where}.ChangeEventHeader.changeType", f"unknown {header.change_type!r}"
            )
        if not header.record_ids:
            raise PayloadError(f"{where}.ChangeEventHeader.recordIds", "empty")
        if self._own_client is not None and made_by(header.origin, self._own_client):
            metrics.ECHOES_DROPPED.labels(self.source).inc()
            return []
        deleting = header.change_type == "DELETE"
        fields = {} if deleting else event_fields(payload, header=header, where=where)
        modified_at = header.commit_at
        if payload.get("LastModifiedDate") is not None and not deleting:
            modified_at = salesforce_time(
                payload["LastModifiedDate"], where=f"{where}.LastModifiedDate"
            )
        return [
            ContactChange(
                source=self.source,
                record_id=record_id,
                operation=Operation.DELETE if deleting else Operation.UPSERT,
                event_id=f"{header.transaction_key}:{header.sequence_number}:{record_id}",
                source_modified_at=modified_at,
                received_at=at,
                fields={**fields, "Id": record_id},
                sequence=header.sequence,
                origin=Origin.WEBHOOK,
            )
            for record_id in header.record_ids
        ]

    def _gap(self, header: EventHeader, *, where: str) -> list[ContactChange]:
        shown = ", ".join(header.record_ids[:5]) or "unnamed records"
        if len(header.record_ids) > 5:
            shown += f" and {len(header.record_ids) - 5} more"
        if self._gap_events == "reject":
            raise PayloadError(
                f"{where}.ChangeEventHeader.changeType",
                f"{header.change_type} for {header.entity} {shown}: Salesforce sent no field "
                "data; run a full sync (crmsync fullsync start) to read the records again",
            )
        log.warning(
            "gap event acknowledged source=%s type=%s entity=%s records=%s: the poll reads "
            "them again",
            self.source,
            header.change_type,
            header.entity,
            len(header.record_ids),
        )
        return []
