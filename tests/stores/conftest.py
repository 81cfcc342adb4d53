"""The store under test: every test in tests/stores runs once per store kind.

SQLite needs nothing running; PostgreSQL is a real server the suite starts
(tests/support/postgres.py) with a fresh database per test; the HTTP store talks to
a fake CDP that follows docs/cdp-http-api.md (tests/fakes/cdp.py), served on
loopback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

import pytest

from services.core.config import HttpStoreSettings, PostgresStoreSettings
from services.core.mapping import ProfileSettings
from services.writer.stores.base import ProfileStore
from services.writer.stores.http import HttpProfileStore
from services.writer.stores.postgres import PostgresProfileStore
from services.writer.stores.sqlite import SqliteProfileStore
from tests.fakes import cdp
from tests.fakes.server import ServerThread
from tests.support.postgres import fresh_database


class StoreFactory(Protocol):
    def __call__(self, profile: ProfileSettings, *, name: str = "profiles") -> ProfileStore:
        """The store ``name`` (a new empty one the first time), migrated."""


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.unit),
        pytest.param("postgres", marks=pytest.mark.integration),
        pytest.param("http", marks=pytest.mark.integration),
    ]
)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens (and migrates) the store with the given profile rules; reopening keeps data."""
    kind = str(request.param)
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
                store = PostgresProfileStore(settings, profile=profile)
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
