"""HubSpot pull: CRM API polls (search) and full syncs (list).

Documented behaviour followed (developers.hubspot.com):

- "Search the CRM": ``POST /crm/v3/objects/contacts/search`` with ``filterGroups``,
  one sort, ``properties``, ``limit`` (at most 200); ``total``, ``results``,
  ``paging.next.after``; at most 10,000 results per query (paging past them is a
  400); 5 requests per second per account, on top of the account's general limit;
  archived records are never returned.
- "Contacts" list: ``GET /crm/v3/objects/contacts`` with ``limit`` (at most 100),
  ``after``, ``properties``, ``archived``; no result window.

Polls: every page is a fresh search from the last seen ``lastmodifieddate``, never an
``after`` offset. Offsets drift when a record earlier in the result changes while
paging (it moves to the end and the rest shift, so one would be skipped), and they
end at the 10,000-result window; restarting the time filter on every page avoids
both. Records of the boundary millisecond that were delivered are remembered in the
cursor and dropped from the next page; when a whole page shares one millisecond the
time filter cannot move, so that millisecond is paged by ``hs_object_id`` instead,
then the time filter goes on after it.

Full syncs: the list endpoint, paged by its ``after`` cursor in id order, which no
concurrent change shifts and no window limits; one search with ``limit: 1`` first
gives ``total`` for progress.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from services.core.api_client import ApiClient, ApiError, rate_limit
from services.core.contracts import ContactChange, Operation, RejectedEvent
from services.core.sources.hubspot import SEARCH_MAX_LIMIT, HubSpotSource
from services.ingest.connectors.base import (
    Checkpoint,
    PayloadError,
    PullPage,
    Stamp,
)
from services.ingest.fields import (
    dotted,
    flatten,
    parse_timestamp,
    pulled_changes,
    record_identifier,
    version_event_id,
)

log = logging.getLogger(__name__)


SEARCH_PATH: Final = "/crm/v3/objects/contacts/search"
LIST_PATH: Final = "/crm/v3/objects/contacts"
LIST_MAX_LIMIT: Final = 100
MODIFIED: Final = "lastmodifieddate"
OBJECT_ID: Final = "hs_object_id"
# Answers HubSpot documents as "pause, then retry" besides 429 and 502-504.
RETRY_LATER_STATUS: Final = frozenset({477, 521, 523, 524})
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS: Final = timedelta(milliseconds=1)


# --- pull -------------------------------------------------------------------------------


def to_millis(moment: datetime) -> int:
    """Whole Unix milliseconds, rounded down (exact: no float arithmetic)."""
    return (moment - EPOCH) // ONE_MS


@dataclass(frozen=True)
class SearchPosition:
    """Where the next search page starts (see the module docstring)."""

    after_ms: int
    inclusive: bool = True
    seen: tuple[str, ...] = ()
    """Ids already delivered whose modification is exactly ``after_ms`` (dropped when
    read again)."""
    group: bool = False
    """Paging the records of exactly ``after_ms`` by id, after ``last_id``."""
    last_id: str | None = None


@dataclass(frozen=True)
class ListPosition:
    after: str | None = None
    total: int | None = None
    newest_ms: int | None = None


def encode_cursor(position: SearchPosition | ListPosition | None) -> str | None:
    if position is None:
        return None
    mode = "search" if isinstance(position, SearchPosition) else "list"
    return json.dumps({"mode": mode, **asdict(position)}, separators=(",", ":"))


def decode_cursor(cursor: str | None) -> SearchPosition | ListPosition | None:
    """The position saved in a cursor; None (start over) when it cannot be read."""
    if not cursor:
        return None
    try:
        data = json.loads(cursor)
        mode = data.pop("mode")
        if mode == "search":
            data["seen"] = tuple(data.get("seen", ()))
            return SearchPosition(**data)
        if mode == "list":
            return ListPosition(**data)
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    log.warning("unreadable hubspot cursor; starting the pull over")
    return None


def search_body(
    position: SearchPosition, *, properties: Sequence[str], limit: int
) -> dict[str, Any]:
    """The search request for a position: records modified from ``after_ms`` on,
    oldest first, or (in a group) the records of exactly ``after_ms`` by id."""
    value = str(position.after_ms)
    if position.group:
        filters: list[dict[str, str]] = [
            {"propertyName": MODIFIED, "operator": "GTE", "value": value},
            {"propertyName": MODIFIED, "operator": "LTE", "value": value},
        ]
        if position.last_id is not None:
            filters.append({"propertyName": OBJECT_ID, "operator": "GT", "value": position.last_id})
        sort = {"propertyName": OBJECT_ID, "direction": "ASCENDING"}
    else:
        operator = "GTE" if position.inclusive else "GT"
        filters = [{"propertyName": MODIFIED, "operator": operator, "value": value}]
        sort = {"propertyName": MODIFIED, "direction": "ASCENDING"}
    return {
        "filterGroups": [{"filters": filters}],
        "sorts": [sort],
        "properties": list(properties),
        "limit": limit,
    }


def next_search_position(
    position: SearchPosition, keys: Sequence[tuple[str, int]], *, more: bool
) -> SearchPosition | None:
    """Where the search goes on after a page whose records had ``keys`` (id,
    modification ms); None when the pull is complete. Every step moves forward (a
    later millisecond, or a higher id inside one), so a pull always ends."""
    if not more:
        if position.group:
            return SearchPosition(after_ms=position.after_ms, inclusive=False)
        return None
    if not keys:
        raise ApiError(status=200, path=SEARCH_PATH, detail="a page with more to come had no ids")
    if position.group:
        last_id = max((record_id for record_id, _ in keys), key=_id_number)
        if position.last_id is not None and _id_number(last_id) <= _id_number(position.last_id):
            raise ApiError(status=200, path=SEARCH_PATH, detail="ids did not advance in a group")
        return replace(position, last_id=last_id)
    newest = max(ms for _, ms in keys)
    if newest < position.after_ms or (newest == position.after_ms and not position.inclusive):
        raise ApiError(status=200, path=SEARCH_PATH, detail="results ignored the time filter")
    at_newest = tuple(record_id for record_id, ms in keys if ms == newest)
    if newest == position.after_ms:
        # A whole page of one millisecond: the time filter cannot move past it, so
        # that millisecond is paged by id; what was delivered of it stays known.
        seen = tuple(dict.fromkeys([*position.seen, *at_newest]))
        return SearchPosition(after_ms=newest, seen=seen, group=True)
    return SearchPosition(after_ms=newest, seen=at_newest)


def _id_number(record_id: str) -> int:
    return int(record_id) if record_id.isdigit() else -1


def _record_key(record: Any) -> tuple[str, int] | None:
    """A record's id and modification ms, when both can be read."""
    if not isinstance(record, dict):
        return None
    try:
        record_id = record_identifier(record.get("id"), where="id")
        return record_id, to_millis(_modified_at(record, where="record"))
    except PayloadError:
        return None


def _modified_at(record: Mapping[str, Any], *, where: str) -> datetime:
    properties = record.get("properties")
    value = properties.get(MODIFIED) if isinstance(properties, Mapping) else None
    if value is None:
        # ``updatedAt`` is the same instant; a contact always has one of the two.
        return parse_timestamp(record.get("updatedAt"), where=f"{where}.updatedAt")
    return parse_timestamp(value, where=f"{where}.properties.{MODIFIED}")


def _results(document: Any, path: str) -> list[Any]:
    results = dotted(document, "results")
    if not isinstance(results, list):
        raise ApiError(status=200, path=path, detail="no 'results' list in the response")
    return results


def _next_after(document: Any) -> str | None:
    after = dotted(document, "paging.next.after")
    return None if after in (None, "") else str(after)


def _total(document: Any) -> int | None:
    total = dotted(document, "total")
    return total if isinstance(total, int) and not isinstance(total, bool) else None


def _latest(current: datetime | None, changes: Sequence[ContactChange]) -> datetime | None:
    return max(
        [c.source_modified_at for c in changes] + ([current] if current else []), default=None
    )


class HubSpotPullConnector:
    def __init__(self, *, source: str, settings: HubSpotSource) -> None:
        self.source = source
        self._properties = settings.fetched_properties()
        self._search_limit = settings.poll.page_size if settings.poll else SEARCH_MAX_LIMIT
        # Search has its own per-second limit besides the account's general one,
        # which the ApiClient's own limit keeps.
        self._search_limit_per_second = rate_limit(settings.search_requests_per_second)

    async def _search(self, api: ApiClient, body: dict[str, Any]) -> Any:
        await self._search_limit_per_second.acquire()
        return await api.post_json(SEARCH_PATH, body=body)

    async def pages(
        self,
        api: ApiClient,
        *,
        since: datetime | None,
        resume: Checkpoint | None,
        stamp: Stamp,
    ) -> AsyncIterator[PullPage]:
        # The cursor holds the whole position, so a resumed pull ignores ``since``
        # (the poller moves it with the watermark) and goes on where it stopped.
        saved = decode_cursor(resume.cursor if resume is not None else None)
        if since is None:
            listed = saved if isinstance(saved, ListPosition) else None
            async for page in self._list_pages(api, listed, stamp=stamp):
                yield page
            return
        position = saved if isinstance(saved, SearchPosition) else None
        watermark = resume.watermark if resume is not None else None
        async for page in self._search_pages(
            api, position or SearchPosition(after_ms=to_millis(since)), watermark, stamp=stamp
        ):
            yield page

    async def _search_pages(
        self,
        api: ApiClient,
        position: SearchPosition,
        watermark: datetime | None,
        *,
        stamp: Stamp,
    ) -> AsyncIterator[PullPage]:
        first = True
        while True:
            body = search_body(position, properties=self._properties, limit=self._search_limit)
            document = await self._search(api, body)
            results = _results(document, SEARCH_PATH)
            keys = [_record_key(record) for record in results]
            # Drop what the previous page already delivered at the boundary millisecond.
            fresh = [
                (index, record)
                for index, (record, key) in enumerate(zip(results, keys, strict=True))
                if key is None or key[1] != position.after_ms or key[0] not in position.seen
            ]
            changes, rejected = self._changes(fresh, stamp=stamp)
            watermark = _latest(watermark, changes)
            following = next_search_position(
                position, [k for k in keys if k is not None], more=_next_after(document) is not None
            )
            yield PullPage(
                changes=changes,
                checkpoint=Checkpoint(watermark=watermark, cursor=encode_cursor(following)),
                # Later queries start further on; only the first one counts the pull.
                total=_total(document) if first else None,
                rejected=rejected,
            )
            if following is None:
                return
            position, first = following, False

    async def _list_pages(
        self, api: ApiClient, position: ListPosition | None, *, stamp: Stamp
    ) -> AsyncIterator[PullPage]:
        if position is None:
            position = ListPosition(total=await self._count(api))
        newest = EPOCH + position.newest_ms * ONE_MS if position.newest_ms is not None else None
        while True:
            params = {
                "limit": str(LIST_MAX_LIMIT),
                "properties": ",".join(self._properties),
                "archived": "false",
            }
            if position.after is not None:
                params["after"] = position.after
            document = await api.get_json(LIST_PATH, params=params)
            records = list(enumerate(_results(document, LIST_PATH)))
            changes, rejected = self._changes(records, stamp=stamp)
            newest = _latest(newest, changes)
            after = _next_after(document)
            following = None
            if after is not None:
                newest_ms = to_millis(newest) if newest is not None else None
                following = ListPosition(after=after, total=position.total, newest_ms=newest_ms)
            yield PullPage(
                changes=changes,
                # Listed in id order, not by modification: the watermark only at the end.
                checkpoint=Checkpoint(
                    watermark=newest if following is None else None,
                    cursor=encode_cursor(following),
                ),
                total=position.total,
                rejected=rejected,
            )
            if following is None:
                return
            position = following

    async def _count(self, api: ApiClient) -> int | None:
        """How many contacts there are: search tells ``total``, the list does not."""
        document = await self._search(api, {"limit": 1, "properties": [OBJECT_ID]})
        return _total(document)

    def _changes(
        self, records: Sequence[tuple[int, Any]], *, stamp: Stamp
    ) -> tuple[list[ContactChange], list[RejectedEvent]]:
        """The records, with their place in the page, as changes or rejections."""
        return pulled_changes(
            self.source,
            ((f"results[{index}]", record) for index, record in records),
            convert=lambda record, where: self._change(record, where=where, stamp=stamp),
        )

    def _change(self, record: Any, *, where: str, stamp: Stamp) -> ContactChange:
        if not isinstance(record, dict):
            raise PayloadError(where, "must be a JSON object")
        record_id = record_identifier(record.get("id"), where=f"{where}.id")
        properties = record.get("properties")
        if not isinstance(properties, dict):
            raise PayloadError(f"{where}.properties", "missing or not an object")
        modified_at = _modified_at(record, where=where)
        return ContactChange(
            source=self.source,
            record_id=record_id,
            operation=Operation.DELETE if record.get("archived") is True else Operation.UPSERT,
            event_id=version_event_id(self.source, record_id, modified_at),
            source_modified_at=modified_at,
            received_at=datetime.now(UTC),
            fields=flatten(properties, where=f"{where}.properties"),
            origin=stamp.origin,
            sync_id=stamp.sync_id,
        )


def is_throttled(status: int, _body: bytes) -> bool:
    """HubSpot's answers that mean "pause, then retry" besides 429 and 502-504."""
    return status in RETRY_LATER_STATUS
