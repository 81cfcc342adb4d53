"""Profile stores behind one interface; ``open_store`` builds the configured one."""

from __future__ import annotations

from services.core.config import SqliteStoreSettings, StoreSettings
from services.core.mapping import ProfileSettings
from services.writer.stores.base import ProfileStore
from services.writer.stores.sqlite import SqliteProfileStore


def open_store(
    settings: StoreSettings, *, profile: ProfileSettings | None = None, read_only: bool = False
) -> ProfileStore:
    """The configured store; ``profile`` (conflict and identity rules) matters for writes."""
    if isinstance(settings, SqliteStoreSettings):
        return SqliteProfileStore(settings.path, profile=profile, read_only=read_only)
    raise ValueError(f"no store of kind {settings.kind!r}")
