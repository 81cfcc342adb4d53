"""A fake HubSpot: the CRM v3 contacts search and list endpoints, and signed webhooks.

Follows HubSpot's public documentation (developers.hubspot.com):

- ``POST /crm/v3/objects/contacts/search`` ("Search the CRM"): ``filterGroups`` (OR of
  ANDed ``filters``; at most 5 groups, 6 filters each, 18 in all), one sort at most,
  ``properties``, ``limit`` (default 10, at most 200), ``after`` (an offset, as an
  integer string); answers ``{"total", "results", "paging": {"next": {"after"}}}``.
  A query's results end at 10,000: a request with ``after`` at or past it is a 400,
  as is a body over 3,000 characters. Archived contacts are never found. The search
  endpoints take 5 requests per second per account; more get HubSpot's 429 body.
- ``GET /crm/v3/objects/contacts`` (list): ``limit`` (at most 100), ``after`` (an
  opaque cursor from ``paging.next.after``), ``properties`` (comma separated),
  ``archived``; records in id order, no result window, no ``total``.
- Records look like the API's: ``id``, ``properties`` (every value a string, as
  HubSpot returns them, ``hs_object_id``, ``createdate`` and ``lastmodifieddate``
  always included), ``createdAt``, ``updatedAt``, ``archived``.
- Webhooks ("Webhooks API", "Validating requests"): every change made through
  ``upsert``/``delete``/``merge`` queues the events HubSpot would send;
  ``webhook_request`` builds the body and headers of one delivery, signed v3 (with the
  v1 headers HubSpot also sends to webhook endpoints) or v2. The signatures are
  computed here from the documentation, independently of the connector.

- Writes ("Contacts" guide; reference pages "Upsert contacts", "Update contacts",
  "Permanently delete a contact (GDPR-compliant)"; "Error handling"):
  ``POST /crm/v3/objects/contacts/batch/upsert`` (``inputs`` of ``{id, idProperty,
  properties, objectWriteTraceId}``; ``idProperty`` must be a unique property, here
  ``email``: an unknown email creates the contact with that email),
  ``POST .../batch/update`` (``inputs`` of ``{id, properties, objectWriteTraceId}``,
  ``""`` clears a property) and ``POST .../gdpr-delete`` (``{objectId, idProperty}``,
  204; a contact permanently removed, an unknown email blocklisted, an unknown id
  404). At most 100 inputs, ids unique in a request, every property value a string;
  else 400 ``VALIDATION_ERROR`` for the whole request. Answers: 200 ``{status:
  "COMPLETE", results, startedAt, completedAt}``, or 207 with ``errors`` and
  ``numErrors`` as well: an update of an unknown id is ``OBJECT_NOT_FOUND`` with the
  id in ``context.ids``; an invalid email fails its input alone (``context.
  objectWriteTraceId``) when every input carries an ``objectWriteTraceId`` (HubSpot's
  multi-status error handling), else the whole request with 400.
- Who made a change: the webhook events of a change made in HubSpot's UI carry
  ``changeSource`` "CRM_UI" and ``sourceId`` "userId:<user>"; HubSpot's webhook guide
  defines ``changeSource`` as the change's source as contact property histories name
  it, and ``sourceId`` as the id of that source. Payloads HubSpot delivers for changes
  an app makes through the API with its own token (private app access token or OAuth)
  carry ``changeSource`` "INTEGRATION" and that app's id, as a string, in
  ``sourceId`` (for a private app the same number as the ``appId`` of the
  subscription). Every write through the endpoints above queues its events marked
  that way (``INTEGRATION_ORIGIN``); changes made with ``upsert``/``delete``/
  ``merge`` stand for users' edits in the UI.

A bad token gets HubSpot's 401. ``Faults`` (tests/fakes/server.py) adds the general
rate limit (HubSpot's TEN_SECONDLY_ROLLING 429), random 5xx and slow answers.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import functools
import hashlib
import hmac
import json
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aiohttp import web

from tests.fakes.server import FakeServer, Faults, run_standalone, standalone_arguments

TOKEN: Final = "pat-na1-11111111-2222-3333-4444-555555555555"
CLIENT_SECRET: Final = "8f4e2a17-5b6c-4d3e-9a1b-0c2d3e4f5a6b"
PORTAL_ID: Final = 62515
APP_ID: Final = 54321
SEARCH_WINDOW: Final = 10_000
SEARCH_MAX_LIMIT: Final = 200
SEARCH_DEFAULT_LIMIT: Final = 10
SEARCH_MAX_BODY_CHARS: Final = 3000
LIST_MAX_LIMIT: Final = 100
MAX_EVENTS_PER_REQUEST: Final = 100
BATCH_MAX_INPUTS: Final = 100
UI_ORIGIN: Final = ("CRM_UI", "userId:4242")
INTEGRATION_ORIGIN: Final = ("INTEGRATION", str(APP_ID))
"""(changeSource, sourceId) of a change made through the API with the app's token."""
EMAIL_FORMAT: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
DATETIME_PROPERTIES: Final = frozenset({"createdate", "lastmodifieddate"})
NUMBER_PROPERTIES: Final = frozenset({"hs_object_id"})
ALWAYS_RETURNED: Final = ("createdate", "hs_object_id", "lastmodifieddate")
DEFAULT_PROPERTIES: Final = ("createdate", "email", "firstname", "hs_object_id", "lastname")
# The escapes HubSpot decodes in the URI before signing v3 (documented table).
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
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def iso(moment: datetime) -> str:
    """HubSpot's timestamps: ISO 8601 in UTC with milliseconds."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def millis(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def from_millis(value: int) -> datetime:
    return EPOCH + timedelta(milliseconds=value)


def property_text(value: Any) -> str | None:
    """A value as HubSpot stores and returns it: always a string."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(str(item) for item in value)  # multiple checkboxes
    return str(value)


def error_body(message: str, category: str, **extra: Any) -> dict[str, Any]:
    return {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
        **extra,
    }


def rate_limit_response(policy: str, message: str) -> web.Response:
    """HubSpot's documented 429 body (API usage guidelines, "Error responses")."""
    body = {
        "status": "error",
        "message": message,
        "errorType": "RATE_LIMIT",
        "correlationId": str(uuid.uuid4()),
        "policyName": policy,
        "requestId": str(uuid.uuid4()),
    }
    return web.json_response(body, status=429)


def ten_secondly_throttle(_status: int) -> web.Response:
    """The general rate limit's answer, for ``Faults.throttle_response``."""
    response = rate_limit_response("TEN_SECONDLY_ROLLING", "You have reached your secondly limit.")
    response.headers.update(
        {
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
            "X-HubSpot-RateLimit-Max": "190",
            "X-HubSpot-RateLimit-Remaining": "0",
        }
    )
    return response


# --- webhook signing (HubSpot's side) --------------------------------------------------


def v3_source_uri(url: str) -> str:
    for encoded, decoded in V3_DECODED.items():
        url = url.replace(encoded, decoded)
    return url


def sign_v3(secret: str, *, method: str, url: str, body: bytes, timestamp: str) -> str:
    source = f"{method}{v3_source_uri(url)}{body.decode('utf-8')}{timestamp}".encode()
    digest = hmac.new(secret.encode("utf-8"), source, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def sign_v2(secret: str, *, method: str, url: str, body: bytes) -> str:
    source = f"{secret}{method}{url}{body.decode('utf-8')}"
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def sign_v1(secret: str, *, body: bytes) -> str:
    return hashlib.sha256(f"{secret}{body.decode('utf-8')}".encode()).hexdigest()


def webhook_request(
    events: Sequence[Mapping[str, Any]],
    *,
    url: str,
    secret: str = CLIENT_SECRET,
    version: str = "v3",
    timestamp_ms: int | None = None,
    method: str = "POST",
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one delivery of ``events`` to ``url``, as HubSpot sends."""
    if not events or len(events) > MAX_EVENTS_PER_REQUEST:
        raise ValueError("HubSpot sends 1 to 100 events per request")
    body = json.dumps(list(events), separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json"}
    if version == "v3":
        stamp = str(timestamp_ms if timestamp_ms is not None else int(time.time() * 1000))
        headers["X-HubSpot-Request-Timestamp"] = stamp
        headers["X-HubSpot-Signature-v3"] = sign_v3(
            secret, method=method, url=url, body=body, timestamp=stamp
        )
        # Webhook deliveries also carry the older v1 signature.
        headers["X-HubSpot-Signature-Version"] = "v1"
        headers["X-HubSpot-Signature"] = sign_v1(secret, body=body)
    elif version == "v2":
        headers["X-HubSpot-Signature-Version"] = "v2"
        headers["X-HubSpot-Signature"] = sign_v2(secret, method=method, url=url, body=body)
    else:
        raise ValueError(f"unknown signature version {version!r}")
    return body, headers


def batches(events: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Events split into deliveries of at most 100, as HubSpot batches them."""
    size = MAX_EVENTS_PER_REQUEST
    return [list(events[i : i + size]) for i in range(0, len(events), size)]


# --- search filters ----------------------------------------------------------------------


class SearchError(Exception):
    """A search request HubSpot would refuse with 400 VALIDATION_ERROR."""


def comparable(name: str, value: Any) -> Any:
    """A property or filter value as HubSpot compares it."""
    if value is None:
        return None
    text = str(value)
    if name in DATETIME_PROPERTIES:
        return datetime_millis(text)
    if name in NUMBER_PROPERTIES:
        return int(text)
    return text.lower()


@functools.lru_cache(maxsize=65_536)
def datetime_millis(text: str) -> int:
    """A datetime filter or property value (Unix ms or ISO 8601) as Unix ms."""
    if text.lstrip("-").isdigit():
        return int(text)
    return millis(datetime.fromisoformat(text.replace("Z", "+00:00")))


def filter_matches(record: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    name = spec.get("propertyName")
    operator = spec.get("operator")
    if not isinstance(name, str) or not isinstance(operator, str):
        raise SearchError("a filter needs propertyName and operator")
    actual = comparable(name, record["properties"].get(name))
    if operator == "HAS_PROPERTY":
        return actual not in (None, "")
    if operator == "NOT_HAS_PROPERTY":
        return actual in (None, "")
    if operator in ("IN", "NOT_IN"):
        values = [comparable(name, v) for v in spec.get("values", [])]
        return (actual in values) == (operator == "IN")
    try:
        value = comparable(name, spec.get("value"))
    except ValueError as exc:
        raise SearchError(f"invalid value for {name}: {exc}") from None
    if operator == "BETWEEN":
        high = comparable(name, spec.get("highValue"))
        return actual is not None and value <= actual <= high
    return compare(operator, actual, value)


def compare(operator: str, actual: Any, value: Any) -> bool:
    if operator == "EQ":
        return bool(actual == value)
    if operator == "NEQ":
        return bool(actual != value)
    if actual is None or value is None:
        return False
    checks: dict[str, Callable[[Any, Any], bool]] = {
        "LT": lambda a, b: a < b,
        "LTE": lambda a, b: a <= b,
        "GT": lambda a, b: a > b,
        "GTE": lambda a, b: a >= b,
    }
    if operator not in checks:
        raise SearchError(f"unsupported operator {operator!r}")
    return checks[operator](actual, value)


def check_filter_groups(groups: Any) -> list[Any]:
    if groups is None:
        return []
    if not isinstance(groups, list) or len(groups) > 5:
        raise SearchError("filterGroups: at most 5 groups")
    total = 0
    for group in groups:
        filters = group.get("filters") if isinstance(group, dict) else None
        if not isinstance(filters, list) or len(filters) > 6:
            raise SearchError("a filter group has 1 to 6 filters")
        total += len(filters)
    if total > 18:
        raise SearchError("at most 18 filters in all")
    return groups


# --- batch write validation ------------------------------------------------------------


class BatchError(Exception):
    """A batch request HubSpot refuses as a whole (400 VALIDATION_ERROR)."""


def check_inputs(body: Any, *, upsert: bool) -> list[dict[str, Any]]:
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= BATCH_MAX_INPUTS:
        raise BatchError(f"inputs: 1 to {BATCH_MAX_INPUTS} inputs per request")
    seen: set[str] = set()
    for index, item in enumerate(inputs):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise BatchError(f"inputs[{index}].id is required")
        properties = item.get("properties")
        if not isinstance(properties, dict) or not all(
            isinstance(v, str) for v in properties.values()
        ):
            raise BatchError(f"inputs[{index}].properties: values are strings")
        if upsert and item.get("idProperty") != "email":
            raise BatchError(f"inputs[{index}].idProperty: a unique property (email) is required")
        if item.get("idProperty") not in (None, "email"):
            raise BatchError(f"inputs[{index}].idProperty: not a unique property of contacts")
        key = item["id"].lower()
        if key in seen:
            raise BatchError(
                f"Duplicate IDs found in batch input: [{item['id']}]. IDs must be unique"
            )
        seen.add(key)
    return inputs


def valid_input(item: Mapping[str, Any], *, upsert: bool) -> bool:
    emails = [item["properties"].get("email"), item["id"] if upsert else None]
    return all(e in (None, "") or EMAIL_FORMAT.match(e) for e in emails)


def input_error(item: Mapping[str, Any]) -> dict[str, Any]:
    """The multi-status error of an input whose email is not valid."""
    return {
        "status": "error",
        "category": "VALIDATION_ERROR",
        "message": "Property values were not valid: email is not a valid email address",
        "context": {"objectWriteTraceId": [item["objectWriteTraceId"]]},
    }


def not_found(item: Mapping[str, Any]) -> dict[str, Any]:
    context: dict[str, list[str]] = {"ids": [item["id"]]}
    if "objectWriteTraceId" in item:
        context["objectWriteTraceId"] = [item["objectWriteTraceId"]]
    return {
        "status": "error",
        "category": "OBJECT_NOT_FOUND",
        "message": "Could not get some CONTACT objects, they may be deleted or not exist.",
        "context": context,
    }


# --- the fake CRM ------------------------------------------------------------------------


@dataclass
class SearchLimiter:
    """The search endpoints' own limit: requests per second per account."""

    per_second: float | None
    recent: deque[float]

    def allow(self) -> bool:
        if self.per_second is None:
            return True
        now = time.monotonic()
        while self.recent and now - self.recent[0] > 1.0:
            self.recent.popleft()
        if len(self.recent) >= self.per_second:
            return False
        self.recent.append(now)
        return True


class FakeHubSpot:
    def __init__(
        self,
        *,
        clock: Callable[[], datetime] | None = None,
        portal_id: int = PORTAL_ID,
        search_requests_per_second: float | None = 5.0,
    ) -> None:
        self.contacts: dict[str, dict[str, Any]] = {}
        self.blocklist: set[str] = set()
        """Emails a GDPR delete found no contact for: HubSpot blocks them."""
        self.write_requests: list[tuple[str, dict[str, Any]]] = []
        """(path, body) of every batch write request served, in order."""
        self.portal_id = portal_id
        self.events: list[dict[str, Any]] = []
        self.search_bodies: list[dict[str, Any]] = []
        self.list_requests = 0
        self.search_limiter = SearchLimiter(search_requests_per_second, deque())
        self.on_search: Callable[[int], None] | None = None
        """Called with the request number before answering a search (tests change data)."""
        self._clock = clock or (lambda: datetime.now(UTC))
        self._next_id = 101
        self._next_event = 3_816_279_000
        self._last_ms = 0

        # Changes, stamped the way HubSpot stamps them -----------------------------------
        self._by_id: list[int] | None = None
        self._by_email: dict[str, str] = {}
        """Email -> the contact last given it (checked on use: it may have moved on)."""

    def with_email(self, email: str, *, archived_too: bool = False) -> dict[str, Any] | None:
        """The contact holding ``email`` now, as HubSpot's unique email property finds it."""
        record = self.contacts.get(self._by_email.get(email, ""))
        if record is None or record["properties"].get("email") != email:
            return None
        return record if archived_too or not record["archived"] else None

    def _stamp(self, modified_at: datetime | None) -> datetime:
        """The modification time: given, or the clock, never the same ms twice."""
        if modified_at is not None:
            return from_millis(millis(modified_at))
        self._last_ms = max(self._last_ms + 1, millis(self._clock()))
        return from_millis(self._last_ms)

    def upsert(
        self, record_id: str | None = None, *, modified_at: datetime | None = None, **values: Any
    ) -> dict[str, Any]:
        """A contact created or changed as a user would in HubSpot's UI."""
        return self._write(record_id, values, stamp=self._stamp(modified_at), origin=UI_ORIGIN)

    def _write(
        self,
        record_id: str | None,
        values: Mapping[str, Any],
        *,
        stamp: datetime,
        origin: tuple[str, str],
    ) -> dict[str, Any]:
        record = self.contacts.get(record_id) if record_id is not None else None
        changed = {name: property_text(value) for name, value in values.items()}
        if record is None:
            if record_id is None:
                record_id = str(self._next_id)
            elif not record_id.isdigit():
                raise ValueError("HubSpot record ids are numbers")
            self._next_id = max(self._next_id, int(record_id) + 1)
            record = {
                "id": record_id,
                "properties": {"hs_object_id": record_id, "createdate": iso(stamp)},
                "createdAt": iso(stamp),
                "archived": False,
            }
            self.contacts[record_id] = record
            self._by_id = None
            self._event("contact.creation", record_id, stamp, origin=origin)
        else:
            changed = {k: v for k, v in changed.items() if record["properties"].get(k) != v}
        record["properties"].update(changed)
        if changed.get("email"):
            self._by_email[str(changed["email"])] = record["id"]
        record["properties"]["lastmodifieddate"] = iso(stamp)
        record["updatedAt"] = iso(stamp)
        for name, value in changed.items():
            self._event(
                "contact.propertyChange",
                record["id"],
                stamp,
                origin=origin,
                propertyName=name,
                propertyValue=value if value is not None else "",
            )
        return record

    def _ids_in_order(self) -> list[int]:
        """Every contact id, ascending (cached: a full sync lists 100,000s of pages)."""
        if self._by_id is None:
            self._by_id = sorted(int(record_id) for record_id in self.contacts)
        return self._by_id

    def seed(self, count: int, *, modified_at: datetime | None = None) -> list[str]:
        ids = []
        for index in range(count):
            record = self.upsert(
                modified_at=modified_at,
                email=f"contact{self._next_id}@example.com",
                firstname=f"First{index}",
                lastname="Seeded",
            )
            ids.append(record["id"])
        return ids

    def delete(self, record_id: str, *, privacy: bool = False) -> None:
        stamp = self._stamp(None)
        record = self.contacts[record_id]
        record["archived"] = True
        record["archivedAt"] = iso(stamp)
        self._event("contact.deletion", record_id, stamp)
        if privacy:
            self._event("contact.privacyDeletion", record_id, stamp)

    def merge(self, primary: str, merged: str) -> None:
        """``merged`` merged into ``primary`` (the record on the right in HubSpot's UI)."""
        stamp = self._stamp(None)
        self.contacts[merged]["archived"] = True
        target = self.contacts[primary]
        target["properties"]["lastmodifieddate"] = iso(stamp)
        target["updatedAt"] = iso(stamp)
        self._event(
            "contact.merge",
            primary,
            stamp,
            primaryObjectId=int(primary),
            mergedObjectIds=[int(merged)],
            newObjectId=int(primary),
            numberOfPropertiesMoved=2,
        )

    def _event(
        self,
        kind: str,
        record_id: str,
        at: datetime,
        *,
        origin: tuple[str, str] = UI_ORIGIN,
        **extra: Any,
    ) -> None:
        change_source, source_id = origin
        self._next_event += 1
        self.events.append(
            {
                "eventId": self._next_event,
                "subscriptionId": 1000 + len(kind),
                "portalId": self.portal_id,
                "appId": APP_ID,
                "occurredAt": millis(at),
                "subscriptionType": kind,
                "attemptNumber": 0,
                "objectId": int(record_id),
                "changeSource": change_source,
                "sourceId": source_id,
                **extra,
            }
        )

    def take_events(self) -> list[dict[str, Any]]:
        """The events HubSpot would send for the changes so far (and forget them)."""
        events, self.events = self.events, []
        return events

    # The API ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/crm/v3/objects/contacts/search", self.search)
        app.router.add_get("/crm/v3/objects/contacts", self.list_contacts)
        app.router.add_post("/crm/v3/objects/contacts/batch/upsert", self.batch_upsert)
        app.router.add_post("/crm/v3/objects/contacts/batch/update", self.batch_update)
        app.router.add_post("/crm/v3/objects/contacts/gdpr-delete", self.gdpr_delete)
        return app

    @staticmethod
    def _unauthorized(request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == f"Bearer {TOKEN}":
            return None
        body = error_body(
            "Authentication credentials not found. This API supports OAuth 2.0 "
            "authentication and you can find more details at "
            "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            "INVALID_AUTHENTICATION",
        )
        return web.json_response(body, status=401)

    def _shape(self, record: Mapping[str, Any], wanted: Iterable[str]) -> dict[str, Any]:
        names = dict.fromkeys([*wanted, *ALWAYS_RETURNED])
        return {
            "id": record["id"],
            "properties": {name: record["properties"].get(name) for name in names},
            "createdAt": record["createdAt"],
            "updatedAt": record["updatedAt"],
            "archived": record["archived"],
        }

    async def search(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        if not self.search_limiter.allow():
            return rate_limit_response("SECONDLY", "You have reached your secondly limit.")
        raw = await request.text()
        try:
            answer = self._search(raw)
        except SearchError as exc:
            return web.json_response(error_body(str(exc), "VALIDATION_ERROR"), status=400)
        return web.json_response(answer)

    def _search(self, raw: str) -> dict[str, Any]:
        if len(raw) > SEARCH_MAX_BODY_CHARS:
            raise SearchError(f"request body longer than {SEARCH_MAX_BODY_CHARS} characters")
        try:
            body = json.loads(raw)
        except ValueError:
            raise SearchError("body is not JSON") from None
        if not isinstance(body, dict):
            raise SearchError("body must be a JSON object")
        self.search_bodies.append(body)
        if self.on_search is not None:
            self.on_search(len(self.search_bodies))
        limit = body.get("limit", SEARCH_DEFAULT_LIMIT)
        if not isinstance(limit, int) or not 1 <= limit <= SEARCH_MAX_LIMIT:
            raise SearchError(f"limit must be between 1 and {SEARCH_MAX_LIMIT}")
        try:
            after = int(body.get("after") or 0)
        except (TypeError, ValueError):
            raise SearchError("after must be an integer") from None
        if after >= SEARCH_WINDOW:
            # "Attempting to page beyond 10,000 will result in a 400 error."
            raise SearchError(
                f"There was a problem with the request. The search endpoints are limited "
                f"to {SEARCH_WINDOW} total results for any given query."
            )
        matching = self._matching(body)
        end = min(after + limit, len(matching), SEARCH_WINDOW)
        wanted = body.get("properties") or DEFAULT_PROPERTIES
        answer: dict[str, Any] = {
            "total": len(matching),
            "results": [self._shape(r, wanted) for r in matching[after:end]],
        }
        if end < len(matching):
            answer["paging"] = {"next": {"after": str(end)}}
        return answer

    def _matching(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        groups = check_filter_groups(body.get("filterGroups"))
        live = [r for r in self.contacts.values() if not r["archived"]]
        if groups:
            live = [
                r
                for r in live
                if any(all(filter_matches(r, f) for f in g["filters"]) for g in groups)
            ]
        sorts = body.get("sorts") or [{"propertyName": "createdate", "direction": "ASCENDING"}]
        if not isinstance(sorts, list) or len(sorts) > 1:
            raise SearchError("only one sort can be applied")
        name = sorts[0].get("propertyName")
        descending = sorts[0].get("direction") == "DESCENDING"
        # Ties keep id order; records without the property sort last.
        by_id = sorted(live, key=lambda r: int(r["id"]))
        present = [r for r in by_id if r["properties"].get(name) not in (None, "")]
        absent = [r for r in by_id if r["properties"].get(name) in (None, "")]
        present.sort(key=lambda r: comparable(name, r["properties"][name]), reverse=descending)
        return present + absent

    async def list_contacts(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        self.list_requests += 1
        query = request.query
        try:
            limit = int(query.get("limit", "10"))
            start = (
                int(base64.urlsafe_b64decode(query["after"]).decode()) if "after" in query else 0
            )
        except (ValueError, UnicodeDecodeError):
            body = error_body("Unable to parse limit or after", "VALIDATION_ERROR")
            return web.json_response(body, status=400)
        if not 1 <= limit <= LIST_MAX_LIMIT:
            body = error_body(f"limit must be between 1 and {LIST_MAX_LIMIT}", "VALIDATION_ERROR")
            return web.json_response(body, status=400)
        archived = query.get("archived", "false") == "true"
        wanted = [p for p in query.get("properties", "").split(",") if p] or DEFAULT_PROPERTIES
        ids = self._ids_in_order()
        page: list[dict[str, Any]] = []
        following: str | None = None
        for number in ids[bisect.bisect_left(ids, start) :]:
            record = self.contacts[str(number)]
            if record["archived"] != archived:
                continue
            if len(page) == limit:
                following = record["id"]
                break
            page.append(record)
        answer: dict[str, Any] = {"results": [self._shape(r, wanted) for r in page]}
        if following is not None:
            token = base64.urlsafe_b64encode(following.encode()).decode()
            link = f"{request.url.origin()}/crm/v3/objects/contacts?after={token}"
            answer["paging"] = {"next": {"after": token, "link": link}}
        return web.json_response(answer)

    # --- writes (the batch endpoints and GDPR delete) ---------------------------------

    async def batch_upsert(self, request: web.Request) -> web.Response:
        return await self._batch(request, upsert=True)

    async def batch_update(self, request: web.Request) -> web.Response:
        return await self._batch(request, upsert=False)

    async def _batch(self, request: web.Request, *, upsert: bool) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        started = iso(self._clock())
        try:
            body = json.loads(await request.text())
            inputs = check_inputs(body, upsert=upsert)
        except (ValueError, BatchError) as exc:
            return web.json_response(error_body(str(exc), "VALIDATION_ERROR"), status=400)
        self.write_requests.append((request.path, body))
        multi_status = all("objectWriteTraceId" in item for item in inputs)
        invalid = [item for item in inputs if not valid_input(item, upsert=upsert)]
        if invalid and not multi_status:
            message = "Property values were not valid: INVALID_EMAIL"
            return web.json_response(error_body(message, "VALIDATION_ERROR"), status=400)
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = [input_error(item) for item in invalid]
        stamp = self._stamp(None)
        for item in inputs:
            if item in invalid:
                continue
            record, new = self._target(item, upsert=upsert)
            if record is None:
                errors.append(not_found(item))
                continue
            written = self._write(
                record, item["properties"], stamp=stamp, origin=INTEGRATION_ORIGIN
            )
            results.append(self._result(written, item, new=new))
        answer: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": iso(self._clock()),
        }
        if errors:
            answer.update(errors=errors, numErrors=len(errors))
        return web.json_response(answer, status=207 if errors else 200)

    def _target(self, item: Mapping[str, Any], *, upsert: bool) -> tuple[str | None, bool]:
        """(the contact id an input writes, whether it is new); None for an update of a
        contact HubSpot does not have."""
        if item.get("idProperty") is None:
            record = self.contacts.get(item["id"])
            alive = record is not None and not record["archived"]
            return (item["id"] if alive else None), False
        email = str(item["id"]).lower()
        found = self.with_email(email)
        if found is not None:
            return found["id"], False
        if not upsert:
            return None, False
        created = self._write(
            None, {"email": email}, stamp=self._stamp(None), origin=INTEGRATION_ORIGIN
        )
        return created["id"], True

    @staticmethod
    def _result(record: Mapping[str, Any], item: Mapping[str, Any], *, new: bool) -> dict[str, Any]:
        properties = record["properties"]
        shown = dict.fromkeys([*item["properties"], *ALWAYS_RETURNED, "email"])
        result: dict[str, Any] = {
            "id": record["id"],
            "properties": {name: properties.get(name) for name in shown},
            "createdAt": record["createdAt"],
            "updatedAt": record["updatedAt"],
            "archived": False,
        }
        if item.get("idProperty") is not None:
            result["new"] = new
        if "objectWriteTraceId" in item:
            result["objectWriteTraceId"] = item["objectWriteTraceId"]
        return result

    async def gdpr_delete(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        try:
            body = json.loads(await request.text())
            object_id, id_property = body["objectId"], body.get("idProperty")
        except (ValueError, KeyError, TypeError):
            body_error = error_body("objectId is required", "VALIDATION_ERROR")
            return web.json_response(body_error, status=400)
        if id_property not in (None, "email"):
            message = f"{id_property} is not a unique property of contacts"
            return web.json_response(error_body(message, "VALIDATION_ERROR"), status=400)
        self.write_requests.append((request.path, body))
        if id_property == "email":
            email = str(object_id).lower()
            found = self.with_email(email, archived_too=True)
            if found is None:
                self.blocklist.add(email)
                return web.Response(status=204)
        else:
            found = self.contacts.get(str(object_id))
            if found is None:
                message = f"Object not found. objectId are usually numeric. {object_id}"
                return web.json_response(error_body(message, "OBJECT_NOT_FOUND"), status=404)
        stamp = self._stamp(None)
        # Permanently deleted: unlike an archived contact, nothing of it remains.
        del self.contacts[found["id"]]
        self._by_id = None
        self._event("contact.deletion", found["id"], stamp, origin=INTEGRATION_ORIGIN)
        self._event("contact.privacyDeletion", found["id"], stamp, origin=INTEGRATION_ORIGIN)
        return web.Response(status=204)


async def keep_editing(crm: FakeHubSpot, *, every_s: float, seed: int) -> None:
    """A sales team at work: every ``every_s`` seconds one contact's name is edited, as
    in HubSpot's UI, so that polls keep finding changes (the demo's console moves)."""
    rng = random.Random(seed)
    edits = 0
    while True:
        await asyncio.sleep(every_s)
        ids = list(crm.contacts)
        if not ids:
            continue
        edits += 1
        record_id = rng.choice(ids)
        crm.upsert(record_id, firstname=f"Edited{edits}", lastname=rng.choice(LAST_NAMES))


LAST_NAMES: Final = ("Hansen", "Jensen", "Nielsen", "Larsen", "Berg", "Lind")


def main() -> None:
    parser = standalone_arguments("fake HubSpot (CRM v3 contacts search and list)")
    parser.add_argument(
        "--change-every", type=float, default=0.0, help="edit a contact every N seconds"
    )
    args = parser.parse_args()
    crm = FakeHubSpot()
    crm.seed(args.records)
    faults = Faults(
        max_requests_per_second=args.rate_limit,
        error_rate=args.error_rate,
        seed=args.seed,
        throttle_response=ten_secondly_throttle,
    )

    async def editing() -> None:
        await keep_editing(crm, every_s=args.change_every, seed=args.seed)

    run_standalone(
        FakeServer(crm.app(), faults), args.port, alongside=editing if args.change_every else None
    )


if __name__ == "__main__":
    main()
