"""The PostgreSQL store across a lost connection: transient, then whole again."""

from __future__ import annotations

import os

import psycopg
import pytest

from services.core.config import PostgresStoreSettings
from services.core.mapping_settings import ProfileSettings
from services.writer.stores.base import TransientStoreError
from services.writer.stores.postgres import PostgresProfileStore
from tests.support.postgres import fresh_database

pytestmark = pytest.mark.integration


def _terminate_backends(dsn: str) -> int:
    """Ends every other session of ``dsn``'s database, as a server restart would."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_connection_lost_before_migrating_is_transient_then_migrating_works(
    postgres_dsn: str,
) -> None:
    dsn = fresh_database(postgres_dsn, f"t_{os.urandom(6).hex()}")
    store = PostgresProfileStore(PostgresStoreSettings(kind="postgres", dsn=dsn))
    try:
        store.migrate()
        assert _terminate_backends(dsn) == 1
        # The store's connection looks open until it is used: migrating on it must
        # say "try again", not crash the writer starting up.
        with pytest.raises(TransientStoreError):
            store.migrate()
        store.migrate()  # reconnects
        assert store.stored_offsets("profile-updates") == {}
    finally:
        store.close()


def test_a_connection_lost_between_batches_is_transient(postgres_dsn: str) -> None:
    dsn = fresh_database(postgres_dsn, f"t_{os.urandom(6).hex()}")
    store = PostgresProfileStore(
        PostgresStoreSettings(kind="postgres", dsn=dsn), profile=ProfileSettings()
    )
    try:
        store.migrate()
        assert _terminate_backends(dsn) == 1
        with pytest.raises(TransientStoreError):
            store.stored_offsets("profile-updates")
        assert store.stored_offsets("profile-updates") == {}
    finally:
        store.close()
