"""CSV export files as full-sync pages: streaming, header mapping, rejected rows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.core.contracts import Operation, Origin
from services.core.sources.common import CsvSettings
from services.ingest.connectors.base import Checkpoint, PullPage, Stamp
from services.ingest.csv_import import CsvFileError, check_header, csv_pages

pytestmark = pytest.mark.unit

AT = datetime(2026, 11, 23, 12, tzinfo=UTC)


def pages(path: Path, settings: CsvSettings, **kwargs: object) -> list[PullPage]:
    async def collect() -> list[PullPage]:
        return [
            page
            async for page in csv_pages(
                path,
                source="crm",
                settings=settings,
                stamp=Stamp(Origin.CSV_IMPORT, "s1"),
                imported_at=AT,
                **kwargs,  # type: ignore[arg-type]
            )
        ]

    return asyncio.run(collect())


def write(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "export.csv"
    path.write_text(text, encoding=encoding)
    return path


def test_rows_become_changes_with_mapped_headers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "\ufeffContact ID;E-mail;Changed;Gone\n"
        "7;ada@example.com;2026-11-01T10:00:00Z;\n"
        '8;"bob;the builder@example.com";2026-11-02T10:00:00Z;yes\n',
    )
    settings = CsvSettings(
        delimiter=";",
        record_id_column="id",
        modified_at_column="changed",
        deleted_column="gone",
        columns={"Contact ID": "id", "E-mail": "email", "Changed": "changed", "Gone": "gone"},
    )
    [page] = pages(path, settings)
    first, second = page.changes
    assert first.record_id == "7"
    assert first.fields["email"] == "ada@example.com"
    assert first.fields["gone"] is None  # an empty cell is a blank, never a clear
    assert first.source_modified_at == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert first.origin is Origin.CSV_IMPORT and first.sync_id == "s1"
    assert second.operation is Operation.DELETE
    assert second.fields["email"] == "bob;the builder@example.com"


def test_bad_rows_are_rejected_with_their_line_and_the_import_goes_on(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "id,email,updated\n"
        "1,a@x.io,2026-01-01T00:00:00Z\n"
        "2,b@x.io\n"
        ",c@x.io,2026-01-01T00:00:00Z\n"
        "4,d@x.io,yesterday\n"
        '5,"multi\nline@x.io",2026-01-01T00:00:00Z\n'
        "6,f@x.io,2026-01-01T00:00:00Z\n",
    )
    settings = CsvSettings(modified_at_column="updated")
    [page] = pages(path, settings)
    assert [c.record_id for c in page.changes] == ["1", "5", "6"]
    assert [r.reason for r in page.rejected] == [
        "line 3: 2 columns, the header has 3",
        "line 4.id: empty id",
        "line 5.updated: not an ISO 8601 timestamp: 'yesterday'",
    ]
    assert page.rejected[0].value == b"2,b@x.io\r\n"


def test_pages_and_resume_cursor(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i}@x.io\n" for i in range(25))
    path = write(tmp_path, "id,email\n" + rows)
    every = pages(path, CsvSettings(), page_size=10)
    assert [len(p.changes) for p in every] == [10, 10, 5]
    assert [p.checkpoint.cursor for p in every] == ["10", "20", "25"]
    resumed = pages(path, CsvSettings(), page_size=10, resume=Checkpoint(cursor="20"))
    assert [c.record_id for p in resumed for c in p.changes] == [str(i) for i in range(20, 25)]


def test_without_a_modified_column_rows_count_as_modified_at_import(tmp_path: Path) -> None:
    [page] = pages(write(tmp_path, "id\n1\n"), CsvSettings())
    assert page.changes[0].source_modified_at == AT


@pytest.mark.parametrize(
    ("text", "settings", "message"),
    [
        ("", CsvSettings(), "is empty"),
        ("email\nx@y.z\n", CsvSettings(), "header has no column 'id'"),
        ("id\n1\n", CsvSettings(modified_at_column="changed"), "no column 'changed'"),
    ],
)
def test_unusable_files_are_refused_before_importing(
    tmp_path: Path, text: str, settings: CsvSettings, message: str
) -> None:
    with pytest.raises(CsvFileError, match=message):
        check_header(write(tmp_path, text), settings)


def test_wrong_encoding_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("id,name\n1,Zo\xeb\n".encode("latin-1"))
    with pytest.raises(CsvFileError, match="not utf-8"):
        pages(path, CsvSettings())
    assert len(pages(path, CsvSettings(encoding="latin-1"))[0].changes) == 1
