"""Profile stores behind one interface; ``open_store`` builds the configured one."""

from __future__ import annotations

from services.core.config import SqliteStoreSettings, StoreSettings
from services.writer.stores.base import ProfileStore
from services.writer.stores.sqlite import SqliteProfileStore


def open_store(settings: StoreSettings, *, read_only: bool = False) -> ProfileStore:
    if isinstance(settings, SqliteStoreSettings):
        return SqliteProfileStore(settings.path, read_only=read_only)
    raise ValueError(f"no store of kind {settings.kind!r}")
