"""Store errors classified by what the database says: transient (the batch is retried)
or not (the update is refused), one condition of each SQLSTATE class and SQLite code."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import psycopg
import psycopg.errors
import pytest

from services.writer.stores.failures import (
    postgres_is_transient,
    postgres_reason,
    sqlite_is_transient,
    sqlite_reason,
)

pytestmark = pytest.mark.unit

POSTGRES: list[tuple[str, bool]] = [
    ("08000", True),  # connection_exception
    ("08006", True),  # connection_failure
    ("08P01", True),  # protocol_violation
    ("40001", True),  # serialization_failure
    ("40P01", True),  # deadlock_detected
    ("53100", True),  # disk_full
    ("53200", True),  # out_of_memory
    ("53300", True),  # too_many_connections
    ("57014", True),  # query_canceled
    ("57P01", True),  # admin_shutdown
    ("57P03", True),  # cannot_connect_now
    ("58000", True),  # system_error
    ("58030", True),  # io_error
    ("25006", True),  # read_only_sql_transaction: a standby after a failover
    ("55P03", True),  # lock_not_available
    ("22001", False),  # string_data_right_truncation
    ("22P02", False),  # invalid_text_representation
    ("22021", False),  # character_not_in_repertoire
    ("23505", False),  # unique_violation
    ("23514", False),  # check_violation
    ("54000", False),  # program_limit_exceeded: index row size exceeds maximum
    ("54001", False),  # statement_too_complex
    ("42P01", True),  # undefined_table: the set-up, not the update
    ("42501", True),  # insufficient_privilege: likewise
    ("25P02", False),  # in_failed_sql_transaction
    ("55000", False),  # object_not_in_prerequisite_state
    ("XX000", False),  # internal_error
]


@pytest.mark.parametrize(("sqlstate", "transient"), POSTGRES)
def test_postgres_errors_by_sqlstate(sqlstate: str, transient: bool) -> None:
    error = psycopg.errors.lookup(sqlstate)("message")
    assert error.sqlstate == sqlstate
    assert postgres_is_transient(error) is transient


def test_a_postgres_connection_lost_without_sqlstate_is_transient() -> None:
    assert postgres_is_transient(psycopg.OperationalError("server closed the connection"))
    assert postgres_is_transient(psycopg.InterfaceError("the connection is closed"))


def test_a_client_side_refusal_without_sqlstate_is_not_transient() -> None:
    assert not postgres_is_transient(psycopg.DataError("NUL (0x00) bytes"))
    assert not postgres_is_transient(psycopg.ProgrammingError("wrong number of parameters"))


def test_a_postgres_reason_names_the_sqlstate() -> None:
    error = psycopg.errors.lookup("54000")("index row size 10016 exceeds maximum 2704")
    assert postgres_reason(error) == "index row size 10016 exceeds maximum 2704 (SQLSTATE 54000)"


def _busy(path: Path) -> None:
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        sqlite3.connect(path, timeout=0, isolation_level=None).execute("BEGIN IMMEDIATE")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def _constraint(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    db.execute("INSERT INTO t VALUES ('a')")
    db.execute("INSERT INTO t VALUES ('a')")


def _too_big(path: Path) -> None:
    db = sqlite3.connect(path)
    db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100)
    db.execute("CREATE TABLE t (v TEXT)")
    db.execute("INSERT INTO t VALUES (?)", ("x" * 1000,))


def _no_such_table(path: Path) -> None:
    sqlite3.connect(path).execute("SELECT * FROM nowhere")


def _read_only(path: Path) -> None:
    sqlite3.connect(path).execute("CREATE TABLE t (v TEXT)").connection.commit()
    sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("INSERT INTO t VALUES ('x')")


def _cannot_open(path: Path) -> None:
    sqlite3.connect(path / "missing" / "db.sqlite")


SQLITE: list[tuple[Callable[[Path], None], str, bool]] = [
    (_busy, "SQLITE_BUSY", True),
    (_read_only, "SQLITE_READONLY", True),
    (_constraint, "SQLITE_CONSTRAINT_PRIMARYKEY", False),
    (_too_big, "SQLITE_TOOBIG", False),
    (_no_such_table, "SQLITE_ERROR", False),
]


@pytest.mark.parametrize(("provoke", "name", "transient"), SQLITE)
def test_sqlite_errors_by_result_code(
    provoke: Callable[[Path], None], name: str, transient: bool, tmp_path: Path
) -> None:
    with pytest.raises(sqlite3.Error) as caught:
        provoke(tmp_path / "store.db")
    assert caught.value.sqlite_errorname == name
    assert sqlite_is_transient(caught.value) is transient
    assert sqlite_reason(caught.value).endswith(f"({name})")


def test_sqlite_cannot_open_is_transient(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError) as caught:
        _cannot_open(tmp_path)
    assert sqlite_is_transient(caught.value)
