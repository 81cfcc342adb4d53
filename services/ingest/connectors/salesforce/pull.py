"""Salesforce pull: SOQL through the REST query resource, ``nextRecordsUrl`` batches,
and a checkpoint that survives a dead query locator."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from services.core.api_client import ApiClient, ApiError, ApiResponse
from services.core.contracts import ContactChange, Operation, RejectedEvent
from services.core.sources.salesforce import (
    SalesforceSource,
)
from services.ingest.connectors.base import (
    Checkpoint,
    PayloadError,
    PullPage,
    Stamp,
)
from services.ingest.connectors.salesforce.times import salesforce_time, soql_datetime
from services.ingest.fields import (
    flatten,
    pulled_changes,
    record_identifier,
    version_event_id,
)

log = logging.getLogger(__name__)

# What a record id looks like: only such text is ever written into a SOQL literal.
RECORD_ID: Final = re.compile(r"^[A-Za-z0-9]{15}([A-Za-z0-9]{3})?$")
LOST_LOCATOR_CODES: Final = ("INVALID_QUERY_LOCATOR", "INVALID_SESSION_ID", "NOT_FOUND")


@dataclass(frozen=True)
class QueryPosition:
    """Where a pull stands, kept in the checkpoint's cursor: the query's lower bound,
    the last record delivered, Salesforce's locator for the next batch, the total."""

    since: datetime | None
    after: tuple[datetime, str] | None = None
    next_url: str | None = None
    total: int | None = None

    def dump(self) -> str:
        return json.dumps(
            {
                "since": self.since.isoformat() if self.since else None,
                "after": [self.after[0].isoformat(), self.after[1]] if self.after else None,
                "next": self.next_url,
                "total": self.total,
            },
            separators=(",", ":"),
        )

    @classmethod
    def load(cls, cursor: str) -> QueryPosition:
        data = json.loads(cursor)
        after = data.get("after")
        since = data.get("since")
        return cls(
            since=datetime.fromisoformat(since) if since else None,
            after=(datetime.fromisoformat(after[0]), str(after[1])) if after else None,
            next_url=data.get("next") or None,
            total=data.get("total") if isinstance(data.get("total"), int) else None,
        )


def lost_locator(error: ApiError) -> bool:
    """Whether a nextRecordsUrl failed because the locator is gone (idle 15 minutes, or
    its session ended: a locator belongs to the session that opened it)."""
    return error.status in (400, 401, 404) and any(
        code in error.detail for code in LOST_LOCATOR_CODES
    )


class SalesforcePullConnector:
    def __init__(self, *, source: str, settings: SalesforceSource) -> None:
        self.source = source
        resource = "queryAll" if settings.include_deleted else "query"
        self._path = f"/services/data/v{settings.api_version}/{resource}"
        self._object = settings.object
        self._select = ", ".join(settings.select_fields)
        self._headers = {"Sforce-Query-Options": f"batchSize={settings.batch_size}"}

    def soql(self, position: QueryPosition) -> str:
        """The query, from the last record delivered when there is one, else from since."""
        where = ""
        if position.after is not None:
            where = self._after(*position.after)
        elif position.since is not None:
            where = f" WHERE LastModifiedDate >= {soql_datetime(position.since)}"
        # Names come from the settings, checked there against the API name pattern;
        # values are formatted datetimes and checked record ids: nothing else gets in.
        return f"SELECT {self._select} FROM {self._object}{where} ORDER BY LastModifiedDate, Id"  # noqa: S608

    @staticmethod
    def _after(modified_at: datetime, record_id: str) -> str:
        literal = soql_datetime(modified_at)
        if modified_at.microsecond or not RECORD_ID.match(record_id):
            # The literal has whole seconds: re-read that second rather than miss any
            # of it (what is read twice is the same version, a duplicate downstream).
            return f" WHERE LastModifiedDate >= {literal}"
        return (
            f" WHERE (LastModifiedDate > {literal} OR "
            f"(LastModifiedDate = {literal} AND Id > '{record_id}'))"
        )

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
        document = await (
            self._more(api, position) if position.next_url else self._query(api, position)
        )
        while True:
            records = document.get("records") if isinstance(document, dict) else None
            if not isinstance(records, list):
                raise ApiError(status=200, path=self._path, detail="no 'records' in the answer")
            changes, rejected, last = self._changes(records, stamp=stamp)
            if changes:
                newest = changes[-1].source_modified_at
                watermark = newest if watermark is None else max(watermark, newest)
            total = position.total
            if total is None and isinstance(document.get("totalSize"), int):
                total = document["totalSize"]
            next_url = document.get("nextRecordsUrl") if document.get("done") is False else None
            position = QueryPosition(
                since=position.since,
                after=last or position.after,
                next_url=next_url if isinstance(next_url, str) and next_url else None,
                total=total,
            )
            done = position.next_url is None
            yield PullPage(
                changes=changes,
                checkpoint=Checkpoint(
                    watermark=watermark, cursor=None if done else position.dump()
                ),
                total=total,
                rejected=rejected,
            )
            if done:
                return
            document = await self._more(api, position)

    def _start(self, since: datetime | None, resume: Checkpoint | None) -> QueryPosition:
        if resume is None or not resume.cursor:
            return QueryPosition(since=since)
        try:
            return QueryPosition.load(resume.cursor)
        except (ValueError, TypeError, KeyError, IndexError):
            log.warning("unreadable cursor source=%s: the query starts over", self.source)
            return QueryPosition(since=since)

    async def _query(self, api: ApiClient, position: QueryPosition) -> Any:
        response = await api.request(
            "GET", self._path, params={"q": self.soql(position)}, headers=self._headers
        )
        return response.json()

    async def _more(self, api: ApiClient, position: QueryPosition) -> Any:
        """The next batch through the locator; a lost locator -> the query again from
        the last record delivered."""
        try:
            response: ApiResponse = await api.request(
                "GET", position.next_url or "", headers=self._headers
            )
        except ApiError as exc:
            if not lost_locator(exc):
                raise
            log.info(
                "query locator gone source=%s status=%s: querying again from the last "
                "record delivered",
                self.source,
                exc.status,
            )
            return await self._query(api, position)
        return response.json()

    def _changes(
        self, records: list[Any], *, stamp: Stamp
    ) -> tuple[list[ContactChange], list[RejectedEvent], tuple[datetime, str] | None]:
        """The batch as changes or rejections, and the last record delivered."""
        changes, rejected = pulled_changes(
            self.source,
            ((f"records[{i}]", record) for i, record in enumerate(records)),
            convert=lambda record, where: self._change(record, where=where, stamp=stamp),
        )
        last = (changes[-1].source_modified_at, changes[-1].record_id) if changes else None
        return changes, rejected, last

    def _change(self, record: Any, *, where: str, stamp: Stamp) -> ContactChange:
        if not isinstance(record, dict):
            raise PayloadError(where, "must be a JSON object")
        record = without_attributes(record)
        record_id = record_identifier(record.get("Id"), where=f"{where}.Id")
        modified_at = salesforce_time(
            record.get("LastModifiedDate"), where=f"{where}.LastModifiedDate"
        )
        deleted = record.get("IsDeleted") is True
        return ContactChange(
            source=self.source,
            record_id=record_id,
            operation=Operation.DELETE if deleted else Operation.UPSERT,
            event_id=version_event_id(self.source, record_id, modified_at),
            source_modified_at=modified_at,
            received_at=datetime.now(UTC),
            fields=flatten(record, where=where),
            origin=stamp.origin,
            sync_id=stamp.sync_id,
        )


def without_attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    """A query record without the ``attributes`` (type, url) Salesforce adds to it and
    to every related record it contains."""
    return {
        key: without_attributes(value) if isinstance(value, Mapping) else value
        for key, value in record.items()
        if key != "attributes"
    }


def is_throttled(status: int, body: bytes) -> bool:
    """403 with errorCode REQUEST_LIMIT_EXCEEDED: the org's API request limit is spent."""
    if status != 403:
        return False
    try:
        errors = json.loads(body)
    except ValueError:
        return False
    errors = errors if isinstance(errors, list) else [errors]
    return any(
        isinstance(e, dict) and e.get("errorCode") == "REQUEST_LIMIT_EXCEEDED" for e in errors
    )
