"""Errors of the real SQL stores, classified by what the database says.

PostgreSQL: an identity too long for the identities index (SQLSTATE 54000, a program
limit raised as psycopg's OperationalError, like a lost connection) refuses that
update, and the rest of its batch is stored; a lost connection stays transient.
SQLite: an error of one update's write refuses that update, whatever its exception
type; a file locked by another writer is transient.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import string
from pathlib import Path

import psycopg
import pytest

from services.core.config import PostgresStoreSettings
from services.core.mapping_settings import ProfileSettings
from services.writer.stores import sqlite as sqlite_store
from services.writer.stores.base import TransientStoreError
from services.writer.stores.postgres import WRITE_EVERY, PostgresProfileStore
from services.writer.stores.sqlite import SqliteProfileStore
from tests.stores.changes import TOPIC, apply, profile, update, values
from tests.support.postgres import fresh_database

# Random letters and digits do not compress: the index row cannot shrink below
# btree's limit of about 2,704 bytes (a repeated character would compress to a few).
LONG_RECORD_ID = "".join(
    secrets.choice(string.ascii_letters + string.digits) for _ in range(10_000)
)


def _postgres(
    request: pytest.FixtureRequest, *, write_every: int
) -> tuple[PostgresProfileStore, str]:
    dsn = fresh_database(request.getfixturevalue("postgres_dsn"), f"t_{os.urandom(6).hex()}")
    store = PostgresProfileStore(
        PostgresStoreSettings(kind="postgres", dsn=dsn),
        profile=ProfileSettings(),
        write_every=write_every,
    )
    store.migrate()
    request.addfinalizer(store.close)
    return store, dsn


@pytest.mark.integration
@pytest.mark.parametrize("write_every", [WRITE_EVERY, 1], ids=["one_part", "in_parts"])
def test_an_identity_too_long_for_the_index_is_rejected_and_the_batch_goes_on(
    request: pytest.FixtureRequest, write_every: int
) -> None:
    store, _dsn = _postgres(request, write_every=write_every)
    report = apply(
        store,
        [
            update("hubspot", "1", t=1, email="ada@example.com", attributes={"city": "Paris"}),
            update("hubspot", LONG_RECORD_ID, t=1, attributes={"city": "Lyon"}),
            update("hubspot", "2", t=1, attributes={"city": "Oslo"}),
            update("hubspot", "1", t=2, email="ada@example.com", attributes={"score": 7}),
        ],
    )
    assert [rejection.index for rejection in report.rejections] == [1]
    reason = report.rejections[0].reason
    assert reason.startswith("store refused the update: writing identities: index row ")
    assert reason.endswith("(SQLSTATE 54000)")
    assert profile(store, "crm", f"hubspot:{LONG_RECORD_ID}") is None
    assert values(profile(store, "email", "ada@example.com")) == {"city": "Paris", "score": 7}
    assert values(profile(store, "crm", "hubspot:2")) == {"city": "Oslo"}
    assert store.stored_offsets(TOPIC) != {}, "the batch's position was not stored"


@pytest.mark.integration
def test_a_lost_postgres_connection_is_transient_and_the_batch_applies_after(
    request: pytest.FixtureRequest,
) -> None:
    store, dsn = _postgres(request, write_every=WRITE_EVERY)
    apply(store, [update("hubspot", "1", t=1, attributes={"city": "Paris"})])
    with psycopg.connect(dsn, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'crmsync' AND datname = current_database()"
        ).fetchall()
    assert ended == [(True,)]
    batch = [update("hubspot", "1", t=2, attributes={"city": "Lyon"})]
    with pytest.raises(TransientStoreError):
        apply(store, batch)
    apply(store, batch)
    assert values(profile(store, "crm", "hubspot:1")) == {"city": "Lyon"}


@pytest.mark.unit
def test_a_sqlite_error_of_one_write_is_rejected_and_the_batch_goes_on(tmp_path: Path) -> None:
    """SQLITE_ERROR (an OperationalError, like "database is locked") raised by one
    update's write, here by a trigger the store's operator added."""
    path = tmp_path / "profiles.db"
    store = SqliteProfileStore(path, profile=ProfileSettings())
    store.migrate()
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER malformed BEFORE INSERT ON attributes "
            """WHEN NEW.value = '"forbidden"' BEGIN SELECT json('{not json'); END"""
        )
    try:
        report = apply(
            store,
            [
                update("hubspot", "1", t=1, attributes={"city": "Paris"}),
                update("hubspot", "2", t=1, attributes={"city": "forbidden"}),
                update("hubspot", "3", t=1, attributes={"city": "Oslo"}),
            ],
        )
        assert [rejection.index for rejection in report.rejections] == [1]
        assert report.rejections[0].reason == (
            "store refused the update: malformed JSON (SQLITE_ERROR)"
        )
        assert profile(store, "crm", "hubspot:2") is None
        assert values(profile(store, "crm", "hubspot:3")) == {"city": "Oslo"}
    finally:
        store.close()


@pytest.mark.unit
def test_a_locked_sqlite_file_is_transient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_S", 0.05)
    path = tmp_path / "profiles.db"
    store = SqliteProfileStore(path, profile=ProfileSettings())
    store.migrate()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TransientStoreError, match="database is locked"):
            apply(store, [update("hubspot", "1", t=1)])
        assert store.stored_offsets(TOPIC) == {}, "WAL readers wait for no writer"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    apply(store, [update("hubspot", "1", t=1, attributes={"city": "Paris"})])
    assert values(profile(store, "crm", "hubspot:1")) == {"city": "Paris"}
    store.close()
