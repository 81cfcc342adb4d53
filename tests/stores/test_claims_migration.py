"""Migration 5 on a store that holds profiles: every record then asserts its own id and
every other identity of its profile, so nothing stops matching until a record's
newer change says otherwise."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import psycopg
import pytest

from services.core.config import PostgresStoreSettings
from services.core.mapping_settings import ProfileSettings
from services.writer.stores import postgres, sqlite
from services.writer.stores.base import ProfileStore
from services.writer.stores.postgres import PostgresProfileStore
from services.writer.stores.sqlite import SqliteProfileStore
from tests.stores.changes import apply, profile, update
from tests.support.postgres import fresh_database

# What a store of version 4 held: profile 1 of two records sharing a@x.io, profile 2.
AT_VERSION_4 = (
    "INSERT INTO profiles (id, created_at, updated_at) VALUES (1, 0, 0), (2, 0, 0)",
    "INSERT INTO identities (kind, value, profile_id) VALUES "
    "('email', 'a@x.io', 1), ('crm', 'hubspot:1', 1), ('crm', 'sfdc:A', 1), "
    "('email', 'z@x.io', 2), ('crm', 'sfdc:B', 2)",
)


def _open(kind: str, where: str) -> ProfileStore:
    store: ProfileStore
    if kind == "sqlite":
        store = SqliteProfileStore(Path(where), profile=ProfileSettings())
    else:
        settings = PostgresStoreSettings(kind="postgres", dsn=where)
        store = PostgresProfileStore(settings, profile=ProfileSettings())
    store.migrate()
    return store


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("sqlite", marks=pytest.mark.unit),
        pytest.param("postgres", marks=pytest.mark.integration),
    ],
)
def test_records_assert_what_their_profiles_held_before_migration_5(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "sqlite":
        where = str(tmp_path / "profiles.db")
    else:
        where = fresh_database(request.getfixturevalue("postgres_dsn"), f"t_{os.urandom(6).hex()}")
    module = sqlite if kind == "sqlite" else postgres
    with monkeypatch.context() as at_version_4:
        at_version_4.setattr(module, "MIGRATIONS", module.MIGRATIONS[:4])
        _open(kind, where).close()
    if kind == "sqlite":
        with sqlite3.connect(where) as db:
            for statement in AT_VERSION_4:
                db.execute(statement)
    else:
        with psycopg.connect(where) as conn:
            for statement in AT_VERSION_4:
                conn.execute(statement)
    store = _open(kind, where)
    try:
        apply(store, [update("hubspot", "1", t=2, email="b@x.io")])
        # sfdc:A asserted a@x.io before the migration: it still matches.
        found = profile(store, "email", "a@x.io")
        assert found is not None
        assert {i.value for i in found.identities if i.kind == "email"} == {"a@x.io", "b@x.io"}
        apply(store, [update("sfdc", "A", t=2, email="c@x.io")])
        assert profile(store, "email", "a@x.io") is None
        assert profile(store, "email", "z@x.io") is not None
        # A record's unchanged set, spelt by the migration, is still the same set.
        apply(store, [update("sfdc", "B", t=2, email="z@x.io", attributes={"n": 1})])
        assert profile(store, "crm", "sfdc:B") == profile(store, "email", "z@x.io")
    finally:
        store.close()
