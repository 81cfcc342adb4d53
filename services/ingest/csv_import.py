"""A CRM export file as a full sync: CSV rows streamed into ``PullPage``s.

The file is read row by row (memory stays flat whatever its size) with the source's
``csv`` settings: delimiter, encoding, which column holds the record id, the
modification time and a deletion flag, and how headers map to field names. A row that
cannot become a change (wrong number of columns, no id, an unreadable time or text) is
rejected with its line number and the reason, and the import goes on. The cursor of
each page is the number of rows consumed, so an interrupted import can resume.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from services.core.contracts import (
    ContactChange,
    FieldValue,
    Operation,
    Origin,
    RejectedEvent,
)
from services.core.sources.common import CsvSettings
from services.ingest.connectors.base import Checkpoint, PayloadError, PullPage, Stamp
from services.ingest.fields import parse_timestamp, version_event_id

TRUE_WORDS: Final = frozenset({"1", "true", "yes", "y", "t"})
# A field longer than this is not a CRM value but a broken quote swallowing the file.
MAX_FIELD_CHARS: Final = 1 << 20


class CsvFileError(ValueError):
    """The file cannot be imported at all (unreadable header, unknown id column)."""


class CsvRows:
    """Turns rows of one export file into changes (pure: no I/O besides reading the file)."""

    def __init__(
        self, *, source: str, settings: CsvSettings, stamp: Stamp, imported_at: datetime
    ) -> None:
        self._source = source
        self._settings = settings
        self._stamp = stamp
        self._imported_at = imported_at

    def header(self, raw: list[str]) -> list[str]:
        names = [self._settings.columns.get(h.strip(), h.strip()) for h in raw]
        wanted = [self._settings.record_id_column]
        if self._settings.modified_at_column:
            wanted.append(self._settings.modified_at_column)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise CsvFileError(f"header has no column {', '.join(map(repr, missing))}")
        return names

    def change(self, names: list[str], row: list[str], *, line: int) -> ContactChange:
        if len(row) != len(names):
            raise PayloadError(f"line {line}", f"{len(row)} columns, the header has {len(names)}")
        values = dict(zip(names, row, strict=True))
        record_id = values[self._settings.record_id_column].strip()
        if not record_id:
            raise PayloadError(f"line {line}.{self._settings.record_id_column}", "empty id")
        modified_at = self._imported_at
        if self._settings.modified_at_column:
            column = self._settings.modified_at_column
            modified_at = parse_timestamp(values[column], where=f"line {line}.{column}")
        deleted = (
            self._settings.deleted_column is not None
            and values.get(self._settings.deleted_column, "").strip().lower() in TRUE_WORDS
        )
        fields: dict[str, FieldValue] = {
            name: (value if value != "" else None) for name, value in values.items()
        }
        return ContactChange(
            source=self._source,
            record_id=record_id,
            operation=Operation.DELETE if deleted else Operation.UPSERT,
            event_id=version_event_id(self._source, record_id, modified_at),
            source_modified_at=modified_at,
            received_at=self._imported_at,
            fields=fields,
            origin=self._stamp.origin,
            sync_id=self._stamp.sync_id,
        )

    def rejection(self, row: list[str], *, reason: str) -> RejectedEvent:
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=self._settings.delimiter).writerow(row)
        return RejectedEvent(
            stage="ingest",
            reason=reason,
            rejected_at=datetime.now(UTC),
            source=self._source,
            key=self._source.encode(),
            value=buffer.getvalue().encode(),
            attributes={"path": "csv import"},
        )


def _rows(path: Path, settings: CsvSettings) -> Iterator[tuple[int, list[str]]]:
    csv.field_size_limit(MAX_FIELD_CHARS)
    with path.open(encoding=settings.encoding, newline="") as handle:
        reader = csv.reader(handle, delimiter=settings.delimiter, strict=True)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, [f"<unreadable: {exc}>"]
                continue
            yield reader.line_num, row


def check_header(path: Path, settings: CsvSettings) -> list[str]:
    """The field names of the file's columns; raises CsvFileError before any import."""
    rows = CsvRows(
        source="", settings=settings, stamp=Stamp(Origin.CSV_IMPORT), imported_at=datetime.now(UTC)
    )
    try:
        _line, raw_header = next(_rows(path, settings))
    except StopIteration:
        raise CsvFileError(f"{path} is empty") from None
    except UnicodeDecodeError as exc:
        raise CsvFileError(f"{path} is not {settings.encoding}: {exc.reason}") from None
    return rows.header(raw_header)


async def csv_pages(
    path: Path,
    *,
    source: str,
    settings: CsvSettings,
    stamp: Stamp,
    resume: Checkpoint | None = None,
    page_size: int = 1000,
    imported_at: datetime | None = None,
) -> AsyncIterator[PullPage]:
    rows = CsvRows(
        source=source, settings=settings, stamp=stamp, imported_at=imported_at or datetime.now(UTC)
    )
    skip = int(resume.cursor) if resume is not None and resume.cursor else 0
    lines = _rows(path, settings)
    try:
        _first_line, raw_header = next(lines)
    except StopIteration:
        raise CsvFileError(f"{path} is empty") from None
    except UnicodeDecodeError as exc:
        raise CsvFileError(f"{path} is not {settings.encoding}: {exc.reason}") from None
    names = rows.header(raw_header)
    consumed = 0
    changes: list[ContactChange] = []
    rejected: list[RejectedEvent] = []
    try:
        for line, row in lines:
            consumed += 1
            if consumed <= skip:
                continue
            try:
                changes.append(rows.change(names, row, line=line))
            except PayloadError as exc:
                rejected.append(rows.rejection(row, reason=str(exc)))
            if len(changes) + len(rejected) >= page_size:
                yield PullPage(changes, Checkpoint(cursor=str(consumed)), rejected=rejected)
                changes, rejected = [], []
    except UnicodeDecodeError as exc:
        raise CsvFileError(
            f"{path}: not {settings.encoding} after row {consumed}: {exc.reason}"
        ) from None
    yield PullPage(changes, Checkpoint(cursor=str(consumed)), rejected=rejected)
