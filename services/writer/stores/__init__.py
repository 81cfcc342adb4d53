"""Profile stores behind one interface; ``open_store`` builds the configured one."""

from __future__ import annotations

from services.core.config import (
    HttpStoreSettings,
    PostgresStoreSettings,
    SqliteStoreSettings,
    StoreSettings,
)
from services.core.mapping_settings import ProfileSettings
from services.writer.stores.base import ProfileStore
from services.writer.stores.http import HttpProfileStore
from services.writer.stores.outbox import ChangeEncoder
from services.writer.stores.postgres import PostgresProfileStore
from services.writer.stores.sqlite import SqliteProfileStore


def open_store(
    settings: StoreSettings,
    *,
    profile: ProfileSettings | None = None,
    read_only: bool = False,
    encode_change: ChangeEncoder | None = None,
) -> ProfileStore:
    """The configured store; ``profile`` (conflict and identity rules) and
    ``encode_change`` (the outbox's ProfileChanged codec) matter for writes."""
    if isinstance(settings, SqliteStoreSettings):
        return SqliteProfileStore(
            settings.path, profile=profile, read_only=read_only, encode_change=encode_change
        )
    if isinstance(settings, PostgresStoreSettings):
        return PostgresProfileStore(
            settings, profile=profile, read_only=read_only, encode_change=encode_change
        )
    if isinstance(settings, HttpStoreSettings):
        # The CDP applies the conflict and identity rules itself (docs/cdp-http-api.md).
        return HttpProfileStore(settings)
    raise ValueError(f"no store of kind {settings.kind!r}")


SqlStore = SqliteProfileStore | PostgresProfileStore
"""The stores that keep an outbox and read profiles by id (pushes, previews, filters)."""


def open_sql_store(settings: StoreSettings, *, read_only: bool = False) -> SqlStore | None:
    """The configured store if it is a SQL one; None for the HTTP store."""
    store = open_store(settings, read_only=read_only)
    if isinstance(store, SqliteProfileStore | PostgresProfileStore):
        return store
    store.close()
    return None
