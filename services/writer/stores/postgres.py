"""The PostgreSQL profile store (production): psycopg 3, one connection, batched SQL.

Each batch is one transaction holding the profile changes and the Kafka positions
they came from:

1. ``pg_advisory_xact_lock`` serialises writer instances on this store: the
   ProfileBook decides on the profiles it loaded, so no other writer may change them
   before this transaction commits. (Batching keeps the lock's cost per row small.)
2. The profiles the batch touches are loaded with a handful of queries over arrays of
   the batch's identities (services/writer/stores/batch.py drives steps 2 to 4).
3. What the book changed goes back with one ``INSERT ... ON CONFLICT`` per table, its
   rows a JSON parameter. The transaction runs in pipeline mode: statements go out
   without waiting for their results, so the server writes what the book decided of
   the first WRITE_EVERY updates while the book decides the next ones (a parameter
   rather than COPY, which a pipeline cannot carry). A savepoint before the first
   part lets an attempt that turns out to need whole profiles (a merge) undo its
   writes.
4. The next offsets go in with the data; COMMIT.

Errors are classified by their SQLSTATE (services/writer/stores/failures.py). A lost
connection or an outage is transient (the writer retries the batch with backoff,
reconnecting); any other error of a write is poison (the batch is redone an update at
a time, without a pipeline, each update in a savepoint that an error can be rolled
back to, and the refused update rejected: a data or constraint error, or a program
limit such as an identity too long for the identities index).

One store in one module: its schema, migrations and the batch it applies in one
transaction are read together (the SQLite store mirrors it); hence over 400 lines.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Any, Final

import orjson
import psycopg
from psycopg.types.json import set_json_loads

from services.core.config import PostgresStoreSettings
from services.core.contracts import Identity, ProfileUpdate
from services.core.mapping_settings import ProfileSettings
from services.core.versions import to_micros
from services.writer.identity_claims import RecordClaim, RecordKey
from services.writer.profiles import (
    TIME_NOT_LOADED,
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
from services.writer.stores.failures import postgres_is_transient, postgres_reason
from services.writer.stores.outbox import ChangeEncoder, pack, standalone_encoder
from services.writer.stores.postgres_schema import MIGRATIONS
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

log = logging.getLogger(__name__)

# A profile's rows in every table keyed by it, deleted when it is merged or erased.
REMOVED_WITH_PROFILE: Final = (
    "attributes",
    "consents",
    "identities",
    "retired_identities",
    "attribute_alternatives",
)

# "crms" as an integer: the advisory lock every crmsync writer takes per batch.
BATCH_LOCK: Final = 0x63726D73
MIGRATION_LOCK: Final = BATCH_LOCK + 1
# Held for its session by the writer relaying the outbox: one relay at a time keeps
# the events in commit order.
RELAY_LOCK: Final = BATCH_LOCK + 2

# Updates the book decides between two writes of its changes (BookSession.write_every):
# the server writes one part while the book decides the next, and only the last part
# is waited for. Small enough that the writer's default batches of 500 come in three
# parts; 200 and 500 did as well in batches of 2,000 (bench/writer_store.py).
WRITE_EVERY: Final = 200

# The rows of a write go as one JSON array (a row an array, in column order), encoded
# by orjson in C and expanded by the server: a parameter, so they go out in pipeline
# mode. (COPY into staging tables, which a pipeline cannot carry, took as long.)
UPSERT_PROFILES: Final = """
INSERT INTO profiles (id, created_at, updated_at)
SELECT (r->>0)::bigint, (r->>1)::bigint, (r->>2)::bigint
FROM jsonb_array_elements(%s::jsonb) AS b (r)
ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at, updated_at = excluded.updated_at
"""
# A profile loaded partially (its times not read) only has its updated time written.
TOUCH_PROFILES: Final = """
UPDATE profiles p SET updated_at = b.updated_at::bigint
FROM ROWS FROM (json_array_elements_text(%s::json), json_array_elements_text(%s::json))
    AS b (id, updated_at)
WHERE p.id = b.id::bigint
"""
UPSERT_IDENTITIES: Final = """
INSERT INTO identities (kind, value, profile_id)
SELECT r->>0, r->>1, (r->>2)::bigint FROM jsonb_array_elements(%s::jsonb) AS b (r)
ON CONFLICT (kind, value) DO UPDATE SET profile_id = excluded.profile_id
"""
# A value goes as itself, JSON in the JSON; a clear as JSON null, which no value is
# (None is a clear), and is stored as SQL NULL.
UPSERT_ATTRIBUTES: Final = f"""
INSERT INTO attributes ({ATTRIBUTE_COLUMNS})
SELECT (r->>0)::bigint, r->>1, NULLIF(r->2, 'null'::jsonb), r->>3, r->>4, (r->>5)::bigint,
    (r->>6)::bigint, (r->>7)::integer, (r->>8)::bigint
FROM jsonb_array_elements(%s::jsonb) AS b (r)
ON CONFLICT (profile_id, name) DO UPDATE SET
    value = excluded.value, source = excluded.source,
    source_record_id = excluded.source_record_id,
    source_modified_at = excluded.source_modified_at, sequence = excluded.sequence,
    mapping_version = excluded.mapping_version, written_at = excluded.written_at
"""  # noqa: S608 (constant column lists, no input)
UPSERT_CONSENTS: Final = f"""
INSERT INTO consents ({CONSENT_COLUMNS})
SELECT (r->>0)::bigint, r->>1, r->>2, r->>3, (r->>4)::bigint, r->>5, (r->>6)::bigint
FROM jsonb_array_elements(%s::jsonb) AS b (r)
ON CONFLICT (profile_id, subscription, channel) DO UPDATE SET
    status = excluded.status, changed_at = excluded.changed_at,
    source = excluded.source, written_at = excluded.written_at
"""  # noqa: S608 (constant column lists, no input)
SAVE_PUSH: Final = """
INSERT INTO destination_pushes
    (destination, run_id, after_profile_id, pushed, total, started_at, finished_at,
     mapping_version)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (destination) DO UPDATE SET
    run_id = excluded.run_id, after_profile_id = excluded.after_profile_id,
    pushed = excluded.pushed, total = excluded.total, started_at = excluded.started_at,
    finished_at = excluded.finished_at, mapping_version = excluded.mapping_version
"""
UPSERT_OFFSETS: Final = """
INSERT INTO consumer_offsets (topic, partition, next_offset)
SELECT * FROM unnest(%s::text[], %s::integer[], %s::bigint[])
ON CONFLICT (topic, partition) DO UPDATE SET
    next_offset = GREATEST(consumer_offsets.next_offset, excluded.next_offset)
"""
UPSERT_DETACHED: Final = """
INSERT INTO detached_identities SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[])
ON CONFLICT (identity_hash) DO UPDATE SET
    source_modified_at = excluded.source_modified_at, sequence = excluded.sequence
"""
UPSERT_TOMBSTONES: Final = """
INSERT INTO erased_identities SELECT * FROM unnest(%s::text[], %s::bigint[])
ON CONFLICT (identity_hash) DO UPDATE SET erased_at = excluded.erased_at
"""
# A profile split off and merged again has a new merge record.
UPSERT_MERGES: Final = """
INSERT INTO profile_merges (merged_id, into_id, event_id, records, merged_created_at)
SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::bigint[])
ON CONFLICT (merged_id) DO UPDATE SET
    into_id = excluded.into_id, event_id = excluded.event_id, records = excluded.records,
    merged_created_at = excluded.merged_created_at, split_at = NULL
"""
UPSERT_ALTERNATIVES: Final = f"""
INSERT INTO attribute_alternatives AS a ({ATTRIBUTE_COLUMNS})
SELECT (r->>0)::bigint, r->>1, NULLIF(r->2, 'null'::jsonb), r->>3, r->>4, (r->>5)::bigint,
    (r->>6)::bigint, (r->>7)::integer, (r->>8)::bigint
FROM jsonb_array_elements(%s::jsonb) AS b (r)
ON CONFLICT (profile_id, name, source, source_record_id) DO UPDATE SET
    value = excluded.value, source_modified_at = excluded.source_modified_at,
    sequence = excluded.sequence, mapping_version = excluded.mapping_version,
    written_at = excluded.written_at
WHERE (excluded.source_modified_at, excluded.sequence) > (a.source_modified_at, a.sequence)
"""  # noqa: S608 (constant column lists, no input)
DELETE_ALTERNATIVES: Final = """
DELETE FROM attribute_alternatives a
USING unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) AS gone (p, n, s, r)
WHERE a.profile_id = gone.p AND a.name = gone.n AND a.source = gone.s
    AND a.source_record_id = gone.r
"""
DELETE_ATTRIBUTES: Final = """
DELETE FROM attributes a USING unnest(%s::bigint[], %s::text[]) AS gone (p, n)
WHERE a.profile_id = gone.p AND a.name = gone.n
"""
INSERT_SEPARATIONS: Final = """
INSERT INTO profile_separations SELECT * FROM unnest(%s::bigint[], %s::bigint[])
ON CONFLICT DO NOTHING
"""
MARK_SPLITS: Final = """
UPDATE profile_merges m SET split_at = s.at
FROM unnest(%s::bigint[], %s::bigint[]) AS s (merged_id, at) WHERE m.merged_id = s.merged_id
"""
ALTERNATIVES_OF_PROFILES: Final = f"""
SELECT {ATTRIBUTE_COLUMNS} FROM attribute_alternatives WHERE profile_id = ANY(%b::bigint[])
"""  # noqa: S608 (a constant column list)
UPSERT_ERASURES: Final = """
INSERT INTO erasures SELECT * FROM unnest(%s::bigint[], %s::bigint[])
ON CONFLICT (profile_id) DO UPDATE SET erased_at = excluded.erased_at
"""
DELETE_IDENTITIES: Final = """
DELETE FROM identities i USING unnest(%s::text[], %s::text[]) AS gone (kind, value)
WHERE i.kind = gone.kind AND i.value = gone.value
"""
# A batch's reads probe the primary keys once per key, so their cost follows the batch,
# not the store. Their arrays of thousands (identities, profile ids) go in as JSON text,
# written by orjson in C (psycopg dumps a list parameter element by element in Python,
# about 1.5 µs each, a quarter of the owners lookup), and the planner takes
# json_array_elements_text for 100 rows (its prorows) whatever the batch: against a
# table of any size a nested loop over the primary key is then its cheapest plan. (With
# arrays, whose length it knows, it chose hash joins over whole tables: 54 ms against
# 24 ms for a batch of 2,000 in a store of 50,000 profiles, ten times worse at ten times
# the profiles.) Short or rare arrays go as arrays (%b: binary, which spares quoting).
#
# The owners come back by the identity's position in the arrays (from 0), not by its
# text: less to send back, and the caller keeps the identities it already has.
OWNERS_OF_IDENTITIES: Final = """
SELECT b.position - 1, i.profile_id
FROM ROWS FROM (json_array_elements_text(%s::json), json_array_elements_text(%s::json))
    WITH ORDINALITY AS b (kind, value, position)
JOIN identities i ON i.kind = b.kind AND i.value = b.value
"""
PROFILES_BY_ID: Final = """
SELECT p.id, p.created_at, p.updated_at FROM json_array_elements_text(%s::json) AS b (id)
JOIN profiles p ON p.id = b.id::bigint
"""
# One index scan per profile for all the names: a batch writing 30 attribute names
# costs what one writing 2 does (7 ms for 2,000 profiles, against 139 ms for a probe
# per profile and name).
ATTRIBUTES_NAMED: Final = f"""
SELECT {ATTRIBUTE_COLUMNS} FROM json_array_elements_text(%s::json) AS b (id)
JOIN attributes a ON a.profile_id = b.id::bigint AND a.name = ANY(%b::text[])
"""  # noqa: S608 (constant column lists, no input)
IDENTITIES_OF_PROFILES: Final = """
SELECT i.profile_id, i.kind, i.value FROM json_array_elements_text(%s::json) AS b (id)
JOIN identities i ON i.profile_id = b.id::bigint
"""
ANY_TOMBSTONES_OR_DETACHMENTS: Final = """
SELECT EXISTS (SELECT 1 FROM erased_identities) OR EXISTS (SELECT 1 FROM detached_identities)
"""
# A batch's records, as its identities (OWNERS_OF_IDENTITIES): JSON arrays, rows back
# by position.
CLAIMS_OF_RECORDS: Final = """
SELECT b.position - 1, s.source_modified_at, s.sequence, s.identities
FROM ROWS FROM (json_array_elements_text(%s::json), json_array_elements_text(%s::json))
    WITH ORDINALITY AS b (source, record_id, position)
JOIN source_records s ON s.source = b.source AND s.record_id = b.record_id
"""
ASSERTERS_OF_IDENTITIES: Final = """
SELECT c.kind, c.value, c.source, c.record_id
FROM unnest(%s::text[], %s::text[]) AS b (kind, value)
JOIN identity_claims c ON c.kind = b.kind AND c.value = b.value
"""
RETIRED_HOLDERS: Final = """
SELECT r.kind, r.value, r.profile_id FROM unnest(%s::text[], %s::text[]) AS b (kind, value)
JOIN retired_identities r ON r.kind = b.kind AND r.value = b.value
"""
UPSERT_RECORDS: Final = """
INSERT INTO source_records
SELECT r->>0, r->>1, (r->>2)::bigint, (r->>3)::bigint, r->>4
FROM jsonb_array_elements(%s::jsonb) AS b (r)
ON CONFLICT (source, record_id) DO UPDATE SET
    source_modified_at = excluded.source_modified_at, sequence = excluded.sequence,
    identities = excluded.identities
"""
DELETE_RECORDS: Final = """
DELETE FROM source_records s USING unnest(%s::text[], %s::text[]) AS gone (source, record_id)
WHERE s.source = gone.source AND s.record_id = gone.record_id
"""
DELETE_CLAIMS: Final = """
DELETE FROM identity_claims c USING unnest(%s::text[], %s::text[]) AS gone (source, record_id)
WHERE c.source = gone.source AND c.record_id = gone.record_id
"""
INSERT_CLAIMS: Final = """
INSERT INTO identity_claims
SELECT r->>0, r->>1, r->>2, r->>3 FROM jsonb_array_elements(%s::jsonb) AS b (r)
"""
DELETE_RETIRED: Final = """
DELETE FROM retired_identities r
USING unnest(%s::bigint[], %s::text[], %s::text[]) AS gone (profile_id, kind, value)
WHERE r.profile_id = gone.profile_id AND r.kind = gone.kind AND r.value = gone.value
"""
UPSERT_RETIRED: Final = """
INSERT INTO retired_identities
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[])
ON CONFLICT (profile_id, kind, value) DO UPDATE SET
    retired_at = excluded.retired_at, source = excluded.source, record_id = excluded.record_id
"""
RETIRED_OF_PROFILES: Final = f"""
SELECT {RETIRED_COLUMNS} FROM retired_identities WHERE profile_id = ANY(%b::bigint[])
"""  # noqa: S608 (a constant column list)
HIGHEST_PROFILE_ID: Final = """
SELECT GREATEST(
    (SELECT coalesce(max(id), 0) FROM profiles),
    (SELECT coalesce(max(merged_id), 0) FROM profile_merges),
    (SELECT coalesce(max(profile_id), 0) FROM erasures))
"""


class PostgresProfileStore:
    keeps_offsets = True

    def __init__(
        self,
        settings: PostgresStoreSettings,
        *,
        profile: ProfileSettings | None = None,
        read_only: bool = False,
        write_every: int = WRITE_EVERY,
        encode_change: ChangeEncoder | None = None,
    ) -> None:
        """``encode_change`` encodes the outbox's ProfileChanged records (the writer's
        codec; a standalone one by default)."""
        self._settings = settings
        self._read_only = read_only
        profile = profile or ProfileSettings()
        self._book = BookSettings.of(profile, encode_change)
        self._conn: psycopg.Connection[Any] | None = None
        self._write_every = write_every
        self._relaying: psycopg.Connection[Any] | None = None
        """The connection holding RELAY_LOCK, if one does."""

    # --- connection -------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        kwargs: dict[str, Any] = {"connect_timeout": self._settings.connect_timeout_s}
        if self._settings.password is not None:
            kwargs["password"] = self._settings.password.resolve()
        if self._read_only:
            kwargs["options"] = "-c default_transaction_read_only=on"
        try:
            conn = psycopg.connect(self._settings.dsn, application_name="crmsync", **kwargs)
        except psycopg.OperationalError as exc:
            raise TransientStoreError(f"PostgreSQL store unreachable: {exc}") from exc
        # jsonb values (attributes) read by orjson, in C: a batch reads those it writes.
        set_json_loads(orjson.loads, conn)
        self._conn = conn
        return conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def close(self) -> None:
        self._disconnect()

    # --- schema and health --------------------------------------------------------

    @contextmanager
    def _outage_is_transient(self) -> Iterator[None]:
        """A lost connection or an outage inside is a TransientStoreError: the
        transaction rolled back with it, and doing it again once the server answers
        is safe. Any other error goes on as it is."""
        try:
            yield
        except psycopg.Error as exc:
            if not postgres_is_transient(exc):
                raise
            self._disconnect()
            raise TransientStoreError(f"PostgreSQL store: {exc}") from exc

    def migrate(self) -> None:
        conn = self._connection()
        with self._outage_is_transient(), conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, script in MIGRATIONS:
                if version in applied:
                    continue
                log.info("applying PostgreSQL migration version=%s", version)
                for statement in script_statements(script):
                    conn.execute(statement.encode())
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))

    def ping(self) -> None:
        try:
            self._read(lambda conn: conn.execute("SELECT 1 FROM schema_migrations LIMIT 1"))
        except psycopg.Error as exc:
            raise TransientStoreError(f"PostgreSQL store: {exc}") from exc

    # --- reads ----------------------------------------------------------------------

    def stored_offsets(self, topic: str) -> dict[int, int]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT partition, next_offset FROM consumer_offsets WHERE topic = %s", (topic,)
            ).fetchall()
        )
        return {int(partition): int(offset) for partition, offset in rows}

    def find_profile(self, identity: Identity) -> StoredProfile | None:
        def read(conn: psycopg.Connection[Any]) -> list[Profile]:
            row = conn.execute(
                "SELECT profile_id FROM identities WHERE kind = %s AND value = %s",
                (identity.kind, identity.value),
            ).fetchone()
            return [] if row is None else _load_profiles(conn, [int(row[0])])

        found = self._read(read)
        return stored_profile(found[0]) if found else None

    def retired_from(self, identity: Identity) -> list[StoredProfile]:
        """The profiles holding ``identity`` as retired (it matches none of them)."""

        def read(conn: psycopg.Connection[Any]) -> list[Profile]:
            rows = conn.execute(
                "SELECT profile_id FROM retired_identities WHERE kind = %s AND value = %s "
                "ORDER BY profile_id",
                (identity.kind, identity.value),
            ).fetchall()
            return _load_profiles(conn, [int(row[0]) for row in rows])

        return [stored_profile(profile) for profile in self._read(read)]

    def all_profiles(self) -> list[StoredProfile]:
        def read(conn: psycopg.Connection[Any]) -> list[Profile]:
            ids = [int(r[0]) for r in conn.execute("SELECT id FROM profiles ORDER BY id")]
            return _load_profiles(conn, ids)

        return [stored_profile(profile) for profile in self._read(read)]

    def profiles_by_id(self, profile_ids: Sequence[int]) -> list[StoredProfile]:
        """The profiles of ``profile_ids`` that exist (merged or erased ones do not)."""
        return [
            stored_profile(profile)
            for profile in self._read(lambda conn: _load_profiles(conn, profile_ids))
        ]

    def profiles_after(self, profile_id: int, limit: int) -> list[StoredProfile]:
        """Up to ``limit`` profiles with ids above ``profile_id``, in id order."""

        def read(conn: psycopg.Connection[Any]) -> list[Profile]:
            ids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT id FROM profiles WHERE id > %s ORDER BY id LIMIT %s",
                    (profile_id, limit),
                )
            ]
            return _load_profiles(conn, ids)

        return [stored_profile(profile) for profile in self._read(read)]

    def profiles_by_mapping_version(self) -> dict[str, dict[int, int]]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT source, mapping_version, COUNT(DISTINCT profile_id) FROM attributes "
                "WHERE value IS NOT NULL GROUP BY source, mapping_version"
            ).fetchall()
        )
        counts: dict[str, dict[int, int]] = {}
        for source, version, profiles in rows:
            counts.setdefault(source, {})[int(version)] = int(profiles)
        return counts

    def _read(self, query: Any) -> Any:
        conn = self._connection()
        with self._outage_is_transient(), conn.transaction():
            return query(conn)

    # --- a destination's backfill (services/writer/stores/snapshots.py) ---------------

    def push_progress(self, destination: str) -> PushProgress | None:
        found: PushProgress | None = self._read(lambda conn: _push_row(conn, destination))
        return found

    def start_push(
        self, destination: str, *, run_id: str, mapping_version: int, now: datetime
    ) -> PushProgress:
        def start(conn: psycopg.Connection[Any]) -> PushProgress:
            row = conn.execute("SELECT count(*) FROM profiles").fetchone()
            progress = PushProgress(
                destination,
                run_id,
                0,
                0,
                int(row[0]) if row else 0,
                now,
                mapping_version=mapping_version,
            )
            conn.execute(SAVE_PUSH, progress.row())
            return progress

        started: PushProgress = self._read(start)
        return started

    def outbox_rows(self) -> int:
        row = self._read(
            lambda conn: conn.execute("SELECT count(*) FROM profile_outbox").fetchone()
        )
        return int(row[0]) if row is not None else 0

    def push_batch(self, destination: str, *, limit: int, now: datetime) -> PushProgress:
        def batch(conn: psycopg.Connection[Any]) -> PushProgress:
            # The writer's batch lock: outbox rows commit in seq order (see RELAY_LOCK).
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (BATCH_LOCK,))
            progress = _push_row(conn, destination)
            if progress is None:
                raise LookupError(f"destination {destination!r} has no push run")
            ids = [
                int(row[0])
                for row in conn.execute(
                    "SELECT id FROM profiles WHERE id > %s ORDER BY id LIMIT %s",
                    (progress.after_profile_id, limit),
                )
            ]
            if ids:
                messages = snapshot_messages(
                    _load_profiles(conn, ids),
                    progress=progress,
                    now=now,
                    encode=self._book.encode_change or standalone_encoder(),
                )
                conn.execute("INSERT INTO profile_outbox (messages) VALUES (%s)", (pack(messages),))
            progress = progress.advanced(ids, now)
            conn.execute(SAVE_PUSH, progress.row())
            return progress

        pushed: PushProgress = self._read(batch)
        return pushed

    # --- the outbox -------------------------------------------------------------------

    def pending_changes(self, limit: int) -> list[OutboxEntry]:
        def read(conn: psycopg.Connection[Any]) -> list[OutboxEntry]:
            if self._relaying is not conn:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,)).fetchone()
                if row is None or not row[0]:
                    return []
                self._relaying = conn
            rows = conn.execute(
                "SELECT seq, messages FROM profile_outbox ORDER BY seq LIMIT %s", (limit,)
            ).fetchall()
            return [OutboxEntry(int(seq), bytes(messages)) for seq, messages in rows]

        return list(self._read(read))

    def changes_relayed(self, up_to: int) -> None:
        self._read(
            lambda conn: conn.execute("DELETE FROM profile_outbox WHERE seq <= %s", (up_to,))
        )

    # --- the batch --------------------------------------------------------------------

    def apply_batch(
        self,
        *,
        updates: Sequence[ProfileUpdate],
        next_offsets: Mapping[TopicPartitionKey, int],
        written_at: datetime,
        before_commit: BeforeCommit,
    ) -> BatchReport:
        now = to_micros(written_at)
        conn = self._connection()
        try:
            with self._outage_is_transient():
                try:
                    report = self._transaction(conn, updates, next_offsets, now, isolate=False)
                except StorePoison:
                    conn.rollback()
                    # Rare: redo the batch an update at a time to find the culprits.
                    report = self._transaction(conn, updates, next_offsets, now, isolate=True)
                before_commit(report)
                conn.commit()
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
        return report

    def _transaction(
        self,
        conn: psycopg.Connection[Any],
        updates: Sequence[ProfileUpdate],
        next_offsets: Mapping[TopicPartitionKey, int],
        now: int,
        *,
        isolate: bool,
    ) -> BatchReport:
        session = _Session(
            conn,
            write_every=0 if isolate else self._write_every,
        )
        topics, partitions, offsets = _columns(
            [(topic, partition, offset) for (topic, partition), offset in next_offsets.items()], 3
        )
        # An update redone alone stands in a savepoint to roll back to should the store
        # refuse it, which a pipeline cannot do past an error: redoing goes statement
        # by statement.
        try:
            with nullcontext() if isolate else conn.pipeline():
                # Step 1
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (BATCH_LOCK,))
                # Steps 2 and 3
                report = apply_updates(
                    session, updates, settings=self._book, now=now, isolate=isolate
                )
                # Step 4
                conn.execute(UPSERT_OFFSETS, (topics, partitions, offsets))
        except psycopg.Error as exc:
            # In a pipeline, a refused write is told when a later result is read.
            if postgres_is_transient(exc):
                raise
            raise StorePoison(postgres_reason(exc)) from exc
        return report


class _Session:
    """The BookSession of one PostgreSQL transaction."""

    def __init__(self, conn: psycopg.Connection[Any], *, write_every: int) -> None:
        self._conn = conn
        self.write_every = write_every
        self._savepoint = False
        """Whether this batch's savepoint before its first part was taken."""
        self._writing = ""
        """The table of the last write statement sent."""

    def owners(self, identities: set[Identity]) -> dict[Identity, int]:
        asked = list(identities)
        kinds = _json([i.kind for i in asked])
        values = _json([i.value for i in asked])
        # fetchall() builds the rows in C; iterating the cursor, a call per row in Python.
        rows = self._conn.execute(OWNERS_OF_IDENTITIES, (kinds, values)).fetchall()
        return {asked[position]: owner for position, owner in rows}

    def retired_holders(self, identities: set[Identity]) -> dict[Identity, set[int]]:
        holders: dict[Identity, set[int]] = {}
        for kind, value, profile_id in self._conn.execute(
            RETIRED_HOLDERS, _columns(list(identities), 2)
        ).fetchall():
            holders.setdefault(Identity(kind, value), set()).add(int(profile_id))
        return holders

    def claims(self, records: set[RecordKey]) -> dict[RecordKey, RecordClaim]:
        asked = list(records)
        sources, record_ids = _json([r[0] for r in asked]), _json([r[1] for r in asked])
        return {
            asked[position]: RecordClaim((modified, sequence), key)
            for position, modified, sequence, key in self._conn.execute(
                CLAIMS_OF_RECORDS, (sources, record_ids)
            ).fetchall()
        }

    def asserters(self, identities: set[Identity]) -> dict[Identity, set[RecordKey]]:
        found: dict[Identity, set[RecordKey]] = {}
        for kind, value, source, record_id in self._conn.execute(
            ASSERTERS_OF_IDENTITIES, _columns(list(identities), 2)
        ).fetchall():
            found.setdefault(Identity(kind, value), set()).add((source, record_id))
        return found

    def merges(self, merged_ids: set[int]) -> dict[int, Merge]:
        rows = self._conn.execute(
            "SELECT merged_id, into_id, event_id, records, merged_created_at "
            "FROM profile_merges WHERE merged_id = ANY(%b::bigint[])",
            (sorted(merged_ids),),
        ).fetchall()
        return {int(row[0]): merge_of(row) for row in rows}

    def separations(self, profile_ids: set[int]) -> dict[int, set[int]]:
        conn = self._conn
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM profile_separations)").fetchone()
        if not profile_ids or row is None or not row[0]:
            return {}
        apart: dict[int, set[int]] = {}
        for profile_id, other_id in conn.execute(
            "SELECT profile_id, other_id FROM profile_separations "
            "WHERE profile_id = ANY(%b::bigint[])",
            (sorted(profile_ids),),
        ).fetchall():
            apart.setdefault(int(profile_id), set()).add(int(other_id))
        return apart

    def load(
        self, profile_ids: set[int], identities: set[Identity], *, only: BatchWrites | None
    ) -> Loaded:
        conn = self._conn
        tombstones: dict[str, int] = {}
        detached: dict[str, tuple[int, int]] = {}
        row = conn.execute(ANY_TOMBSTONES_OR_DETACHMENTS).fetchone()
        if row is not None and row[0]:
            hash_list = ([identity_hash(identity) for identity in identities],)
            tombstones = {
                key: int(erased_at)
                for key, erased_at in conn.execute(
                    "SELECT identity_hash, erased_at FROM erased_identities "
                    "WHERE identity_hash = ANY(%b::text[])",
                    hash_list,
                )
            }
            detached = {
                key: (int(modified), int(sequence))
                for key, modified, sequence in conn.execute(
                    "SELECT identity_hash, source_modified_at, sequence FROM detached_identities "
                    "WHERE identity_hash = ANY(%b::text[])",
                    hash_list,
                )
            }
        highest = conn.execute(HIGHEST_PROFILE_ID).fetchone()
        return Loaded(
            profiles=_load_profiles(conn, sorted(profile_ids), only=only),
            tombstones=tombstones,
            detached=detached,
            max_profile_id=int(highest[0]) if highest is not None else 0,
        )

    def write(self, changes: BookChanges, *, more: bool) -> None:
        conn = self._conn
        try:
            if more and not self._savepoint:
                conn.execute("SAVEPOINT batch_writes")
                self._savepoint = True
            whole = [
                (p.id, p.created_at, p.updated_at)
                for p in changes.profiles.values()
                if not p.partial
            ]
            if whole:
                self._execute("profiles", UPSERT_PROFILES, (_json(whole),))
            touched = [p for p in changes.profiles.values() if p.partial]
            if touched:
                ids, times = _json([p.id for p in touched]), _json([p.updated_at for p in touched])
                self._execute("profiles", TOUCH_PROFILES, (ids, times))
            removed = list(changes.removed_profiles)
            if removed:
                for table in REMOVED_WITH_PROFILE:
                    self._execute(
                        table,
                        f"DELETE FROM {table} WHERE profile_id = ANY(%b::bigint[])",  # noqa: S608
                        (removed,),
                    )
            gone = [(i.kind, i.value) for i, owner in changes.identities.items() if owner is None]
            if gone:
                self._execute("identities", DELETE_IDENTITIES, _columns(gone, 2))
            owned = [(i.kind, i.value, o) for i, o in changes.identities.items() if o is not None]
            if owned:
                self._execute("identities", UPSERT_IDENTITIES, (_json(owned),))
            if removed:
                self._execute(
                    "profiles", "DELETE FROM profiles WHERE id = ANY(%b::bigint[])", (removed,)
                )
            self._attributes(changes)
            if changes.consents:
                consents = [consent_row(key, c) for key, c in changes.consents.items()]
                self._execute("consents", UPSERT_CONSENTS, (_json(consents),))
            self._rare(changes)
            self._claims(changes)
            self._outbox(changes)
        except psycopg.Error as exc:
            if postgres_is_transient(exc):
                raise
            # Redone an update at a time (no pipeline), the error is the statement's.
            raise StorePoison(f"writing {self._writing}: {postgres_reason(exc)}") from exc

    def _attributes(self, changes: BookChanges) -> None:
        if changes.attributes_gone:
            # Before the writes: a later update of the batch may write one again.
            gone = _columns(list(changes.attributes_gone), 2)
            self._execute("attributes", DELETE_ATTRIBUTES, gone)
        if changes.attributes:
            rows = [
                attribute_row(pid, name, v, encoded=False)
                for (pid, name), v in changes.attributes.items()
            ]
            self._execute("attributes", UPSERT_ATTRIBUTES, (_json(rows),))

    def _execute(self, table: str, query: Any, params: Any) -> None:
        """One write statement into ``table``, named in the reason should it be refused."""
        self._writing = table
        self._conn.execute(query, params)

    def discard_writes(self) -> None:
        if self._savepoint:
            self._conn.execute("ROLLBACK TO SAVEPOINT batch_writes")

    def _outbox(self, changes: BookChanges) -> None:
        if changes.events:
            self._execute(
                "profile_outbox",
                "INSERT INTO profile_outbox (messages) VALUES (%s)",
                (pack(changes.events),),
            )

    def _rare(self, changes: BookChanges) -> None:
        """Rows few batches have: detachments, tombstones, merges, erasures."""
        if changes.detached:
            rows = [(key, v[0], v[1]) for key, v in changes.detached.items()]
            self._execute("detached_identities", UPSERT_DETACHED, _columns(rows, 3))
        if changes.tombstones:
            tombstones = _columns(list(changes.tombstones.items()), 2)
            self._execute("erased_identities", UPSERT_TOMBSTONES, tombstones)
        if changes.merges:
            rows5 = [merge_row(m) for m in changes.merges]
            self._execute("profile_merges", UPSERT_MERGES, _columns(rows5, 5))
        self._splits(changes)
        if changes.erasures:
            erasures = _columns(list(changes.erasures.items()), 2)
            self._execute("erasures", UPSERT_ERASURES, erasures)

    def _splits(self, changes: BookChanges) -> None:
        """What a split needs and does (services/writer/unmerge.py)."""
        if changes.alternatives:
            kept = [
                attribute_row(pid, name, value, encoded=False)
                for (pid, name, _s, _r), value in changes.alternatives.items()
                if value is not None
            ]
            if kept:
                self._execute("attribute_alternatives", UPSERT_ALTERNATIVES, (_json(kept),))
            gone = [key for key, value in changes.alternatives.items() if value is None]
            if gone:
                self._execute("attribute_alternatives", DELETE_ALTERNATIVES, _columns(gone, 4))
        if changes.separations:
            pairs = [p for one, other in changes.separations for p in ((one, other), (other, one))]
            self._execute("profile_separations", INSERT_SEPARATIONS, _columns(pairs, 2))
        if changes.splits:
            self._execute("profile_merges", MARK_SPLITS, _columns(list(changes.splits.items()), 2))

    def _claims(self, changes: BookChanges) -> None:
        """Records' claims (a version each change) and the identities kept as history."""
        versions = [
            (s, r, c.version[0], c.version[1], c.key)
            for (s, r), c in changes.claims.items()
            if c is not None
        ]
        if versions:
            self._execute("source_records", UPSERT_RECORDS, (_json(versions),))
        forgotten = [record for record, v in changes.claims.items() if v is None]
        if forgotten:
            self._execute("source_records", DELETE_RECORDS, _columns(forgotten, 2))
        if changes.claimed:
            replaced = [record for record in changes.claimed if record not in changes.first_claims]
            if replaced:
                self._execute("identity_claims", DELETE_CLAIMS, _columns(replaced, 2))
            rows = [
                (i.kind, i.value, s, r)
                for (s, r), held in changes.claimed.items()
                for i in held
                if i.kind != "crm"  # only its own record asserts a record's id
            ]
            if rows:
                self._execute("identity_claims", INSERT_CLAIMS, (_json(rows),))
        if changes.retired:
            gone = [
                (p, i.kind, i.value) for (p, i), kept in changes.retired.items() if kept is None
            ]
            if gone:
                self._execute("retired_identities", DELETE_RETIRED, _columns(gone, 3))
            kept_rows = [
                (p, i.kind, i.value, *kept)
                for (p, i), kept in changes.retired.items()
                if kept is not None
            ]
            if kept_rows:
                self._execute("retired_identities", UPSERT_RETIRED, _columns(kept_rows, 6))

    def savepoint(self) -> None:
        self._conn.execute("SAVEPOINT one_update")

    def rollback_to_savepoint(self) -> None:
        self._conn.execute("ROLLBACK TO SAVEPOINT one_update")

    def release_savepoint(self) -> None:
        self._conn.execute("RELEASE SAVEPOINT one_update")


def _json(values: list[Any]) -> str:
    """A long array parameter as JSON text (see OWNERS_OF_IDENTITIES and
    UPSERT_PROFILES)."""
    return orjson.dumps(values).decode()


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> tuple[list[Any], ...]:
    """Rows as ``width`` column lists, the shape ``unnest`` takes."""
    return tuple([row[i] for row in rows] for i in range(width))


def _push_row(conn: psycopg.Connection[Any], destination: str) -> PushProgress | None:
    row = conn.execute(
        "SELECT destination, run_id, after_profile_id, pushed, total, started_at, finished_at, "
        "mapping_version FROM destination_pushes WHERE destination = %s",
        (destination,),
    ).fetchone()
    return PushProgress.from_row(row) if row is not None else None


def _load_profiles(
    conn: psycopg.Connection[Any],
    profile_ids: Sequence[int],
    *,
    only: BatchWrites | None = None,
) -> list[Profile]:
    """Whole profiles, or with ``only`` what the batch's decisions need (see BookSession)."""
    if not profile_ids:
        return []
    ids = (list(profile_ids),)
    id_json = _json(ids[0])
    if only is None:
        attributes = conn.execute(
            f"SELECT {ATTRIBUTE_COLUMNS} FROM attributes WHERE profile_id = ANY(%b::bigint[])",  # noqa: S608
            ids,
        ).fetchall()
    else:
        attributes = conn.execute(ATTRIBUTES_NAMED, (id_json, sorted(only.attributes))).fetchall()
    return assemble_profiles(
        profile_ids,
        # A partial profile exists (an identity of the batch names it) and goes without
        # its times: only its updated time is ever written (TOUCH_PROFILES).
        profiles=conn.execute(PROFILES_BY_ID, (id_json,)).fetchall()
        if only is None
        else [(pid, TIME_NOT_LOADED, TIME_NOT_LOADED) for pid in profile_ids],
        # Every identity, partial or not: a ProfileChanged event names them all.
        identities=identity_rows(conn.execute(IDENTITIES_OF_PROFILES, (id_json,)).fetchall()),
        attributes=attributes,
        consents=conn.execute(
            f"SELECT {CONSENT_COLUMNS} FROM consents WHERE profile_id = ANY(%b::bigint[])",  # noqa: S608
            ids,
        ).fetchall()
        if only is None or only.consents
        else [],
        decode_value=lambda value: value,  # jsonb: decoded by psycopg
        partial=only is not None,
        retired=conn.execute(RETIRED_OF_PROFILES, ids).fetchall() if only is None else [],
        alternatives=conn.execute(ALTERNATIVES_OF_PROFILES, ids).fetchall() if only is None else [],
    )
