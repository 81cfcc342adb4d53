"""The embedded SQLite profile store: one file, WAL mode, one writer connection.

Each batch is one ``BEGIN IMMEDIATE`` transaction holding the profile changes and
the Kafka positions they came from. ``synchronous=NORMAL`` is safe here: a power cut
can lose the newest transactions but never splits data from its positions, so the
writer simply consumes those messages again.

The batch's decisions are the ProfileBook's (services/writer/stores/batch.py): this
module loads the profiles a batch touches through a temporary table of its
identities and writes back the rows the book changed.

Errors are classified by SQLite's result code (services/writer/stores/failures.py):
a locked, full or unreadable file is transient (the writer retries the batch); any
other error of an update's writes refuses that update.

One store in one module: its schema, migrations and the batch it applies in one
transaction are read together (the PostgreSQL store mirrors it); hence over 400 lines.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import orjson

from services.core.contracts import Identity, ProfileUpdate
from services.core.mapping_settings import ProfileSettings
from services.core.versions import to_micros
from services.writer.profiles import (
    BatchWrites,
    BookChanges,
    ConflictRules,
    Profile,
    identity_hash,
)
from services.writer.stores.base import (
    BatchReport,
    BeforeCommit,
    OutboxEntry,
    StoredProfile,
    TopicPartitionKey,
    TransientStoreError,
    script_statements,
    stored_profile,
)
from services.writer.stores.batch import BookSettings, Loaded, StorePoison, apply_updates
from services.writer.stores.failures import sqlite_is_transient, sqlite_reason
from services.writer.stores.outbox import ChangeEncoder, pack, standalone_encoder
from services.writer.stores.rows import (
    ATTRIBUTE_COLUMNS,
    CONSENT_COLUMNS,
    assemble_profiles,
    attribute_row,
    consent_row,
    identity_rows,
)
from services.writer.stores.snapshots import PushProgress, snapshot_messages
from services.writer.stores.sqlite_schema import MIGRATIONS

BUSY_TIMEOUT_S: Final = 10.0

UPSERT_OFFSET: Final = """
INSERT INTO consumer_offsets (topic, partition, next_offset) VALUES (?, ?, ?)
ON CONFLICT (topic, partition) DO UPDATE SET
    next_offset = max(next_offset, excluded.next_offset)
"""
UPSERT_PROFILE: Final = """
INSERT INTO profiles (id, created_at, updated_at) VALUES (?, ?, ?)
ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at, updated_at = excluded.updated_at
"""
UPSERT_IDENTITY: Final = """
INSERT INTO identities (kind, value, profile_id) VALUES (?, ?, ?)
ON CONFLICT (kind, value) DO UPDATE SET profile_id = excluded.profile_id
"""
UPSERT_ATTRIBUTE: Final = """
INSERT INTO attributes (profile_id, name, value, source, source_record_id,
                        source_modified_at, sequence, mapping_version, written_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (profile_id, name) DO UPDATE SET
    value = excluded.value, source = excluded.source,
    source_record_id = excluded.source_record_id,
    source_modified_at = excluded.source_modified_at, sequence = excluded.sequence,
    mapping_version = excluded.mapping_version, written_at = excluded.written_at
"""
UPSERT_CONSENT: Final = """
INSERT INTO consents (profile_id, subscription, channel, status, changed_at, source, written_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (profile_id, subscription, channel) DO UPDATE SET
    status = excluded.status, changed_at = excluded.changed_at,
    source = excluded.source, written_at = excluded.written_at
"""
UPSERT_DETACHED: Final = """
INSERT INTO detached_identities (identity_hash, source_modified_at, sequence) VALUES (?, ?, ?)
ON CONFLICT (identity_hash) DO UPDATE SET
    source_modified_at = excluded.source_modified_at, sequence = excluded.sequence
"""
# Ids of merged and erased profiles are never handed out again.
HIGHEST_PROFILE_ID: Final = """
SELECT max((SELECT coalesce(max(id), 0) FROM profiles),
           (SELECT coalesce(max(merged_id), 0) FROM profile_merges),
           (SELECT coalesce(max(profile_id), 0) FROM erasures))
"""
REMOVE_PROFILE_ROWS: Final = (
    "DELETE FROM attributes WHERE profile_id = ?",
    "DELETE FROM consents WHERE profile_id = ?",
    "DELETE FROM identities WHERE profile_id = ?",
)
PUSH_COLUMNS: Final = (
    "destination, run_id, after_profile_id, pushed, total, started_at, finished_at, mapping_version"
)
SAVE_PUSH: Final = """
INSERT OR REPLACE INTO destination_pushes
    (destination, run_id, after_profile_id, pushed, total, started_at, finished_at,
     mapping_version)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
UPSERT_TOMBSTONE: Final = """
INSERT INTO erased_identities (identity_hash, erased_at) VALUES (?, ?)
ON CONFLICT (identity_hash) DO UPDATE SET erased_at = excluded.erased_at
"""


class SqliteProfileStore:
    keeps_offsets = True

    def __init__(
        self,
        path: Path,
        *,
        profile: ProfileSettings | None = None,
        read_only: bool = False,
        encode_change: ChangeEncoder | None = None,
    ) -> None:
        """``encode_change`` encodes the outbox's ProfileChanged records (the writer's
        codec; a standalone one by default)."""
        self._path = path
        profile = profile or ProfileSettings()
        self._book = BookSettings(
            rules=ConflictRules(profile),
            on_identity_conflict=profile.on_identity_conflict,
            encode_change=encode_change,
        )
        if read_only:
            uri = f"file:{path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def _locked_is_transient(self) -> Iterator[None]:
        """A locked, full or unreadable file inside is a TransientStoreError (any open
        transaction rolled back); any other error goes on as it is."""
        try:
            yield
        except sqlite3.Error as exc:
            if not sqlite_is_transient(exc):
                raise
            self._rollback()
            raise TransientStoreError(f"SQLite store {self._path}: {exc}") from exc

    def migrate(self) -> None:
        with self._locked_is_transient():
            self._migrate()

    def _migrate(self) -> None:
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
                for statement in script_statements(script):
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
        with self._locked_is_transient():
            rows = self._db.execute(
                "SELECT partition, next_offset FROM consumer_offsets WHERE topic = ?", (topic,)
            ).fetchall()
        return {int(partition): int(offset) for partition, offset in rows}

    def apply_batch(
        self,
        *,
        updates: Sequence[ProfileUpdate],
        next_offsets: Mapping[TopicPartitionKey, int],
        written_at: datetime,
        before_commit: BeforeCommit,
    ) -> BatchReport:
        now = to_micros(written_at)
        session = _Session(self._db)
        try:
            with self._locked_is_transient():
                try:
                    report = self._transaction(session, updates, next_offsets, now, isolate=False)
                except StorePoison:
                    # Rare: redo the batch an update at a time to find the culprits.
                    report = self._transaction(session, updates, next_offsets, now, isolate=True)
                before_commit(report)
                self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return report

    def _transaction(
        self,
        session: _Session,
        updates: Sequence[ProfileUpdate],
        next_offsets: Mapping[TopicPartitionKey, int],
        now: int,
        *,
        isolate: bool,
    ) -> BatchReport:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            report = apply_updates(session, updates, settings=self._book, now=now, isolate=isolate)
        except StorePoison:
            self._rollback()
            raise
        self._db.executemany(
            UPSERT_OFFSET,
            [(topic, partition, offset) for (topic, partition), offset in next_offsets.items()],
        )
        return report

    def pending_changes(self, limit: int) -> list[OutboxEntry]:
        # One writer per SQLite file (the file is the writer's own): no relay lock.
        with self._locked_is_transient():
            rows = self._db.execute(
                "SELECT seq, messages FROM profile_outbox ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [OutboxEntry(int(seq), bytes(messages)) for seq, messages in rows]

    def changes_relayed(self, up_to: int) -> None:
        with self._locked_is_transient():
            self._db.execute("DELETE FROM profile_outbox WHERE seq <= ?", (up_to,))

    def find_profile(self, identity: Identity) -> StoredProfile | None:
        db = self._db
        with self._locked_is_transient():
            row = db.execute(
                "SELECT profile_id FROM identities WHERE kind = ? AND value = ?",
                (identity.kind, identity.value),
            ).fetchone()
            if row is None:
                return None
            loaded = _load_profiles(db, [int(row[0])])
        return stored_profile(loaded[0]) if loaded else None

    def all_profiles(self) -> list[StoredProfile]:
        with self._locked_is_transient():
            ids = [int(row[0]) for row in self._db.execute("SELECT id FROM profiles ORDER BY id")]
            loaded = _load_profiles(self._db, ids)
        return [stored_profile(profile) for profile in loaded]

    def profiles_by_id(self, profile_ids: Sequence[int]) -> list[StoredProfile]:
        """The profiles of ``profile_ids`` that exist (merged or erased ones do not)."""
        with self._locked_is_transient():
            loaded = _load_profiles(self._db, profile_ids)
        return [stored_profile(profile) for profile in loaded]

    def profiles_after(self, profile_id: int, limit: int) -> list[StoredProfile]:
        """Up to ``limit`` profiles with ids above ``profile_id``, in id order."""
        with self._locked_is_transient():
            ids = [
                int(row[0])
                for row in self._db.execute(
                    "SELECT id FROM profiles WHERE id > ? ORDER BY id LIMIT ?", (profile_id, limit)
                )
            ]
            loaded = _load_profiles(self._db, ids)
        return [stored_profile(profile) for profile in loaded]

    def profiles_by_mapping_version(self) -> dict[str, dict[int, int]]:
        counts: dict[str, dict[int, int]] = {}
        with self._locked_is_transient():
            rows = self._db.execute(
                "SELECT source, mapping_version, COUNT(DISTINCT profile_id) FROM attributes "
                "WHERE value IS NOT NULL GROUP BY source, mapping_version"
            ).fetchall()
        for source, version, profiles in rows:
            counts.setdefault(source, {})[int(version)] = int(profiles)
        return counts

    # --- a destination's backfill (services/writer/stores/snapshots.py) ---------------

    def push_progress(self, destination: str) -> PushProgress | None:
        with self._locked_is_transient():
            return _push_row(self._db, destination)

    def start_push(
        self, destination: str, *, run_id: str, mapping_version: int, now: datetime
    ) -> PushProgress:
        with self._locked_is_transient():
            total = int(self._db.execute("SELECT count(*) FROM profiles").fetchone()[0])
            progress = PushProgress(
                destination, run_id, 0, 0, total, now, mapping_version=mapping_version
            )
            self._db.execute(SAVE_PUSH, progress.row())
        return progress

    def outbox_rows(self) -> int:
        with self._locked_is_transient():
            return int(self._db.execute("SELECT count(*) FROM profile_outbox").fetchone()[0])

    def push_batch(self, destination: str, *, limit: int, now: datetime) -> PushProgress:
        db = self._db
        try:
            with self._locked_is_transient():
                db.execute("BEGIN IMMEDIATE")
                progress = _push_row(db, destination)
                if progress is None:
                    raise LookupError(f"destination {destination!r} has no push run")
                ids = [
                    int(row[0])
                    for row in db.execute(
                        "SELECT id FROM profiles WHERE id > ? ORDER BY id LIMIT ?",
                        (progress.after_profile_id, limit),
                    )
                ]
                if ids:
                    messages = snapshot_messages(
                        _load_profiles(db, ids),
                        progress=progress,
                        now=now,
                        encode=self._book.encode_change or standalone_encoder(),
                    )
                    db.execute(
                        "INSERT INTO profile_outbox (messages) VALUES (?)", (pack(messages),)
                    )
                progress = progress.advanced(ids, now)
                db.execute(SAVE_PUSH, progress.row())
                db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return progress

    def close(self) -> None:
        self._db.close()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


class _Session:
    """The BookSession of one SQLite transaction."""

    # sqlite3 works in this thread: nothing to gain from writing in parts.
    write_every = 0

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def owners(self, identities: set[Identity]) -> dict[Identity, int]:
        db = self._db
        db.execute("CREATE TEMP TABLE IF NOT EXISTS batch_identities (kind TEXT, value TEXT)")
        db.execute("DELETE FROM batch_identities")
        # An Identity is a (kind, value) tuple: a row as it is.
        db.executemany("INSERT INTO batch_identities VALUES (?, ?)", identities)
        return {
            Identity(kind, value): int(owner)
            for kind, value, owner in db.execute(
                "SELECT i.kind, i.value, i.profile_id FROM batch_identities b "
                "JOIN identities i ON i.kind = b.kind AND i.value = b.value"
            )
        }

    def load(
        self, owners: dict[Identity, int], identities: set[Identity], *, only: BatchWrites | None
    ) -> Loaded:
        profile_ids = sorted(set(owners.values()))
        db = self._db
        tombstones: dict[str, int] = {}
        detached: dict[str, tuple[int, int]] = {}
        if _any_rows(db, "erased_identities") or _any_rows(db, "detached_identities"):
            db.execute("CREATE TEMP TABLE IF NOT EXISTS batch_hashes (identity_hash TEXT)")
            db.execute("DELETE FROM batch_hashes")
            hashes = [(identity_hash(identity),) for identity in identities]
            db.executemany("INSERT INTO batch_hashes VALUES (?)", hashes)
            tombstones = dict(
                db.execute(
                    "SELECT e.identity_hash, e.erased_at FROM batch_hashes b "
                    "JOIN erased_identities e ON e.identity_hash = b.identity_hash"
                ).fetchall()
            )
            detached = {
                key: (int(modified), int(sequence))
                for key, modified, sequence in db.execute(
                    "SELECT d.identity_hash, d.source_modified_at, d.sequence FROM batch_hashes b "
                    "JOIN detached_identities d ON d.identity_hash = b.identity_hash"
                )
            }
        (max_id,) = db.execute(HIGHEST_PROFILE_ID).fetchone()
        return Loaded(
            profiles=_load_profiles(db, profile_ids, only=only),
            tombstones=tombstones,
            detached=detached,
            max_profile_id=int(max_id),
        )

    def write(self, changes: BookChanges, *, more: bool) -> None:
        db = self._db
        try:
            db.executemany(
                UPSERT_PROFILE,
                [(p.id, p.created_at, p.updated_at) for p in changes.profiles.values()],
            )
            removed = [(profile_id,) for profile_id in changes.removed_profiles]
            for statement in REMOVE_PROFILE_ROWS:
                db.executemany(statement, removed)
            db.executemany(
                "DELETE FROM identities WHERE kind = ? AND value = ?",
                [(i.kind, i.value) for i, owner in changes.identities.items() if owner is None],
            )
            db.executemany(
                UPSERT_IDENTITY,
                [(i.kind, i.value, o) for i, o in changes.identities.items() if o is not None],
            )
            db.executemany("DELETE FROM profiles WHERE id = ?", removed)
            db.executemany(
                UPSERT_ATTRIBUTE,
                [attribute_row(pid, name, v) for (pid, name), v in changes.attributes.items()],
            )
            db.executemany(
                UPSERT_CONSENT,
                [consent_row(key, c) for key, c in changes.consents.items()],
            )
            db.executemany(
                UPSERT_DETACHED, [(key, v[0], v[1]) for key, v in changes.detached.items()]
            )
            db.executemany(UPSERT_TOMBSTONE, list(changes.tombstones.items()))
            db.executemany(
                "INSERT OR REPLACE INTO profile_merges (merged_id, into_id, event_id) "
                "VALUES (?, ?, ?)",
                [(m.merged_id, m.into_id, m.event_id) for m in changes.merges],
            )
            db.executemany(
                "INSERT OR REPLACE INTO erasures (profile_id, erased_at) VALUES (?, ?)",
                list(changes.erasures.items()),
            )
            if changes.events:
                db.execute(
                    "INSERT INTO profile_outbox (messages) VALUES (?)",
                    (pack(changes.events),),
                )
        except sqlite3.Error as exc:
            if sqlite_is_transient(exc):
                raise
            raise StorePoison(sqlite_reason(exc)) from exc
        except (ValueError, OverflowError) as exc:
            # Raised by the sqlite3 module for what it cannot bind (an int too large).
            raise StorePoison(str(exc)) from exc

    def discard_writes(self) -> None:
        """Nothing to undo: with write_every 0, the one write ends the attempt."""

    def savepoint(self) -> None:
        self._db.execute("SAVEPOINT one_update")

    def rollback_to_savepoint(self) -> None:
        self._db.execute("ROLLBACK TO one_update")

    def release_savepoint(self) -> None:
        self._db.execute("RELEASE one_update")


def _attribute_rows(
    db: sqlite3.Connection, in_batch: str, only: BatchWrites | None
) -> list[tuple[Any, ...]]:
    if only is None:
        query = f"SELECT {ATTRIBUTE_COLUMNS} FROM attributes {in_batch}"  # noqa: S608
        return db.execute(query).fetchall()
    if not only.attributes:
        return []
    names = ", ".join("?" * len(only.attributes))
    query = f"SELECT {ATTRIBUTE_COLUMNS} FROM attributes {in_batch} AND name IN ({names})"  # noqa: S608
    return db.execute(query, sorted(only.attributes)).fetchall()


def _push_row(db: sqlite3.Connection, destination: str) -> PushProgress | None:
    row = db.execute(
        f"SELECT {PUSH_COLUMNS} FROM destination_pushes WHERE destination = ?",  # noqa: S608
        (destination,),
    ).fetchone()
    return PushProgress.from_row(row) if row is not None else None


def _any_rows(db: sqlite3.Connection, table: str) -> bool:
    query = f"SELECT EXISTS (SELECT 1 FROM {table})"  # noqa: S608 (a table name constant)
    return bool(db.execute(query).fetchone()[0])


def _load_profiles(
    db: sqlite3.Connection,
    profile_ids: Sequence[int],
    *,
    only: BatchWrites | None = None,
) -> list[Profile]:
    """Whole profiles, or with ``only`` what the batch's decisions need (see BookSession)."""
    if not profile_ids:
        return []
    db.execute("CREATE TEMP TABLE IF NOT EXISTS batch_profiles (id INTEGER PRIMARY KEY)")
    db.execute("DELETE FROM batch_profiles")
    db.executemany("INSERT OR IGNORE INTO batch_profiles VALUES (?)", [(i,) for i in profile_ids])
    in_batch = "WHERE profile_id IN (SELECT id FROM batch_profiles)"
    return assemble_profiles(
        profile_ids,
        profiles=db.execute(
            "SELECT id, created_at, updated_at FROM profiles "
            "WHERE id IN (SELECT id FROM batch_profiles)"
        ).fetchall(),
        # Constant SQL put together from constants: nothing from input.
        # Every identity, partial or not: a ProfileChanged event names them all.
        identities=identity_rows(
            db.execute(f"SELECT profile_id, kind, value FROM identities {in_batch}")  # noqa: S608
        ),
        attributes=_attribute_rows(db, in_batch, only),
        consents=db.execute(f"SELECT {CONSENT_COLUMNS} FROM consents {in_batch}")  # noqa: S608
        if only is None or only.consents
        else (),
        decode_value=orjson.loads,
        partial=only is not None,
    )
