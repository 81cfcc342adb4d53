"""The generic REST poll: any JSON API that lists records changed since a given time.

Everything vendor-specific comes from the source's config: the list endpoint, the
"modified since" parameter and its format, the paging style (cursor, page number or
offset), where the records and the total are in the response, and the record's id,
modification-time and deletion fields. Pages are requested in sequence; when the API
returns records oldest change first, every page advances the watermark.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

from services.core.api_client import ApiClient, ApiError
from services.core.contracts import ContactChange, Operation, RejectedEvent
from services.core.sources.generic_rest import (
    CursorPaging,
    GenericRestSource,
    OffsetPaging,
    PagePaging,
)
from services.ingest.connectors.base import (
    Checkpoint,
    PayloadError,
    PullPage,
    SourceConnectors,
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


def since_value(moment: datetime, fmt: str) -> str:
    if fmt == "unix_seconds":
        return str(int(moment.timestamp()))
    if fmt == "unix_millis":
        return str(int(moment.timestamp() * 1000))
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class GenericRestConnector:
    def __init__(self, *, source: str, settings: GenericRestSource) -> None:
        self.source = source
        self._settings = settings

    async def pages(
        self,
        api: ApiClient,
        *,
        since: datetime | None,
        resume: Checkpoint | None,
        stamp: Stamp,
    ) -> AsyncIterator[PullPage]:
        settings = self._settings
        paging = settings.paging
        size = settings.poll.page_size if settings.poll is not None else 100
        position = resume.cursor if resume is not None else None
        watermark = resume.watermark if resume is not None else None
        while True:
            params = dict(settings.extra_params)
            if since is not None:
                params[settings.since_param] = since_value(since, settings.since_format)
            if settings.size_param:
                params[settings.size_param] = str(size)
            params.update(self._position_params(paging, position))
            document = await api.get_json(settings.path, params=params)
            records = dotted(document, settings.records_path)
            if not isinstance(records, list):
                raise ApiError(
                    status=200,
                    path=settings.path,
                    detail=f"no record list at '{settings.records_path}' in the response",
                )
            changes, rejected_reasons = self._changes(records, stamp=stamp)
            if settings.sorted_by_modification and changes:
                newest = max(c.source_modified_at for c in changes)
                watermark = newest if watermark is None else max(watermark, newest)
            position = self._next_position(paging, position, document, len(records), size)
            total = dotted(document, settings.total_path) if settings.total_path else None
            yield PullPage(
                changes=changes,
                checkpoint=Checkpoint(watermark=watermark, cursor=position),
                total=total if isinstance(total, int) else None,
                rejected=rejected_reasons,
            )
            if position is None:
                return

    @staticmethod
    def _position_params(
        paging: CursorPaging | PagePaging | OffsetPaging, position: str | None
    ) -> Mapping[str, str]:
        if isinstance(paging, CursorPaging):
            return {paging.cursor_param: position} if position else {}
        if isinstance(paging, PagePaging):
            return {paging.page_param: position or str(paging.first_page)}
        return {paging.offset_param: position or "0"}

    @staticmethod
    def _next_position(
        paging: CursorPaging | PagePaging | OffsetPaging,
        position: str | None,
        document: Any,
        count: int,
        size: int,
    ) -> str | None:
        """The next page's position, or None after the last page."""
        if isinstance(paging, CursorPaging):
            cursor = dotted(document, paging.next_cursor_path)
            return str(cursor) if cursor not in (None, "") else None
        if count < size:
            return None
        if isinstance(paging, PagePaging):
            return str(int(position or paging.first_page) + 1)
        return str(int(position or "0") + count)

    def _changes(
        self, records: list[Any], *, stamp: Stamp
    ) -> tuple[list[ContactChange], list[RejectedEvent]]:
        path = self._settings.records_path
        return pulled_changes(
            self.source,
            ((f"{path}[{i}]", record) for i, record in enumerate(records)),
            convert=lambda record, where: self._change(record, where=where, stamp=stamp),
        )

    def _change(self, record: Any, *, where: str, stamp: Stamp) -> ContactChange:
        settings = self._settings
        if not isinstance(record, dict):
            raise PayloadError(where, "must be a JSON object")
        record_id = record_identifier(
            record.get(settings.record_id_field), where=f"{where}.{settings.record_id_field}"
        )
        modified_at = parse_timestamp(
            record.get(settings.modified_at_field), where=f"{where}.{settings.modified_at_field}"
        )
        deleted = settings.deleted_field is not None and record.get(settings.deleted_field) is True
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


def connectors(source: str, settings: GenericRestSource) -> SourceConnectors:
    return SourceConnectors(
        pull=GenericRestConnector(source=source, settings=settings),
        api=settings.api,
        poll=settings.poll,
    )
