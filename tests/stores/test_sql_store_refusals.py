"""A write the SQL stores refuse although ``update_problem`` let it through.

Such a refusal (here a constraint the store's operator added; in life, any constraint
or data error the checks did not foresee) sends the batch round again an update at a
time: the refused update is rejected with the store's reason, and every other one is
applied as it would have been, including several updates of one profile.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from services.core.config import PostgresStoreSettings
from services.core.mapping_settings import ProfileSettings
from services.writer.stores.base import ProfileStore
from services.writer.stores.postgres import WRITE_EVERY, PostgresProfileStore
from services.writer.stores.sqlite import SqliteProfileStore
from tests.stores.changes import apply, profile, update, values
from tests.support.postgres import fresh_database

Refusing = Callable[[], ProfileStore]


def _postgres(request: pytest.FixtureRequest, *, write_every: int) -> ProfileStore:
    dsn = fresh_database(request.getfixturevalue("postgres_dsn"), f"t_{os.urandom(6).hex()}")
    store = PostgresProfileStore(
        PostgresStoreSettings(kind="postgres", dsn=dsn),
        profile=ProfileSettings(),
        write_every=write_every,
    )
    store.migrate()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE attributes ADD CONSTRAINT no_forbidden "
            """CHECK (value IS NULL OR value <> '"forbidden"'::jsonb)"""
        )
    return store


def _sqlite(path: Path) -> ProfileStore:
    store = SqliteProfileStore(path, profile=ProfileSettings())
    store.migrate()
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER no_forbidden BEFORE INSERT ON attributes "
            """WHEN NEW.value = '"forbidden"' BEGIN SELECT RAISE(ABORT, 'no_forbidden'); END"""
        )
    return store


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.unit),
        pytest.param("postgres", marks=pytest.mark.integration),
        # Written in parts of one update: the refusal is told while later parts go out.
        pytest.param("postgres_in_parts", marks=pytest.mark.integration),
    ]
)
def refusing_store(request: pytest.FixtureRequest, tmp_path: Path) -> Refusing:
    """A store that refuses the attribute value "forbidden" at write time."""
    opened: list[ProfileStore] = []

    def factory() -> ProfileStore:
        if request.param == "sqlite":
            store = _sqlite(tmp_path / "profiles.db")
        else:
            parts = request.param == "postgres_in_parts"
            store = _postgres(request, write_every=1 if parts else WRITE_EVERY)
        opened.append(store)
        return store

    request.addfinalizer(lambda: [store.close() for store in opened])
    return factory


def test_a_refused_write_is_rejected_and_the_batch_goes_on(refusing_store: Refusing) -> None:
    store = refusing_store()
    report = apply(
        store,
        [
            update("hubspot", "1", t=1, email="ada@example.com", attributes={"city": "Paris"}),
            update("hubspot", "2", t=1, attributes={"city": "forbidden"}),
            # The same profile again: redone alone, each update writes its own rows.
            update("hubspot", "1", t=2, email="ada@example.com", attributes={"city": "London"}),
            update("hubspot", "1", t=3, email="ada@example.com", attributes={"score": 7}),
        ],
    )
    assert [rejection.index for rejection in report.rejections] == [1]
    assert "no_forbidden" in report.rejections[0].reason
    assert profile(store, "crm", "hubspot:2") is None
    assert values(profile(store, "email", "ada@example.com")) == {"city": "London", "score": 7}
