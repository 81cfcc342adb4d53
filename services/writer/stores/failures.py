"""Which errors of the SQL stores are transient, and which refuse the update at hand.

Classified by what the database says, not by the driver's exception type: psycopg
raises OperationalError for a lost connection and for an index row too large alike,
and sqlite3 raises OperationalError for "database is locked" and for "no such table".

- Transient: the same batch succeeds once the database is back, so the writer
  retries it with backoff and skips nothing.
- Anything else, raised by an update's own writes, refuses that update: the batch is
  redone an update at a time, the update is rejected with the database's reason, and
  the rest of the batch is stored (services/writer/stores/batch.py). Raised anywhere
  else (a read, a migration, the commit), it is a bug and crashes loudly.
"""

from __future__ import annotations

import sqlite3
from typing import Final

import psycopg

# PostgreSQL SQLSTATE classes (Appendix A of its manual) of conditions that pass.
TRANSIENT_SQLSTATE_CLASSES: Final = frozenset(
    {
        "08",  # connection exception
        "40",  # transaction rollback: serialization failure, deadlock
        "53",  # insufficient resources: disk full, out of memory, too many connections
        "57",  # operator intervention: admin shutdown, cannot connect now, query canceled
        "58",  # system error: I/O error
        # The store's set-up, not the update: every update would fail alike, so the
        # writer waits (crmsync_store_unavailable alerts) instead of rejecting them all.
        "28",  # invalid authorization: a password or role changed
        "3D",  # invalid catalog name: the database is gone
        "3F",  # invalid schema name
        "42",  # access rule violation: permission denied, a table or column missing
    }
)
# Single conditions of other classes that pass too.
TRANSIENT_SQLSTATES: Final = frozenset(
    {
        "25006",  # read_only_sql_transaction: a standby answering, as after a failover
        "55P03",  # lock_not_available: a lock_timeout the server's operator set
    }
)

# SQLite primary result codes (https://sqlite.org/rescode.html) of conditions that pass.
TRANSIENT_SQLITE_CODES: Final = frozenset(
    {
        5,  # SQLITE_BUSY: database is locked (another writer past the busy timeout)
        6,  # SQLITE_LOCKED: a table locked within the same file
        8,  # SQLITE_READONLY: the file not writable (permissions, a remount)
        9,  # SQLITE_INTERRUPT
        10,  # SQLITE_IOERR: disk I/O error
        13,  # SQLITE_FULL: database or disk is full
        14,  # SQLITE_CANTOPEN: unable to open the file (yet)
        15,  # SQLITE_PROTOCOL: WAL lock protocol race
        17,  # SQLITE_SCHEMA: the schema changed under a prepared statement
    }
)


def postgres_is_transient(exc: psycopg.Error) -> bool:
    """Whether the batch can simply be tried again once PostgreSQL is back."""
    sqlstate = exc.sqlstate
    if sqlstate is None:
        # No answer from the server: the connection was lost, refused or closed. A
        # client-side refusal without one (a NUL byte in text) is a DataError.
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
    return sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES or sqlstate in TRANSIENT_SQLSTATES


def postgres_reason(exc: psycopg.Error) -> str:
    """What PostgreSQL refused, for a rejection: its message and SQLSTATE (the detail,
    which can quote the values, is left out)."""
    message = exc.diag.message_primary or (str(exc).strip().splitlines() or [repr(exc)])[0]
    return f"{message} (SQLSTATE {exc.sqlstate})" if exc.sqlstate else message


def sqlite_is_transient(exc: sqlite3.Error) -> bool:
    """Whether the batch can simply be tried again once the SQLite file is usable."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        # Raised by the sqlite3 module itself (a closed connection, misuse): a bug.
        return False
    return code & 0xFF in TRANSIENT_SQLITE_CODES


def sqlite_reason(exc: sqlite3.Error) -> str:
    """What SQLite refused, for a rejection: its message and error name."""
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)
