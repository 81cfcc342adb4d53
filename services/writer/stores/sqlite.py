"""The embedded SQLite profile store: one file, WAL mode, one writer connection.

Each batch is one ``BEGIN IMMEDIATE`` transaction holding the profile changes and
the Kafka positions they came from. ``synchronous=NORMAL`` is safe here: a power cut
can lose the newest transactions but never splits data from its positions, so the
writer simply consumes those messages again.

Applying one update:

1. Find the profile by the update's identities, match key first; create one if none
   is known.
2. Attach identities the profile does not have yet (an identity already owned by
   another profile is left to the identity rules).
3. For a DELETE, detach the source record's CRM identity; for an UPSERT, write each
   attribute only if the update's version is newer than the stored one.
4. Touch the profile's ``updated_at`` when anything changed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Final

from services.core.contracts import Identity, ProfileUpdate, UpdateOperation
from services.core.versions import from_micros, to_micros
from services.writer.stores.base import (
    BeforeCommit,
    StoredAttribute,
    StoredProfile,
    StoreRejection,
    TopicPartitionKey,
    TransientStoreError,
)
from services.writer.stores.sqlite_schema import MIGRATIONS

BUSY_TIMEOUT_S: Final = 10.0

UPSERT_ATTRIBUTE: Final = """
INSERT INTO attributes (profile_id, name, value, source, source_record_id,
                        source_modified_at, sequence, mapping_version, written_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (profile_id, name) DO UPDATE SET
    value = excluded.value,
    source = excluded.source,
    source_record_id = excluded.source_record_id,
    source_modified_at = excluded.source_modified_at,
    sequence = excluded.sequence,
    mapping_version = excluded.mapping_version,
    written_at = excluded.written_at
WHERE (excluded.source_modified_at, excluded.sequence)
    > (attributes.source_modified_at, attributes.sequence)
"""

UPSERT_OFFSET: Final = """
INSERT INTO consumer_offsets (topic, partition, next_offset) VALUES (?, ?, ?)
ON CONFLICT (topic, partition) DO UPDATE SET
    next_offset = max(next_offset, excluded.next_offset)
"""


class PoisonUpdate(Exception):
    pass


class SqliteProfileStore:
    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self._path = path
        if read_only:
            uri = f"file:{path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")

    def migrate(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            applied = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
            for version, script in MIGRATIONS:
                if version in applied:
                    continue
                for statement in _statements(script):
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def ping(self) -> None:
        try:
            self._db.execute("SELECT 1 FROM schema_migrations LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise TransientStoreError(f"SQLite store {self._path}: {exc}") from exc

    def stored_offsets(self, topic: str) -> dict[int, int]:
        rows = self._db.execute(
            "SELECT partition, next_offset FROM consumer_offsets WHERE topic = ?", (topic,)
        )
        return {int(partition): int(offset) for partition, offset in rows}

    def apply_batch(
        self,
        *,
        updates: Sequence[ProfileUpdate],
        next_offsets: Mapping[TopicPartitionKey, int],
        written_at: datetime,
        before_commit: BeforeCommit,
    ) -> Sequence[StoreRejection]:
        now = to_micros(written_at)
        try:
            try:
                rejections = self._transaction(updates, next_offsets, now, isolate=False)
            except PoisonUpdate:
                # Rare: redo the batch with a savepoint per update to find the culprits.
                rejections = self._transaction(updates, next_offsets, now, isolate=True)
            before_commit(rejections)
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._rollback()
            raise TransientStoreError(f"SQLite store {self._path}: {exc}") from exc
        except BaseException:
            self._rollback()
            raise
        return rejections

    def _transaction(
        self,
        updates: Sequence[ProfileUpdate],
        next_offsets: Mapping[TopicPartitionKey, int],
        now: int,
        *,
        isolate: bool,
    ) -> list[StoreRejection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        rejections: list[StoreRejection] = []
        for index, update in enumerate(updates):
            if not isolate:
                try:
                    self._apply(update, now)
                except (sqlite3.IntegrityError, ValueError, TypeError) as exc:
                    self._rollback()
                    raise PoisonUpdate(str(exc)) from exc
                continue
            db.execute("SAVEPOINT one_update")
            try:
                self._apply(update, now)
            except (sqlite3.IntegrityError, ValueError, TypeError) as exc:
                db.execute("ROLLBACK TO one_update")
                rejections.append(StoreRejection(index, f"store refused the update: {exc}"))
            db.execute("RELEASE one_update")
        db.executemany(
            UPSERT_OFFSET,
            [(topic, partition, offset) for (topic, partition), offset in next_offsets.items()],
        )
        return rejections

    def _apply(self, update: ProfileUpdate, now: int) -> None:
        db = self._db
        # Step 1
        profile_id = self._resolve_profile(update, now)
        # Step 2
        changed = 0
        for identity in update.identities:
            cursor = db.execute(
                "INSERT OR IGNORE INTO identities (kind, value, profile_id) VALUES (?, ?, ?)",
                (identity.kind, identity.value, profile_id),
            )
            changed += cursor.rowcount
        # Step 3
        if update.operation is UpdateOperation.DELETE:
            cursor = db.execute(
                "DELETE FROM identities WHERE kind = 'crm' AND value = ? AND profile_id = ?",
                (f"{update.source}:{update.record_id}", profile_id),
            )
            changed += cursor.rowcount
        else:
            modified = to_micros(update.source_modified_at)
            for name, value in update.attributes.items():
                cursor = db.execute(
                    UPSERT_ATTRIBUTE,
                    (
                        profile_id,
                        name,
                        json.dumps(value, allow_nan=False),
                        update.source,
                        update.record_id,
                        modified,
                        update.sequence,
                        update.mapping_version,
                        now,
                    ),
                )
                changed += cursor.rowcount
        # Step 4
        if changed:
            db.execute("UPDATE profiles SET updated_at = ? WHERE id = ?", (now, profile_id))

    def _resolve_profile(self, update: ProfileUpdate, now: int) -> int:
        kind, _, value = update.match_key.partition(":")
        ordered = [Identity(kind, value), *update.identities]
        for identity in ordered:
            row = self._db.execute(
                "SELECT profile_id FROM identities WHERE kind = ? AND value = ?",
                (identity.kind, identity.value),
            ).fetchone()
            if row is not None:
                return int(row[0])
        cursor = self._db.execute(
            "INSERT INTO profiles (created_at, updated_at) VALUES (?, ?)", (now, now)
        )
        if cursor.lastrowid is None:
            raise sqlite3.IntegrityError("profile insert returned no id")
        return cursor.lastrowid

    def find_profile(self, identity: Identity) -> StoredProfile | None:
        db = self._db
        row = db.execute(
            "SELECT p.id, p.created_at, p.updated_at FROM identities i "
            "JOIN profiles p ON p.id = i.profile_id WHERE i.kind = ? AND i.value = ?",
            (identity.kind, identity.value),
        ).fetchone()
        if row is None:
            return None
        profile_id = int(row[0])
        identities = tuple(
            Identity(kind, value)
            for kind, value in db.execute(
                "SELECT kind, value FROM identities WHERE profile_id = ? ORDER BY kind, value",
                (profile_id,),
            )
        )
        attributes = {
            name: StoredAttribute(
                value=json.loads(value),
                source=source,
                source_modified_at=from_micros(modified),
                mapping_version=mapping_version,
                written_at=from_micros(written),
            )
            for name, value, source, modified, mapping_version, written in db.execute(
                "SELECT name, value, source, source_modified_at, mapping_version, written_at "
                "FROM attributes WHERE profile_id = ? ORDER BY name",
                (profile_id,),
            )
        }
        return StoredProfile(
            profile_id=profile_id,
            identities=identities,
            attributes=attributes,
            created_at=from_micros(row[1]),
            updated_at=from_micros(row[2]),
        )

    def profiles_by_mapping_version(self) -> dict[str, dict[int, int]]:
        counts: dict[str, dict[int, int]] = {}
        for source, version, profiles in self._db.execute(
            "SELECT source, mapping_version, COUNT(DISTINCT profile_id) FROM attributes "
            "GROUP BY source, mapping_version"
        ):
            counts.setdefault(source, {})[int(version)] = int(profiles)
        return counts

    def close(self) -> None:
        self._db.close()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]
