"""A fake Salesforce org: OAuth, the REST query resource, outbound messages, change events.

Shaped as Salesforce documents them:

- ``POST /services/oauth2/token`` (form-encoded): ``grant_type=client_credentials``
  with the app's ``client_id`` / ``client_secret`` (in the form or as HTTP Basic), or
  ``grant_type=refresh_token``; answers ``{access_token, signature, instance_url, id,
  token_type, issued_at, scope}``, or 400 ``{"error", "error_description"}``.
- ``GET /services/data/vXX.X/query?q=<SOQL>`` and ``.../queryAll`` (deleted records
  too), with ``Authorization: Bearer <token>``. The SOQL understood: ``SELECT <fields>
  FROM <object> [WHERE <conditions>] [ORDER BY <fields> [ASC|DESC]] [LIMIT n]``, where
  conditions compare fields with ``= != < <= > >=`` to dateTime literals in the
  documented forms (``YYYY-MM-DDThh:mm:ssZ`` or ``+hh:mm``, unquoted), quoted strings,
  numbers, true/false/null, joined by AND / OR and parentheses. Answers ``{totalSize,
  done, nextRecordsUrl, records}``, each record with its ``attributes``; the next
  batch is ``GET .../query/<locator>-<offset>``. Batches follow ``Sforce-Query-Options:
  batchSize=N`` (200-2,000, default 2,000) and never exceed ``batch_size`` (Salesforce
  may return fewer than asked). A locator belongs to the session that opened it.
- Errors as documented, ``[{"message", "errorCode"}]``: 401 INVALID_SESSION_ID (bad or
  expired token; ``expire_sessions``), 400 MALFORMED_QUERY / INVALID_FIELD /
  INVALID_TYPE / INVALID_QUERY_LOCATOR (``expire_locators``), and
  ``throttle_response``: 403 REQUEST_LIMIT_EXCEEDED, the org's API limit answer.
- Records live in memory; ``upsert`` / ``delete`` stamp ``LastModifiedDate`` in whole
  seconds as Salesforce stores it (a record changed twice within a second gets the next
  second, so each version stays distinct), queue the outbound message notification a
  workflow rule would send and record the change event Change Data Capture would
  publish. ``outbound_message`` builds the SOAP request (with each record's latest
  data, as Salesforce sends it), ``relay_request`` the JSON a Pub/Sub API relay posts,
  signed with Standard Webhooks.
- sObject Collections (REST API Developer Guide, "Upsert Records Using sObject
  Collections", "Update Records Using sObject Collections", "Delete Records Using
  sObject Collections"): ``PATCH .../composite/sobjects/<SObject>/<ExternalIdField>``
  (upsert; ``Email``, an idLookup field of Contact, or a custom field of
  ``extra_fields`` ending in ``__c``; matched case-insensitively), ``PATCH
  .../composite/sobjects`` (update by ``id``) and ``DELETE
  .../composite/sobjects?ids=...`` (to the recycle bin), each ``{"allOrNone",
  "records": [{"attributes": {"type"}, ...}]}`` of at most 200 records (else 400
  ``EXCEEDED_ID_LIMIT``). A request that is not well formed (not JSON, a field the
  object lacks, another object's records) is a 400 list of ``{message, errorCode}``;
  a well-formed one is a 200 list of results in request order, ``{id, success,
  errors: [{statusCode, message, fields}]}`` and, for upserts, ``created``. Per
  record: ``INVALID_EMAIL_ADDRESS``, ``REQUIRED_FIELD_MISSING`` (a new Contact needs
  ``LastName``), ``DUPLICATE_EXTERNAL_ID`` (the value matches several records),
  ``ENTITY_IS_DELETED`` / ``INVALID_CROSS_REFERENCE_KEY`` (an id in the recycle bin,
  or unknown); with ``allOrNone`` true one failure rolls every record back
  (``ALL_OR_NONE_OPERATION_ROLLED_BACK``).
- Who made a change: a change event's ``changeOrigin`` is
  ``com/salesforce/api/rest/<version>`` for a REST write, followed by
  ``;client=<client>`` when the request carried ``Sforce-Call-Options:
  client=<client>`` (Change Data Capture Developer Guide, "ChangeEventHeader Fields";
  REST API Developer Guide, "Call Options Header").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from tests.fakes.server import FakeServer, Faults, run_standalone, standalone_arguments

API_VERSION: Final = "62.0"
CLIENT_ID: Final = "3MVG9fakeConsumerKeyForCrmsyncTests"
CLIENT_SECRET: Final = "fake-consumer-secret-1"
REFRESH_TOKEN: Final = "5Aep861fakeRefreshToken"
HOOK_TOKEN: Final = "outbound-endpoint-token-1"
RELAY_SECRET: Final = "whsec_" + base64.b64encode(b"salesforce-relay-signing-key-1").decode()
DEFAULT_BATCH: Final = 2000
MIN_BATCH: Final = 200
COLLECTION_MAX: Final = 200
REQUIRED_ON_CREATE: Final = ("LastName",)
EMAIL_FORMAT: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
BASE62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CHECKSUM: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
FIELDS: Final = (
    "Id",
    "Salutation",
    "FirstName",
    "LastName",
    "Email",
    "Phone",
    "MailingCity",
    "HasOptedOutOfEmail",
    "IsDeleted",
    "CreatedDate",
    "LastModifiedDate",
    "SystemModstamp",
)
# Compound fields as change events nest them ("Get Compound Fields in Change Events").
COMPOUND: Final = {
    "Salutation": ("Name", "Salutation"),
    "FirstName": ("Name", "FirstName"),
    "LastName": ("Name", "LastName"),
    "MailingCity": ("MailingAddress", "City"),
}
DATETIME_FIELDS: Final = frozenset({"CreatedDate", "LastModifiedDate", "SystemModstamp"})
OUTBOUND_FIELDS: Final = ("Id", "Email", "FirstName", "LastName", "LastModifiedDate")
DATETIME_LITERAL: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})$")
TOKEN_PATTERN: Final = re.compile(
    r"\s*(\(|\)|>=|<=|!=|=|<|>|,|'(?:[^'\\]|\\.)*'|[A-Za-z_][A-Za-z0-9_.]*|[0-9][0-9T:.+\-Z]*)"
)


def salesforce_id(prefix: str, number: int) -> str:
    """An 18-character record id: key prefix, a base-62 number, the checksum suffix."""
    digits = ""
    while number:
        number, digit = divmod(number, 62)
        digits = BASE62[digit] + digits
    short = f"{prefix}5g{digits.rjust(10, '0')}"
    suffix = ""
    for chunk in range(3):
        bits = sum(1 << i for i, c in enumerate(short[chunk * 5 : chunk * 5 + 5]) if c.isupper())
        suffix += CHECKSUM[bits]
    return short + suffix


ORGANIZATION_ID: Final = salesforce_id("00D", 4242)


def rest_time(moment: datetime) -> str:
    """How the REST API writes a dateTime: 2026-11-23T09:00:00.000+0000."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def xsd_time(moment: datetime) -> str:
    """How SOAP messages and change events write one: 2026-11-23T09:00:00.000Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def parse_rest_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")


def errors(
    status: int, *, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """Salesforce's error answer: a list of {message, errorCode}."""
    return web.json_response(
        [{"message": message, "errorCode": code}], status=status, headers=headers
    )


class QueryError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- SOQL ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Soql:
    fields: list[str]
    object: str
    where: Any  # a parsed condition tree, or None
    order: list[tuple[str, bool]]  # (field, descending)
    limit: int | None


SOQL: Final = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<object>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?(?:\s+ORDER\s+BY\s+(?P<order>.+?))?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)


def parse_soql(text: str, *, known: Iterable[str]) -> Soql:
    match = SOQL.match(text)
    if match is None:
        raise QueryError("MALFORMED_QUERY", "unexpected token: the query is not SELECT ... FROM")
    names = {name.lower(): name for name in known}
    fields = [_field(name.strip(), names) for name in match["fields"].split(",")]
    order = []
    for item in (match["order"] or "").split(","):
        if item.strip():
            parts = item.split()
            if len(parts) > 2 or (len(parts) == 2 and parts[1].upper() not in ("ASC", "DESC")):
                raise QueryError("MALFORMED_QUERY", f"unexpected token: {item.strip()!r}")
            descending = len(parts) == 2 and parts[1].upper() == "DESC"
            order.append((_field(parts[0], names), descending))
    where = _Conditions(match["where"], names).parse() if match["where"] else None
    limit = int(match["limit"]) if match["limit"] else None
    return Soql(fields=fields, object=match["object"], where=where, order=order, limit=limit)


def _field(name: str, names: dict[str, str]) -> str:
    if name.lower() not in names:
        raise QueryError("INVALID_FIELD", f"No such column '{name}' on entity 'Contact'.")
    return names[name.lower()]


class _Conditions:
    """``a >= x AND (b = y OR c < z)`` into nested tuples, by recursive descent."""

    def __init__(self, text: str, names: dict[str, str]) -> None:
        self._tokens = [t for t in TOKEN_PATTERN.findall(text) if t.strip()]
        if "".join(self._tokens).replace(" ", "") != re.sub(r"\s+", "", text):
            raise QueryError("MALFORMED_QUERY", f"unexpected token in WHERE: {text!r}")
        self._names = names
        self._at = 0

    def parse(self) -> Any:
        tree = self._or()
        if self._at != len(self._tokens):
            raise QueryError("MALFORMED_QUERY", f"unexpected token: {self._tokens[self._at]!r}")
        return tree

    def _peek(self) -> str:
        return self._tokens[self._at] if self._at < len(self._tokens) else ""

    def _take(self) -> str:
        token = self._peek()
        if not token:
            raise QueryError("MALFORMED_QUERY", "unexpected end of WHERE")
        self._at += 1
        return token

    def _or(self) -> Any:
        tree = self._and()
        while self._peek().upper() == "OR":
            self._take()
            tree = ("or", tree, self._and())
        return tree

    def _and(self) -> Any:
        tree = self._term()
        while self._peek().upper() == "AND":
            self._take()
            tree = ("and", tree, self._term())
        return tree

    def _term(self) -> Any:
        if self._peek() == "(":
            self._take()
            tree = self._or()
            if self._take() != ")":
                raise QueryError("MALFORMED_QUERY", "expected )")
            return tree
        name = _field(self._take(), self._names)
        operator = self._take()
        if operator not in ("=", "!=", "<", "<=", ">", ">="):
            raise QueryError("MALFORMED_QUERY", f"unexpected token: {operator!r}")
        value = self._value(self._take())
        if name in DATETIME_FIELDS and not isinstance(value, datetime | None):
            raise QueryError(
                "INVALID_FIELD",
                f"value of filter criterion for field '{name}' must be of type dateTime "
                "and should not be enclosed in quotes",
            )
        return ("cmp", name, operator, value)

    @staticmethod
    def _value(token: str) -> Any:
        if token.startswith("'"):
            return token[1:-1].replace("\\'", "'")
        if token.lower() in ("true", "false"):
            return token.lower() == "true"
        if token.lower() == "null":
            return None
        if DATETIME_LITERAL.match(token):
            return datetime.fromisoformat(token.replace("Z", "+00:00"))
        if re.fullmatch(r"-?\d+(\.\d+)?", token):
            return float(token)
        raise QueryError("MALFORMED_QUERY", f"value of filter criterion is invalid: {token!r}")


def _matches(tree: Any, record: dict[str, Any]) -> bool:
    if tree is None:
        return True
    kind = tree[0]
    if kind == "and":
        return _matches(tree[1], record) and _matches(tree[2], record)
    if kind == "or":
        return _matches(tree[1], record) or _matches(tree[2], record)
    _cmp, name, operator, value = tree
    actual = record.get(name)
    if isinstance(value, datetime):
        if not isinstance(actual, str):
            return False
        actual = parse_rest_time(actual)
    if actual is None or value is None:
        if operator not in ("=", "!="):
            return False
        return bool((operator == "=") == (actual is value))
    comparisons: dict[str, Callable[[Any, Any], bool]] = {
        "=": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }
    return comparisons[operator](actual, value)


def _sort_key(record: dict[str, Any], order: list[tuple[str, bool]]) -> list[Any]:
    key: list[Any] = []
    for name, descending in order:
        value = record.get(name)
        # ASC puts nulls first; ids and text compare as Salesforce's ORDER BY does here.
        item = (value is not None, value if value is not None else "")
        key.append(_Reversed(item) if descending else item)
    return key


@dataclass(frozen=True, order=False)
class _Reversed:
    item: Any

    def __lt__(self, other: _Reversed) -> bool:
        return bool(other.item < self.item)


# --- the fake org ------------------------------------------------------------------------


@dataclass
class Locator:
    session: str
    records: list[dict[str, Any]]
    resource: str


@dataclass(frozen=True)
class Notification:
    """One outbound message notification, queued when a record changed."""

    id: str
    record_id: str


@dataclass
class FakeSalesforce:
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    batch_size: int = DEFAULT_BATCH
    organization_id: str = ORGANIZATION_ID
    object_name: str = "Contact"
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    notifications: list[Notification] = field(default_factory=list)
    change_events: list[dict[str, Any]] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    token_requests: int = 0
    sessions: dict[str, str] = field(default_factory=dict)  # access token -> session id
    locators: dict[str, Locator] = field(default_factory=dict)
    base_url: str = "https://acme.my.salesforce.com"
    extra_fields: tuple[str, ...] = ()
    """Custom fields of the object (e.g. an external id field, Crmsync_Id__c)."""
    collection_requests: list[tuple[str, str, Any]] = field(default_factory=list)
    """(method, path, body or ids) of every sObject Collections request served."""

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._commit_numbers = itertools.count(10716283339728)

    # --- data ----------------------------------------------------------------------

    def upsert(self, record_id: str | None = None, **changes: Any) -> dict[str, Any]:
        """Create or change a record (field API names); stamps LastModifiedDate, queues
        the outbound notification and records the change event."""
        return self._save(record_id, changes, origin=f"com/salesforce/api/rest/{API_VERSION}")

    def _save(
        self, record_id: str | None, changes: dict[str, Any], *, origin: str
    ) -> dict[str, Any]:
        old = self.records.get(record_id) if record_id else None
        if record_id is None:
            record_id = salesforce_id("003", next(self._ids))
        stamp = self._stamp(old)
        record = dict(old) if old is not None else self._new(record_id, stamp)
        record.update(changes)
        record["LastModifiedDate"] = record["SystemModstamp"] = rest_time(stamp)
        self.records[record_id] = record
        self.notifications.append(Notification(salesforce_id("04l", next(self._ids)), record_id))
        if old is None:
            self._event(
                "CREATE",
                record_id=record_id,
                stamp=stamp,
                body=self._event_body(record),
                origin=origin,
            )
        else:
            changed = [k for k in changes if changes[k] != old.get(k)] + ["LastModifiedDate"]
            self._event(
                "UPDATE",
                record_id=record_id,
                stamp=stamp,
                body=self._event_body(record, only=changed),
                changed=changed,
                nulled=[k for k in changed if record.get(k) is None],
                origin=origin,
            )
        return record

    def delete(self, record_id: str, *, origin: str | None = None) -> None:
        """To the recycle bin: IsDeleted, LastModifiedDate moves (queryAll still finds it)."""
        stamp = self._stamp(self.records[record_id])
        record = self.records[record_id]
        record["IsDeleted"] = True
        record["LastModifiedDate"] = record["SystemModstamp"] = rest_time(stamp)
        self._event(
            "DELETE",
            record_id=record_id,
            stamp=stamp,
            body={},
            origin=origin or f"com/salesforce/api/rest/{API_VERSION}",
        )

    def seed(self, count: int) -> list[str]:
        return [
            self.upsert(
                FirstName=f"First{index}",
                LastName=f"Last{index}",
                Email=f"contact{index}@example.com",
                HasOptedOutOfEmail=index % 2 == 0,
            )["Id"]
            for index in range(count)
        ]

    def _new(self, record_id: str, stamp: datetime) -> dict[str, Any]:
        record: dict[str, Any] = dict.fromkeys(FIELDS)
        record.update(
            Id=record_id, IsDeleted=False, HasOptedOutOfEmail=False, CreatedDate=rest_time(stamp)
        )
        return record

    def _stamp(self, old: dict[str, Any] | None) -> datetime:
        now = self.clock().astimezone(UTC).replace(microsecond=0)
        if old is not None:
            now = max(now, parse_rest_time(old["LastModifiedDate"]) + timedelta(seconds=1))
        return now

    # --- sessions --------------------------------------------------------------------

    def expire_sessions(self) -> None:
        """Every access token stops working, as when the session timeout passes."""
        self.sessions.clear()

    def expire_locators(self) -> None:
        """Every query locator is gone, as after 15 minutes without use."""
        self.locators.clear()

    def issue_token(self) -> str:
        session = uuid.uuid4().hex
        token = (
            f"{self.organization_id[:15]}!AQ{base64.urlsafe_b64encode(session.encode()).decode()}"
        )
        self.sessions[token] = session
        return token

    # --- HTTP ------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The org's My Domain: the token endpoint and the REST API."""
        app = self.login_app()
        for resource in ("query", "queryAll"):
            app.router.add_get(f"/services/data/v{{version}}/{resource}", self.query)
            app.router.add_get(f"/services/data/v{{version}}/{resource}/{{locator}}", self.more)
        collections = "/services/data/v{version}/composite/sobjects"
        app.router.add_patch(collections, self.collection_update)
        app.router.add_delete(collections, self.collection_delete)
        app.router.add_patch(f"{collections}/{{sobject}}/{{field}}", self.collection_upsert)
        return app

    def login_app(self) -> web.Application:
        """The token endpoint alone, e.g. as https://login.salesforce.com: served apart
        from the API when a test throttles the API (the API limit is not the login's)."""
        app = web.Application()
        app.router.add_post("/services/oauth2/token", self.token)
        return app

    @staticmethod
    def throttle_response(_status: int) -> web.Response:
        """The org's daily API request limit is spent (a 403, not a 429)."""
        return errors(403, code="REQUEST_LIMIT_EXCEEDED", message="TotalRequests Limit exceeded.")

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
        grant = form.get("grant_type")
        if grant not in ("client_credentials", "refresh_token"):
            return _oauth_error("unsupported_grant_type", "grant type not supported")
        if client_id != CLIENT_ID:
            return _oauth_error("invalid_client_id", "client identifier invalid")
        if grant == "client_credentials" and client_secret != CLIENT_SECRET:
            return _oauth_error("invalid_client", "invalid client credentials")
        if grant == "refresh_token" and (
            form.get("refresh_token") != REFRESH_TOKEN or client_secret not in (None, CLIENT_SECRET)
        ):
            return _oauth_error("invalid_grant", "expired access/refresh token")
        token = self.issue_token()
        issued = str(int(self.clock().timestamp() * 1000))
        signature = base64.b64encode(
            hmac.new(CLIENT_SECRET.encode(), f"{token}{issued}".encode(), hashlib.sha256).digest()
        ).decode()
        return web.json_response(
            {
                "access_token": token,
                "signature": signature,
                "scope": "api",
                "instance_url": self.base_url,
                "id": f"https://login.salesforce.com/id/{self.organization_id}/005000000000001",
                "token_type": "Bearer",
                "issued_at": issued,
                **({"token_format": "opaque"} if grant == "client_credentials" else {}),
            }
        )

    def _session(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme not in ("Bearer", "OAuth"):
            return None
        return self.sessions.get(token.strip())

    async def query(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return _invalid_session()
        text = request.query.get("q", "")
        self.queries.append(text)
        resource = "queryAll" if request.path.endswith("/queryAll") else "query"
        try:
            soql = parse_soql(text, known=FIELDS)
            if soql.object != self.object_name:
                raise QueryError("INVALID_TYPE", f"sObject type '{soql.object}' is not supported.")
            rows = [
                r
                for r in self.records.values()
                if (resource == "queryAll" or not r["IsDeleted"]) and _matches(soql.where, r)
            ]
        except QueryError as exc:
            return errors(400, code=exc.code, message=exc.message)
        rows.sort(key=lambda r: _sort_key(r, soql.order))
        rows = rows[: soql.limit] if soql.limit is not None else rows
        projected = [self._project(r, fields=soql.fields, request=request) for r in rows]
        locator = f"01g5g{uuid.uuid4().hex[:13]}"
        self.locators[locator] = Locator(session=session, records=projected, resource=resource)
        return self._batch(request, locator_id=locator, offset=0)

    async def more(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return _invalid_session()
        locator_id, _, offset = request.match_info["locator"].rpartition("-")
        locator = self.locators.get(locator_id)
        if locator is None or not offset.isdigit():
            return errors(400, code="INVALID_QUERY_LOCATOR", message="invalid query locator")
        if locator.session != session:
            # A locator belongs to the session that opened it; another session's token
            # is refused as that session's would be once it ended.
            return _invalid_session()
        return self._batch(request, locator_id=locator_id, offset=int(offset))

    def _batch(self, request: web.Request, *, locator_id: str, offset: int) -> web.Response:
        locator = self.locators[locator_id]
        size = min(_requested_batch(request), self.batch_size)
        batch = locator.records[offset : offset + size]
        done = offset + len(batch) >= len(locator.records)
        answer: dict[str, Any] = {"totalSize": len(locator.records), "done": done}
        if done:
            del self.locators[locator_id]
        else:
            answer["nextRecordsUrl"] = (
                f"/services/data/v{request.match_info['version']}/{locator.resource}/"
                f"{locator_id}-{offset + len(batch)}"
            )
        answer["records"] = batch
        return web.json_response(answer)

    def _project(
        self, record: dict[str, Any], *, fields: Sequence[str], request: web.Request
    ) -> dict[str, Any]:
        version = request.match_info["version"]
        attributes = {
            "type": self.object_name,
            "url": f"/services/data/v{version}/sobjects/{self.object_name}/{record['Id']}",
        }
        return {"attributes": attributes, **{name: record.get(name) for name in fields}}

    # --- sObject Collections ----------------------------------------------------------

    @property
    def known_fields(self) -> tuple[str, ...]:
        return (*FIELDS, *self.extra_fields)

    async def collection_upsert(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return _invalid_session()
        sobject, key = request.match_info["sobject"], request.match_info["field"]
        if sobject != self.object_name:
            return errors(404, code="NOT_FOUND", message="The requested resource does not exist")
        if key != "Email" and not (key in self.extra_fields and key.endswith("__c")):
            message = f"Provided external ID field does not exist or is not accessible: {key}"
            return errors(404, code="NOT_FOUND", message=message)
        body, problem = await self._collection(request, needs_type=True)
        if problem is not None:
            return problem
        self.collection_requests.append(("PATCH", request.path, body))
        origin = _change_origin(request)
        return self._all_or_none(
            body, [lambda r=r: self._upsert_one(r, key, origin) for r in body["records"]]
        )

    async def collection_update(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return _invalid_session()
        body, problem = await self._collection(request, needs_type=True)
        if problem is not None:
            return problem
        self.collection_requests.append(("PATCH", request.path, body))
        origin = _change_origin(request)
        return self._all_or_none(
            body, [lambda r=r: self._update_one(r, origin) for r in body["records"]]
        )

    async def collection_delete(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return _invalid_session()
        ids = [i for i in request.query.get("ids", "").split(",") if i]
        if not ids:
            return errors(400, code="MALFORMED_QUERY", message="ids: at least one id is required")
        if len(ids) > COLLECTION_MAX:
            return _too_many()
        all_or_none = request.query.get("allOrNone", "false") == "true"
        self.collection_requests.append(("DELETE", request.path, ids))
        origin = _change_origin(request)
        return self._all_or_none(
            {"allOrNone": all_or_none}, [lambda i=i: self._delete_one(i, origin) for i in ids]
        )

    async def _collection(
        self, request: web.Request, *, needs_type: bool
    ) -> tuple[dict[str, Any], web.Response | None]:
        try:
            body = json.loads(await request.text())
        except ValueError:
            return {}, errors(400, code="JSON_PARSER_ERROR", message="the body is not JSON")
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or not records:
            return {}, errors(400, code="INVALID_FIELD", message="records: a list is required")
        if len(records) > COLLECTION_MAX:
            return {}, _too_many()
        known = {name.lower() for name in self.known_fields}
        for record in records:
            kind = (
                (record.get("attributes") or {}).get("type") if isinstance(record, dict) else None
            )
            if kind != self.object_name:
                message = f"every record needs attributes.type {self.object_name}, got {kind!r}"
                return {}, errors(400, code="INVALID_TYPE", message=message)
            for name in record:
                if name != "attributes" and name.lower() not in known:
                    message = f"No such column '{name}' on sobject of type {self.object_name}"
                    return {}, errors(400, code="INVALID_FIELD", message=message)
        return body, None

    def _all_or_none(
        self, body: dict[str, Any], writes: list[Callable[[], dict[str, Any]]]
    ) -> web.Response:
        """Each record written on its own, or (allOrNone) none when one fails."""
        saved = (
            {k: dict(v) for k, v in self.records.items()},
            len(self.change_events),
            len(self.notifications),
        )
        results = [write() for write in writes]
        if body.get("allOrNone") is True and not all(r["success"] for r in results):
            self.records = saved[0]
            del self.change_events[saved[1] :], self.notifications[saved[2] :]
            rolled_back = _error(
                "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "Record rolled back because not all records were valid and the request "
                "was using AllOrNone header",
            )
            results = [r if not r["success"] else {**rolled_back, **_id_of(r)} for r in results]
        return web.json_response(results)

    def _upsert_one(self, record: dict[str, Any], key: str, origin: str) -> dict[str, Any]:
        values = {k: v for k, v in record.items() if k != "attributes"}
        value = values.get(key)
        if value in (None, ""):
            return _error("MISSING_ARGUMENT", f"{key} not specified", [key])
        invalid = _invalid_email(values)
        if invalid is not None:
            return invalid
        matches = [
            r["Id"]
            for r in self.records.values()
            if not r["IsDeleted"] and str(r.get(key) or "").lower() == str(value).lower()
        ]
        if len(matches) > 1:
            message = (
                f"{self.object_name}: more than one record found for external id field: {matches}"
            )
            return _error("DUPLICATE_EXTERNAL_ID", message, [key])
        if not matches:
            missing = [n for n in REQUIRED_ON_CREATE if values.get(n) in (None, "")]
            if missing:
                return _error(
                    "REQUIRED_FIELD_MISSING", f"Required fields are missing: {missing}", missing
                )
        saved = self._save(matches[0] if matches else None, values, origin=origin)
        return {"id": saved["Id"], "success": True, "errors": [], "created": not matches}

    def _update_one(self, record: dict[str, Any], origin: str) -> dict[str, Any]:
        values = {k: v for k, v in record.items() if k != "attributes"}
        record_id = values.pop("id", None) or values.pop("Id", None)
        found = self.records.get(str(record_id))
        if found is None:
            return _error("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
        if found["IsDeleted"]:
            return _error("ENTITY_IS_DELETED", "entity is deleted")
        invalid = _invalid_email(values)
        if invalid is not None:
            return invalid
        self._save(found["Id"], values, origin=origin)
        return {"id": found["Id"], "success": True, "errors": []}

    def _delete_one(self, record_id: str, origin: str) -> dict[str, Any]:
        found = self.records.get(record_id)
        if found is None:
            return {
                **_error("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id"),
                "id": record_id,
            }
        if found["IsDeleted"]:
            return {**_error("ENTITY_IS_DELETED", "entity is deleted"), "id": record_id}
        self.delete(record_id, origin=origin)
        return {"id": record_id, "success": True, "errors": []}

    # --- outbound messages ------------------------------------------------------------

    def outbound_message(
        self,
        notifications: Sequence[Notification] | None = None,
        *,
        fields: Sequence[str] = OUTBOUND_FIELDS,
        organization_id: str | None = None,
        object_name: str | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The SOAP request Salesforce posts for queued notifications (all by default),
        each with its record's latest data, as "Understanding Notifications" says."""
        chosen = list(self.notifications if notifications is None else notifications)
        organization = organization_id or self.organization_id
        kind = object_name or self.object_name
        items = "".join(self._notification_xml(n, fields=fields, kind=kind) for n in chosen)
        soap = f"{self.base_url}/services/Soap"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
            " <soapenv:Body>\n"
            '  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">\n'
            f"   <OrganizationId>{organization}</OrganizationId>\n"
            f"   <ActionId>{salesforce_id('04k', 7)}</ActionId>\n"
            '   <SessionId xsi:nil="true"/>\n'
            f"   <EnterpriseUrl>{soap}/c/{API_VERSION}/{organization[:15]}</EnterpriseUrl>\n"
            f"   <PartnerUrl>{soap}/u/{API_VERSION}/{organization[:15]}</PartnerUrl>\n"
            f"{items}"
            "  </notifications>\n"
            " </soapenv:Body>\n"
            "</soapenv:Envelope>\n"
        )
        headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
        return body.encode(), headers

    def _notification_xml(
        self, notification: Notification, *, fields: Sequence[str], kind: str
    ) -> str:
        record = self.records[notification.record_id]
        values = "".join(_soap_field(name, record.get(name)) for name in fields)
        return (
            "   <Notification>\n"
            f"    <Id>{notification.id}</Id>\n"
            f"    <sObject xsi:type={quoteattr('sf:' + kind)} "
            'xmlns:sf="urn:sobject.enterprise.soap.sforce.com">\n'
            f"{values}"
            "    </sObject>\n"
            "   </Notification>\n"
        )

    # --- change events ------------------------------------------------------------------

    def _event_body(
        self, record: dict[str, Any], only: Sequence[str] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for name in only if only is not None else FIELDS:
            if name in ("Id", "IsDeleted", "SystemModstamp"):
                continue
            value = record.get(name)
            if name in ("LastModifiedDate", "CreatedDate") and value is not None:
                value = xsd_time(parse_rest_time(value))
            if name in COMPOUND:
                compound, component = COMPOUND[name]
                body.setdefault(compound, {})[component] = value
            else:
                body[name] = value
        return body

    def _event(
        self,
        change_type: str,
        *,
        record_id: str,
        stamp: datetime,
        body: dict[str, Any],
        changed: Sequence[str] = (),
        nulled: Sequence[str] = (),
        origin: str = f"com/salesforce/api/rest/{API_VERSION}",
    ) -> None:
        header = {
            "entityName": self.object_name,
            "recordIds": [record_id],
            "changeType": change_type,
            "changeOrigin": origin,
            "transactionKey": str(uuid.uuid4()),
            "sequenceNumber": 1,
            "commitTimestamp": int(stamp.timestamp() * 1000),
            "commitNumber": next(self._commit_numbers),
            "commitUser": "005000000000001AAA",
            "nulledFields": [cdc_path(n) for n in nulled],
            "diffFields": [],
            "changedFields": [cdc_path(n) for n in changed] if change_type == "UPDATE" else [],
        }
        self.change_events.append({"ChangeEventHeader": header, **body})

    def gap_event(
        self, record_ids: Sequence[str], change_type: str = "GAP_UPDATE"
    ) -> dict[str, Any]:
        """A gap event: the header only ("Gap Events"); sequenceNumber is always 1."""
        header = {
            "entityName": self.object_name,
            "recordIds": list(record_ids),
            "changeType": change_type,
            "changeOrigin": "",
            "transactionKey": str(uuid.uuid4()),
            "sequenceNumber": 1,
            "commitTimestamp": int(self.clock().timestamp() * 1000),
            "commitNumber": next(self._commit_numbers),
            "commitUser": "005000000000001AAA",
            "nulledFields": [],
            "diffFields": [],
            "changedFields": [],
        }
        return {"ChangeEventHeader": header}

    def relay_request(
        self,
        events: Sequence[dict[str, Any]],
        *,
        secret: str = RELAY_SECRET,
        cometd: bool = False,
        timestamp: int | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """What a relay subscribed to the change events posts: a JSON list of events
        (or of CometD messages), signed the Standard Webhooks way."""
        items: list[Any] = list(events)
        if cometd:
            items = [
                {
                    "data": {
                        "schema": "IeRuaY6cbI_HsV8Rv1Mc5g",
                        "payload": event,
                        "event": {"replayId": index + 1},
                    },
                    "channel": f"/data/{self.object_name}ChangeEvent",
                }
                for index, event in enumerate(items)
            ]
        body = json.dumps(items).encode()
        return body, standard_webhooks_headers(
            body, secret=secret, timestamp=timestamp, now=self.clock()
        )


def _change_origin(request: web.Request) -> str:
    """changeOrigin of a REST write: the API, its version and the Call Options client."""
    origin = f"com/salesforce/api/rest/{request.match_info['version']}"
    options = request.headers.get("Sforce-Call-Options", "")
    for option in re.split(r"[;,]", options):
        name, _, value = option.strip().partition("=")
        if name == "client" and value:
            return f"{origin};client={value}"
    return origin


def _error(code: str, message: str, fields: Sequence[str] = ()) -> dict[str, Any]:
    """A failed record of a collections answer."""
    return {
        "success": False,
        "errors": [{"statusCode": code, "message": message, "fields": list(fields)}],
    }


def _id_of(result: dict[str, Any]) -> dict[str, Any]:
    return {"id": result["id"]} if "id" in result else {}


def _invalid_email(values: dict[str, Any]) -> dict[str, Any] | None:
    email = values.get("Email")
    if email in (None, "") or EMAIL_FORMAT.match(str(email)):
        return None
    return _error("INVALID_EMAIL_ADDRESS", f"Email: invalid email address: {email}", ["Email"])


def _too_many() -> web.Response:
    return errors(
        400,
        code="EXCEEDED_ID_LIMIT",
        message="record limit reached. cannot submit more than 200 records into this call",
    )


def cdc_path(name: str) -> str:
    return ".".join(COMPOUND[name]) if name in COMPOUND else name


def standard_webhooks_headers(
    body: bytes, *, secret: str, timestamp: int | None, now: datetime
) -> dict[str, str]:
    message_id = f"msg_{uuid.uuid4().hex}"
    stamp = str(timestamp if timestamp is not None else int(now.timestamp()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{stamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": stamp,
        "webhook-signature": f"v1,{signature}",
    }


def _soap_field(name: str, value: Any) -> str:
    if value is None:
        return f'     <sf:{name} xsi:nil="true"/>\n'
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif name in ("LastModifiedDate", "CreatedDate", "SystemModstamp"):
        text = xsd_time(parse_rest_time(value))
    else:
        text = escape(str(value))
    return f"     <sf:{name}>{text}</sf:{name}>\n"


def _requested_batch(request: web.Request) -> int:
    options = request.headers.get("Sforce-Query-Options", "")
    match = re.search(r"batchSize=(\d+)", options)
    if match is None:
        return DEFAULT_BATCH
    return min(max(int(match.group(1)), MIN_BATCH), DEFAULT_BATCH)


def _invalid_session() -> web.Response:
    return errors(
        401,
        code="INVALID_SESSION_ID",
        message="Session expired or invalid",
        headers={"WWW-Authenticate": "Token"},
    )


def _oauth_error(error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=400)


def main() -> None:
    args = standalone_arguments("fake Salesforce org").parse_args()
    org = FakeSalesforce()
    org.seed(args.records)
    faults = Faults(
        max_requests_per_second=args.rate_limit,
        error_rate=args.error_rate,
        seed=args.seed,
        throttle_response=org.throttle_response,
    )
    run_standalone(FakeServer(org.app(), faults), args.port)


if __name__ == "__main__":
    main()
