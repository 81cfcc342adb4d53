"""Reading the SQLite store the tests' services write, without disturbing them."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def query(db: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        try:
            return list(conn.execute(sql, params))
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise


def attribute(db: Path, *, record_id: str, name: str) -> object | None:
    rows = query(
        db,
        "SELECT a.value FROM attributes a JOIN identities i ON i.profile_id = a.profile_id "
        "WHERE i.kind = 'crm' AND i.value = ? AND a.name = ?",
        f"demo:{record_id}",
        name,
    )
    return rows[0][0] if rows else None


def stored_record_ids(db: Path) -> set[str]:
    rows = query(db, "SELECT value FROM identities WHERE kind = 'crm'")
    return {str(value).split(":", 1)[1] for (value,) in rows}
