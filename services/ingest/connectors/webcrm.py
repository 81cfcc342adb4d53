"""The webCRM connector: persons through the webCRM REST API (pull only).

Documented behaviour followed:

- "webCRM REST API" (webcrm.com/customer-service/api/rest-api): the application token
  (a GUID) is exchanged for an access token by ``POST /Auth/ApiLogin`` with
  ``authCode`` in the (form) body; the answer has ``AccessToken`` (and, per the API's
  Swagger definition, ``RefreshToken`` and ``ExpiresIn``); access tokens are valid for
  an hour and go in ``Authorization: Bearer``. Persons are listed with ``Page`` and
  ``Size`` (``GET /Persons?Page=1&Size=10``), field names ``PersonId``, ``PersonEmail``,
  ``PersonFirstName``, ``PersonLastName``, ``PersonUpdatedAt`` (date-time), ...
- api.webcrm.com ("rate limit"): 250 requests per minute per application token in a
  sliding window; over it the answer is 429 with ``Retry-After`` (seconds) and a body
  ``{"RetryAfterSeconds": 14, "Message": ..., "Type": "TooManyRequestsException"}``.
  ``ApiClient`` waits for ``Retry-After``; the settings keep the request rate below the
  limit.
- ``GET /Persons`` has neither a sort nor a "changed since" filter. Changes are read
  with the API's query endpoint, ``GET /Queries?script=...&Page=&Size=``, which takes a
  SQL-like ``SELECT`` and returns the rows as JSON objects with the same field names.
  The search tool did not surface its reference page; the operation and its use are
  taken from the SDK webCRM generated from its own Swagger definition and the queries
  its synchronisation runs (github.com/webCRMdotcom/ErpIntegrations:
  ``SELECT * FROM Person WHERE PersonUpdatedAt >= '<time>'``, Page 1, Size 1000), and
  from tap-webcrm (dreamdata-io), which pages ``SELECT * FROM person ORDER BY
  PersonUpdatedAt ASC`` in the same way.
- Push: the Swagger definition has ``/Persons/Hooks`` (a TargetUrl, an EventType of
  Create / Update / Delete, a filter) but documents neither the request webCRM sends to
  the TargetUrl nor how it could be authenticated. None is invented here: a webCRM
  source is pull-only and ``connectors()`` returns no webhook.

Date format: ``PersonUpdatedAt`` is ISO 8601, normally without an offset
(``2019-09-01T12:48:51``); such times are read in the source's ``time_zone`` (UTC by
default: webCRM's integrations compare these fields with UTC times). .NET's empty date
(year 1) counts as no date. A person never updated falls back to ``PersonCreatedAt``.

Steps of a pull (each page one request; a new query per page, always ``Page=1``, with
the filter moved past the last row delivered, so rows changed or deleted while the pull
runs can never shift an unread row onto a page already read; rule 5: move the filter,
never skip):

1. a poll (``since`` given): ``WHERE PersonUpdatedAt >= '<since>' ORDER BY
   PersonUpdatedAt, PersonId``, then ``WHERE (PersonUpdatedAt > '<t>') OR
   (PersonUpdatedAt = '<t>' AND PersonId > <id>)`` with the last row's own
   ``PersonUpdatedAt`` text and id; every page advances the watermark;
2. a full sync (no ``since``): ``ORDER BY PersonId`` and ``WHERE PersonId > <id>``, so
   every person existing when it starts is read exactly once whatever changes meanwhile;
   the watermark (the newest ``PersonUpdatedAt`` read) is given with the last page;
3. a page with fewer rows than asked is the last one; the checkpoint's cursor is the
   next query's position, so a restarted pull continues where it stopped.

webCRM deletes persons without trace in the API (no deleted flag, no deletion list):
a deleted person simply stops appearing, so no DELETE comes from webCRM.

One CRM's connector in one module (its login, pull pages and field conversions), read
against webCRM's documentation as a whole; hence over 400 lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from services.core.api_client import ApiClient, ApiError
from services.core.contracts import ContactChange, Operation, RejectedEvent
from services.core.http import TRANSIENT, async_client
from services.core.retry import RetryLater, retry_after_seconds
from services.core.sources.webcrm import WebCrmSource
from services.ingest.connectors.base import (
    Checkpoint,
    PayloadError,
    PullPage,
    SourceConnectors,
    Stamp,
)
from services.ingest.fields import (
    flatten,
    pulled_record_rejection,
    record_identifier,
    version_event_id,
)

log = logging.getLogger(__name__)

LOGIN_PATH: Final = "/Auth/ApiLogin"
QUERIES_PATH: Final = "/Queries"
# "Access tokens are valid for an hour": the default when ExpiresIn is absent.
TOKEN_LIFETIME_S: Final = 3600.0
# Log in again this long before the token expires, not at the edge of its validity.
RENEW_BEFORE_S: Final = 60.0
# What a webCRM time looks like; only such text is ever written into a query script.
TIME_TEXT: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,7})?(Z|[+-]\d{2}:\d{2})?$"
)
TRANSIENT_LOGIN_STATUS: Final = frozenset({429, 500, 502, 503, 504})


# --- authentication ------------------------------------------------------------------


class LoginUnavailable(RetryLater):
    """webCRM could not hand out an access token just now (throttled or failing)."""


class AccessToken:
    """webCRM's access token, obtained from the application token and renewed before it
    expires or when the API answers 401 (``ApiClient`` calls ``refresh`` then).

    A login failure that may pass (429, 5xx, a dropped connection) is a
    ``RetryLater``, which ``ApiClient`` retries with backoff; a refused
    application token is an ``ApiError`` that fails the poll with its reason.
    """

    def __init__(
        self,
        *,
        base_url: str,
        app_token: str,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = f"{base_url.rstrip('/')}{LOGIN_PATH}"
        self._app_token = app_token
        self._timeout_s = timeout_seconds
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    async def headers(self) -> Mapping[str, str]:
        async with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                await self._login()
            return {"Authorization": f"Bearer {self._token}"}

    async def refresh(self) -> bool:
        async with self._lock:
            await self._login()
        return True

    async def _login(self) -> None:
        try:
            async with async_client(timeout_s=self._timeout_s) as client:
                response = await client.post(
                    self._url,
                    data={"authCode": self._app_token},
                    headers={"Accept": "application/json"},
                )
        except TRANSIENT as exc:
            raise LoginUnavailable(f"{type(exc).__name__} from {LOGIN_PATH}") from exc
        status, body = response.status_code, response.content
        if status in TRANSIENT_LOGIN_STATUS:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            raise LoginUnavailable(f"{status} from {LOGIN_PATH}", retry_after_s=wait)
        if status != 200:
            raise ApiError(
                status=status, path=LOGIN_PATH, detail="webCRM refused the application token"
            )
        token, lifetime = self._read(body)
        self._token = token
        self._renew_at = self._clock() + max(0.0, lifetime - RENEW_BEFORE_S)
        log.info("webcrm access token obtained valid_for=%.0fs", lifetime)

    @staticmethod
    def _read(body: bytes) -> tuple[str, float]:
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        token = document.get("AccessToken") if isinstance(document, dict) else None
        if not isinstance(token, str) or not token:
            raise ApiError(status=200, path=LOGIN_PATH, detail="no AccessToken in the answer")
        lifetime = document.get("ExpiresIn") if isinstance(document, dict) else None
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = TOKEN_LIFETIME_S
        return token, float(lifetime)


# --- times -----------------------------------------------------------------------------


def webcrm_time(value: Any, *, zone: ZoneInfo, where: str) -> datetime | None:
    """A webCRM date-time as UTC; None for no date (null, empty, .NET's year 1)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not TIME_TEXT.match(value.strip()):
        raise PayloadError(where, f"not a webCRM date-time: {str(value)[:40]!r}")
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise PayloadError(where, f"not a webCRM date-time: {value[:40]!r}") from None
    if moment.year == 1:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def query_time(moment: datetime, zone: ZoneInfo) -> str:
    """A time for a query script: in the source's zone, whole seconds, rounded down so
    that ``>=`` still includes the moment itself."""
    return moment.astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S")


# --- pull ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    """Where a pull stands; ``dump`` is the checkpoint cursor.

    ``since`` set: a poll, ordered by PersonUpdatedAt; ``after`` is the last row's
    (PersonUpdatedAt text, PersonId). ``since`` None: a full sync, ordered by PersonId;
    ``after_id`` is the last id read and ``newest`` the newest change read so far."""

    since: str | None
    after: tuple[str, int] | None = None
    after_id: int | None = None
    newest: str | None = None

    def script(self) -> str:
        # /Queries takes script text, no bound parameters: only integers and times that
        # matched TIME_TEXT (Position.load, _time_text) are ever written into it.
        if self.since is None:
            where = f" WHERE PersonId > {self.after_id}" if self.after_id is not None else ""
            return f"SELECT * FROM Person{where} ORDER BY PersonId"  # noqa: S608
        if self.after is None:
            where = f"PersonUpdatedAt >= '{self.since}'"
        else:
            at, person_id = self.after
            where = (
                f"(PersonUpdatedAt > '{at}') OR "
                f"(PersonUpdatedAt = '{at}' AND PersonId > {person_id})"
            )
        order = "ORDER BY PersonUpdatedAt, PersonId"
        return f"SELECT * FROM Person WHERE {where} {order}"  # noqa: S608

    def dump(self) -> str:
        return json.dumps(
            {
                "since": self.since,
                "after": list(self.after) if self.after else None,
                "after_id": self.after_id,
                "newest": self.newest,
            },
            separators=(",", ":"),
        )

    @classmethod
    def load(cls, text: str) -> Position:
        document = json.loads(text)
        since, after = document["since"], document["after"]
        after_id, newest = document["after_id"], document["newest"]
        checks = (
            isinstance(since, str | None) and TIME_TEXT.match(since or "2000-01-01T00:00:00"),
            after is None or (TIME_TEXT.match(after[0]) and isinstance(after[1], int)),
            isinstance(after_id, int | None),
            newest is None or (isinstance(newest, str) and TIME_TEXT.match(newest)),
        )
        if not all(checks):
            raise ValueError("not a webcrm pull position")
        return cls(
            since=since,
            after=(after[0], after[1]) if after else None,
            after_id=after_id,
            newest=newest,
        )


@dataclass(frozen=True)
class Row:
    """One person read, or the reason it could not be."""

    change: ContactChange | None
    rejection: RejectedEvent | None
    person_id: int | None
    updated_text: str | None


class WebCrmPullConnector:
    def __init__(self, *, source: str, settings: WebCrmSource) -> None:
        self.source = source
        self._size = settings.poll.page_size if settings.poll is not None else 100
        self._zone = ZoneInfo(settings.time_zone)
        self._excluded = frozenset(settings.excluded_fields)

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
            params = {"script": position.script(), "Page": "1", "Size": str(self._size)}
            document = await api.get_json(QUERIES_PATH, params=params)
            if not isinstance(document, list):
                raise ApiError(status=200, path=QUERIES_PATH, detail="the answer is not a list")
            rows = [self._row(record, index, stamp=stamp) for index, record in enumerate(document)]
            changes = [row.change for row in rows if row.change is not None]
            position = self._advance(position, rows, changes)
            last = len(document) < self._size
            if position.since is not None and changes:
                newest = max(c.source_modified_at for c in changes)
                watermark = newest if watermark is None else max(watermark, newest)
            elif last and position.newest is not None:
                watermark = _latest(watermark, datetime.fromisoformat(position.newest))
            yield PullPage(
                changes=changes,
                checkpoint=Checkpoint(
                    watermark=watermark, cursor=None if last else position.dump()
                ),
                rejected=[row.rejection for row in rows if row.rejection is not None],
            )
            if last:
                return

    def _start(self, since: datetime | None, resume: Checkpoint | None) -> Position:
        fresh = Position(since=query_time(since, self._zone) if since is not None else None)
        if resume is None or resume.cursor is None:
            return fresh
        try:
            return Position.load(resume.cursor)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            # Starting the query over reads some persons twice but misses none.
            log.warning("webcrm pull restarts: unreadable position source=%s", self.source)
            return fresh

    def _advance(
        self, position: Position, rows: list[Row], changes: list[ContactChange]
    ) -> Position:
        """The position after this page: past its last row, whether or not that row
        could become a change (a rejected row must not be read again and again)."""
        if not rows:
            return position
        if position.since is None:
            ids = [row.person_id for row in rows if row.person_id is not None]
            if not ids:
                raise ApiError(status=200, path=QUERIES_PATH, detail="no PersonId on the page")
            newest = max((c.source_modified_at for c in changes), default=None)
            if position.newest is not None:
                newest = _latest(newest, datetime.fromisoformat(position.newest))
            return replace(
                position,
                after_id=max(ids),
                newest=newest.isoformat() if newest is not None else None,
            )
        for row in reversed(rows):
            if row.person_id is not None and row.updated_text is not None:
                return replace(position, after=(row.updated_text, row.person_id))
        raise ApiError(status=200, path=QUERIES_PATH, detail="no row to continue after")

    def _row(self, record: Any, index: int, *, stamp: Stamp) -> Row:
        """A record that is not a valid person is rejected with the reason instead of
        failing the page (it would fail every retry too)."""
        person_id = _person_id(record)
        updated_text = _time_text(record)
        try:
            change = self._change(record, where=f"[{index}]", stamp=stamp)
        except PayloadError as exc:
            # The rejected row is kept for replay, but without the excluded fields.
            kept = self._kept(record) if isinstance(record, dict) else record
            rejection = pulled_record_rejection(self.source, kept, reason=str(exc))
            return Row(None, rejection, person_id, updated_text)
        return Row(change, None, person_id, updated_text)

    def _kept(self, record: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in record.items() if key not in self._excluded}

    def _change(self, record: Any, *, where: str, stamp: Stamp) -> ContactChange:
        if not isinstance(record, dict):
            raise PayloadError(where, "must be a JSON object")
        record_id = record_identifier(record.get("PersonId"), where=f"{where}.PersonId")
        modified_at = webcrm_time(
            record.get("PersonUpdatedAt"), zone=self._zone, where=f"{where}.PersonUpdatedAt"
        ) or webcrm_time(
            record.get("PersonCreatedAt"), zone=self._zone, where=f"{where}.PersonCreatedAt"
        )
        if modified_at is None:
            raise PayloadError(f"{where}.PersonUpdatedAt", "neither updated nor created time")
        return ContactChange(
            source=self.source,
            record_id=record_id,
            operation=Operation.UPSERT,
            event_id=version_event_id(self.source, record_id, modified_at),
            source_modified_at=modified_at,
            received_at=datetime.now(UTC),
            fields=flatten(self._kept(record), where=where),
            origin=stamp.origin,
            sync_id=stamp.sync_id,
        )


def _person_id(record: Any) -> int | None:
    value = record.get("PersonId") if isinstance(record, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _time_text(record: Any) -> str | None:
    """The row's PersonUpdatedAt exactly as webCRM wrote it, if it is a date-time."""
    value = record.get("PersonUpdatedAt") if isinstance(record, dict) else None
    if isinstance(value, str) and TIME_TEXT.match(value.strip()):
        return value.strip()
    return None


def _latest(current: datetime | None, candidate: datetime | None) -> datetime | None:
    if current is None:
        return candidate
    if candidate is None:
        return current
    return max(current, candidate)


def connectors(source: str, settings: WebCrmSource) -> SourceConnectors:
    app_token = settings.api.token.resolve() if settings.api.token is not None else ""
    return SourceConnectors(
        pull=WebCrmPullConnector(source=source, settings=settings),
        api=settings.api,
        poll=settings.poll,
        credentials=AccessToken(
            base_url=settings.api.base_url,
            app_token=app_token,
            timeout_seconds=settings.api.timeout_seconds,
        ),
    )
