"""The store under test: every test in tests/stores runs once per store kind.

SQLite needs nothing running; PostgreSQL is a real server the suite starts
(tests/support/postgres.py) with a fresh database per test; the HTTP store talks to
a fake CDP that follows docs/cdp-http-api.md (tests/fakes/cdp.py), served on
loopback.

The PostgreSQL store writes every batch in parts of one update (WRITE_EVERY in
production), so that the tests cover its parts and their undoing.

After every test, the SQL stores' tables are checked for rows naming a profile that is
not there: the PostgreSQL store has no foreign keys (see its schema) and keeps its
tables consistent itself, which this holds it to.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

import psycopg
import pytest

from services.core.config import HttpStoreSettings, PostgresStoreSettings
from services.core.mapping_settings import ProfileSettings
from services.writer.stores.base import ProfileStore
from services.writer.stores.http import HttpProfileStore
from services.writer.stores.postgres import PostgresProfileStore
from services.writer.stores.sqlite import SqliteProfileStore
from tests.fakes import cdp
from tests.fakes.server import ServerThread
from tests.support.postgres import fresh_database

# Per table with a profile_id column, how many of its rows name no profile.
ORPHAN_ROWS = " UNION ALL ".join(
    f"SELECT '{table}', count(*) FROM {table} t "  # noqa: S608 (constant names)
    "WHERE NOT EXISTS (SELECT 1 FROM profiles p WHERE p.id = t.profile_id)"
    for table in (
        "identities",
        "attributes",
        "consents",
        "retired_identities",
        "attribute_alternatives",
    )
)


def orphans(rows: list[tuple[str, int]]) -> dict[str, int]:
    return {table: count for table, count in rows if count}


class StoreFactory(Protocol):
    def __call__(self, profile: ProfileSettings, *, name: str = "profiles") -> ProfileStore:
        """The store ``name`` (a new empty one the first time), migrated."""


SQLITE = pytest.param("sqlite", marks=pytest.mark.unit)
POSTGRES = pytest.param("postgres", marks=pytest.mark.integration)
HTTP = pytest.param("http", marks=pytest.mark.integration)


@pytest.fixture(params=[SQLITE, POSTGRES, HTTP])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens (and migrates) the store with the given profile rules; reopening keeps data."""
    yield from _stores(str(request.param), request, tmp_path)


@pytest.fixture(params=[SQLITE, POSTGRES])
def open_sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """``open_store`` for the stores that apply the profile model themselves (SQL)."""
    yield from _stores(str(request.param), request, tmp_path)


def _stores(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    opened: list[ProfileStore] = []
    servers: dict[str, str] = {}
    with ExitStack() as stack:

        def factory(profile: ProfileSettings, *, name: str = "profiles") -> ProfileStore:
            store: ProfileStore
            if kind == "sqlite":
                store = SqliteProfileStore(tmp_path / f"{name}.db", profile=profile)
            elif kind == "postgres":
                if name not in servers:
                    server_dsn = request.getfixturevalue("postgres_dsn")
                    servers[name] = fresh_database(server_dsn, f"t_{os.urandom(6).hex()}")
                settings = PostgresStoreSettings(kind="postgres", dsn=servers[name])
                # A batch written in parts of one update: every batch of several
                # updates then goes through the parts and, for a merge of profiles
                # loaded in part, their undoing.
                store = PostgresProfileStore(settings, profile=profile, write_every=1)
            else:
                if name not in servers:
                    fake = cdp.server(cdp.FakeCdp(profile))
                    servers[name] = stack.enter_context(ServerThread(fake)).url
                os.environ["CRMSYNC_TEST_CDP_TOKEN"] = cdp.TOKEN
                settings_http = HttpStoreSettings.model_validate(
                    {
                        "kind": "http",
                        "url": servers[name],
                        "token": {"env": "CRMSYNC_TEST_CDP_TOKEN"},
                        "batch_size": 3,
                    }
                )
                store = HttpProfileStore(settings_http)
            store.migrate()
            opened.append(store)
            return store

        yield factory
        for store in opened:
            store.close()  # closing twice is harmless for every store
        if kind == "postgres":
            for dsn in servers.values():
                with psycopg.connect(dsn) as conn:
                    assert orphans(conn.execute(ORPHAN_ROWS).fetchall()) == {}
        elif kind == "sqlite":
            for path in tmp_path.glob("*.db"):
                with sqlite3.connect(path) as db:
                    assert orphans(db.execute(ORPHAN_ROWS).fetchall()) == {}
