"""The project's own PostgreSQL servers for tests and benchmarks, via local_postgres.py.

deploy/postgres/local_postgres.py runs real PostgreSQL servers (Debian's packaged
binaries, which it installs when missing and run as root) as processes on 127.0.0.1;
nothing here is mocked. Each server has a name, so the test server, a crash-test server
and a running `make run` database never share ports or data.

The script is imported from its path rather than run as a subprocess, so a failure
raises its own PostgresToolError, server log tail included, inside the test report.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
SCRIPT: Final = REPO_ROOT / "deploy" / "postgres" / "local_postgres.py"
# Registered in sys.modules under this name, as `import local_postgres` would.
MODULE_NAME: Final = "local_postgres"
DATABASE_NAME_RE: Final = re.compile(r"[a-z0-9_]+")
# PostgreSQL silently truncates longer identifiers, which would break the returned DSN.
MAX_NAME_BYTES: Final = 63


@functools.cache
def _tool() -> ModuleType:
    """deploy/postgres/local_postgres.py as a module (it is not in a package)."""
    spec = importlib.util.spec_from_file_location(MODULE_NAME, SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up in sys.modules.
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[MODULE_NAME]
        raise
    return module


@dataclass
class LocalPostgres:
    name: str
    port: int
    # fsync, synchronous_commit and full_page_writes off: for throwaway data only, never
    # for a crash test (a crash of the server is fine, one of the machine is not).
    unsafe_fast: bool = False

    def start(self) -> str:
        """Start (idempotently; installs PostgreSQL when missing) and return the DSN."""
        return str(_tool().start(self.name, self.port, unsafe_fast=self.unsafe_fast))

    @property
    def dsn(self) -> str:
        """postgresql://crmsync@127.0.0.1:<port>/crmsync"""
        return str(_tool().dsn(self.port))

    def stop(self, *, purge: bool = False, mode: str = "fast") -> None:
        """Stop (a no-op when stopped); purge deletes the data as well."""
        _tool().stop(self.name, mode=mode, purge=purge)

    def kill(self) -> None:
        """SIGKILL the server and every process of it, as a crash would."""
        _tool().kill(self.name)

    def restart(self) -> str:
        """Stop (fast) if running, then start on the same data; returns the DSN.

        After kill() this is the crash restart: the server runs its recovery first.
        """
        return str(_tool().restart(self.name))


def database_dsn(dsn: str, name: str) -> str:
    """`dsn` pointing at database `name` instead (URL or key=value form)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return urlunsplit(urlsplit(dsn)._replace(path="/" + name))
    return make_conninfo(dsn, dbname=name)


def fresh_database(dsn: str, name: str) -> str:
    """Create database `name`, empty, on the server of `dsn`; returns its DSN.

    A database of that name left by an earlier run is dropped first (connections to it
    are closed), so the test starts from nothing either way. Created from template0, so
    nothing added to template1 leaks in.
    """
    if not DATABASE_NAME_RE.fullmatch(name) or len(name) > MAX_NAME_BYTES:
        raise ValueError(f"database name {name!r} must match [a-z0-9_]+, 63 characters at most")
    with psycopg.connect(dsn, autocommit=True) as connection:
        database = sql.Identifier(name)
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
        connection.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(database))
    return database_dsn(dsn, name)


def server_version(dsn: str) -> str:
    """What the server says it is, e.g. 'PostgreSQL 15.18'."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    version = str(row[0]).split()[0] if row else "unknown"
    return f"PostgreSQL {version}"
