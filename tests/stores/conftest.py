"""The store under test: every test in tests/stores runs once per store kind.

SQLite needs nothing running; PostgreSQL and the CDP over HTTP are real servers the
suite starts (see tests/support/postgres.py and tests/fakes/cdp.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from services.core.mapping import ProfileSettings
from services.writer.stores.base import ProfileStore
from services.writer.stores.sqlite import SqliteProfileStore


class StoreFactory(Protocol):
    def __call__(self, profile: ProfileSettings, *, name: str = "profiles") -> ProfileStore:
        """The store ``name`` (a new empty one the first time), migrated."""


@pytest.fixture(params=[pytest.param("sqlite", marks=pytest.mark.unit)])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens (and migrates) the store with the given profile rules; reopening keeps data."""
    opened: list[ProfileStore] = []

    def factory(profile: ProfileSettings, *, name: str = "profiles") -> ProfileStore:
        store: ProfileStore = SqliteProfileStore(tmp_path / f"{name}.db", profile=profile)
        store.migrate()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()  # closing twice is harmless for every store
