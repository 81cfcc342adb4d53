"""The PostgreSQL store's migrations, applied to a store that already holds profiles."""

from __future__ import annotations

import os

import psycopg
import pytest

from services.core.config import PostgresStoreSettings
from services.core.mapping_settings import ProfileSettings
from services.writer.stores import postgres
from services.writer.stores.postgres import PostgresProfileStore
from services.writer.stores.postgres_schema import MIGRATIONS
from tests.stores.changes import apply, profile, update, values
from tests.support.postgres import fresh_database

pytestmark = pytest.mark.integration


def _foreign_keys(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT conname FROM pg_constraint WHERE contype = 'f'").fetchall()
    return {str(name) for (name,) in rows}


def _open(dsn: str) -> PostgresProfileStore:
    store = PostgresProfileStore(
        PostgresStoreSettings(kind="postgres", dsn=dsn), profile=ProfileSettings()
    )
    store.migrate()
    return store


def test_a_store_at_version_1_keeps_its_profiles_and_loses_its_foreign_keys(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = fresh_database(postgres_dsn, f"t_{os.urandom(6).hex()}")
    with monkeypatch.context() as at_version_1:
        at_version_1.setattr(postgres, "MIGRATIONS", MIGRATIONS[:1])
        # The code of that version wrote no outbox (migration 3) and nothing of 5.
        at_version_1.setattr(postgres._Session, "_outbox", lambda _self, _changes: None)
        at_version_1.setattr(postgres._Session, "_claims", lambda _self, _changes: None)
        at_version_1.setattr(postgres._Session, "claims", lambda _self, _records: {})
        at_version_1.setattr(postgres._Session, "separations", lambda _self, _ids: {})
        at_version_1.setattr(postgres._Session, "_splits", lambda _self, _changes: None)
        store = _open(dsn)
        try:
            apply(store, [update("hubspot", "1", t=1, email="a@example.com", attributes={"x": 1})])
        finally:
            store.close()
    assert _foreign_keys(dsn) == {
        "identities_profile_id_fkey",
        "attributes_profile_id_fkey",
        "consents_profile_id_fkey",
    }

    store = _open(dsn)
    try:
        assert _foreign_keys(dsn) == set()
        assert values(profile(store, "email", "a@example.com")) == {"x": 1}
        apply(store, [update("hubspot", "1", t=2, email="a@example.com", attributes={"x": 2})])
        assert values(profile(store, "email", "a@example.com")) == {"x": 2}
        store.migrate()  # applied once: nothing left to do
    finally:
        store.close()
    with psycopg.connect(dsn) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
    assert sorted(versions) == [version for version, _script in MIGRATIONS]
