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
from services.writer.identity_claims import RecordClaim, RecordKey
from services.writer.profiles import (
    BatchWrites,
    BookChanges,
    Merge,
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
    RETIRED_COLUMNS,
    assemble_profiles,
    attribute_row,
    consent_row,
    identity_rows,
    merge_of,
    merge_row,
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
    "DELETE FROM retired_identities WHERE profile_id = ?",
    "DELETE FROM attribute_alternatives WHERE profile_id = ?",
)
UPSERT_ALTERNATIVE: Final = f"""
INSERT INTO attribute_alternatives ({ATTRIBUTE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (profile_id, name, source, source_record_id) DO UPDATE SET
    value = excluded.value, source_modified_at = excluded.source_modified_at,
    sequence = excluded.sequence, mapping_version = excluded.mapping_version,
    written_at = excluded.written_at
WHERE (excluded.source_modified_at, excluded.sequence)
    > (attribute_alternatives.source_modified_at, attribute_alternatives.sequence)
"""  # noqa: S608 (a constant column list)
UPSERT_RECORD: Final = """
INSERT INTO source_records (source, record_id, source_modified_at, sequence, identities)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (source, record_id) DO UPDATE SET
    source_modified_at = excluded.source_modified_at, sequence = excluded.sequence,
    identities = excluded.identities
"""
UPSERT_RETIRED: Final = f"""
INSERT INTO retired_identities ({RETIRED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (profile_id, kind, value) DO UPDATE SET
    retired_at = excluded.retired_at, source = excluded.source, record_id = excluded.record_id
"""  # noqa: S608 (a constant column list)
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
        self._book = BookSettings.of(profile, encode_change)
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

    def retired_from(self, identity: Identity) -> list[StoredProfile]:
        """The profiles holding ``identity`` as retired (it matches none of them)."""
        with self._locked_is_transient():
            ids = [
                int(row[0])
                for row in self._db.execute(
                    "SELECT profile_id FROM retired_identities WHERE kind = ? AND value = ? "
                    "ORDER BY profile_id",
                    (identity.kind, identity.value),
                )
            ]
            loaded = _load_profiles(self._db, ids)
        return [stored_profile(profile) for profile in loaded]

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
        # An Identity is a (kind, value) tuple: a row as it is.
        _fill(self._db, "batch_identities", "kind TEXT, value TEXT", identities)
        return {
            Identity(kind, value): int(owner)
            for kind, value, owner in self._db.execute(
                "SELECT i.kind, i.value, i.profile_id FROM batch_identities b "
                "JOIN identities i ON i.kind = b.kind AND i.value = b.value"
            )
        }

    def retired_holders(self, identities: set[Identity]) -> dict[Identity, set[int]]:
        _fill(self._db, "batch_identities", "kind TEXT, value TEXT", identities)
        holders: dict[Identity, set[int]] = {}
        for kind, value, profile_id in self._db.execute(
            "SELECT r.kind, r.value, r.profile_id FROM batch_identities b "
            "JOIN retired_identities r ON r.kind = b.kind AND r.value = b.value"
        ):
            holders.setdefault(Identity(kind, value), set()).add(int(profile_id))
        return holders

    def claims(self, records: set[RecordKey]) -> dict[RecordKey, RecordClaim]:
        db = self._db
        _fill(db, "batch_records", "source TEXT, record_id TEXT", records)
        return {
            (source, record_id): RecordClaim((modified, sequence), key)
            for source, record_id, modified, sequence, key in db.execute(
                "SELECT s.source, s.record_id, s.source_modified_at, s.sequence, s.identities "
                "FROM batch_records b JOIN source_records s "
                "ON s.source = b.source AND s.record_id = b.record_id"
            )
        }

    def asserters(self, identities: set[Identity]) -> dict[Identity, set[RecordKey]]:
        _fill(self._db, "batch_identities", "kind TEXT, value TEXT", identities)
        found: dict[Identity, set[RecordKey]] = {}
        for kind, value, source, record_id in self._db.execute(
            "SELECT c.kind, c.value, c.source, c.record_id FROM batch_identities b "
            "JOIN identity_claims c ON c.kind = b.kind AND c.value = b.value"
        ):
            found.setdefault(Identity(kind, value), set()).add((source, record_id))
        return found

    def merges(self, merged_ids: set[int]) -> dict[int, Merge]:
        found = {}
        for merged_id in merged_ids:
            row = self._db.execute(
                "SELECT merged_id, into_id, event_id, records, merged_created_at "
                "FROM profile_merges WHERE merged_id = ?",
                (merged_id,),
            ).fetchone()
            if row is not None:
                found[merged_id] = merge_of(row)
        return found

    def separations(self, profile_ids: set[int]) -> dict[int, set[int]]:
        db = self._db
        if not profile_ids or not _any_rows(db, "profile_separations"):
            return {}
        _fill(db, "batch_profile_ids", "id INTEGER", [(p,) for p in profile_ids])
        apart: dict[int, set[int]] = {}
        for profile_id, other_id in db.execute(
            "SELECT s.profile_id, s.other_id FROM batch_profile_ids b "
            "JOIN profile_separations s ON s.profile_id = b.id"
        ):
            apart.setdefault(int(profile_id), set()).add(int(other_id))
        return apart

    def load(
        self, profile_ids: set[int], identities: set[Identity], *, only: BatchWrites | None
    ) -> Loaded:
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
            profiles=_load_profiles(db, sorted(profile_ids), only=only),
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
            # Before the writes: a later update of the batch may write one again.
            db.executemany(
                "DELETE FROM attributes WHERE profile_id = ? AND name = ?",
                list(changes.attributes_gone),
            )
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
                "INSERT OR REPLACE INTO profile_merges "
                "(merged_id, into_id, event_id, records, merged_created_at) VALUES (?, ?, ?, ?, ?)",
                [merge_row(m) for m in changes.merges],
            )
            db.executemany(
                "INSERT OR REPLACE INTO erasures (profile_id, erased_at) VALUES (?, ?)",
                list(changes.erasures.items()),
            )
            _write_claims(db, changes)
            _write_splits(db, changes)
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


def _fill(db: sqlite3.Connection, table: str, columns: str, rows: Any) -> None:
    """The temporary table ``table`` holding just ``rows``."""
    # Constant SQL put together from constants: nothing from input.
    db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} ({columns})")
    db.execute(f"DELETE FROM {table}")  # noqa: S608
    marks = ", ".join("?" * (columns.count(",") + 1))
    db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)  # noqa: S608


def _write_splits(db: sqlite3.Connection, changes: BookChanges) -> None:
    """What a split needs and does (services/writer/unmerge.py)."""
    if changes.alternatives:
        db.executemany(
            UPSERT_ALTERNATIVE,
            [
                attribute_row(pid, name, value)
                for (pid, name, _s, _r), value in changes.alternatives.items()
                if value is not None
            ],
        )
        db.executemany(
            "DELETE FROM attribute_alternatives "
            "WHERE profile_id = ? AND name = ? AND source = ? AND source_record_id = ?",
            [key for key, value in changes.alternatives.items() if value is None],
        )
    db.executemany(
        "INSERT OR IGNORE INTO profile_separations (profile_id, other_id) VALUES (?, ?)",
        [pair for one, other in changes.separations for pair in ((one, other), (other, one))],
    )
    db.executemany(
        "UPDATE profile_merges SET split_at = ? WHERE merged_id = ?",
        [(at, merged_id) for merged_id, at in changes.splits.items()],
    )


def _write_claims(db: sqlite3.Connection, changes: BookChanges) -> None:
    """Records' claims and the identities kept as history."""
    db.executemany(
        UPSERT_RECORD,
        [
            (s, r, c.version[0], c.version[1], c.key)
            for (s, r), c in changes.claims.items()
            if c is not None
        ],
    )
    db.executemany(
        "DELETE FROM source_records WHERE source = ? AND record_id = ?",
        [record for record, v in changes.claims.items() if v is None],
    )
    if changes.claimed:
        db.executemany(
            "DELETE FROM identity_claims WHERE source = ? AND record_id = ?",
            [record for record in changes.claimed if record not in changes.first_claims],
        )
        db.executemany(
            "INSERT INTO identity_claims (kind, value, source, record_id) VALUES (?, ?, ?, ?)",
            [
                (i.kind, i.value, s, r)
                for (s, r), held in changes.claimed.items()
                for i in held
                if i.kind != "crm"  # only its own record asserts a record's id
            ],
        )
    if changes.retired:
        db.executemany(
            "DELETE FROM retired_identities WHERE profile_id = ? AND kind = ? AND value = ?",
            [(pid, i.kind, i.value) for (pid, i), kept in changes.retired.items() if kept is None],
        )
        db.executemany(
            UPSERT_RETIRED,
            [
                (pid, i.kind, i.value, *kept)
                for (pid, i), kept in changes.retired.items()
                if kept is not None
            ],
        )


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
        retired=db.execute(f"SELECT {RETIRED_COLUMNS} FROM retired_identities {in_batch}")  # noqa: S608
        if only is None
        else (),
        alternatives=db.execute(
            f"SELECT {ATTRIBUTE_COLUMNS} FROM attribute_alternatives {in_batch}"  # noqa: S608
        )
        if only is None
        else (),
    )
