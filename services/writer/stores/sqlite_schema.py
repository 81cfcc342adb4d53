"""The SQLite store's schema, as numbered migrations applied in order exactly once.

Times are integer microseconds since the Unix epoch (UTC), so versions compare as
integers in SQL. Attribute values are JSON text so every FieldValue round-trips.
The outbox (migration 3) holds each batch's ProfileChanged messages until the writer's
relay has put them on Kafka (services/writer/stores/outbox.py); AUTOINCREMENT, so a
``seq`` is never given twice, even after the rows before it were relayed and deleted.
Migration 4 keeps each destination's backfill progress (services/writer/stores/
snapshots.py).
"""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (
        1,
        """
        CREATE TABLE profiles (
            id          INTEGER PRIMARY KEY,
            created_at  INTEGER NOT NULL,
            updated_at  INTEGER NOT NULL
        );
        CREATE TABLE identities (
            kind        TEXT    NOT NULL,
            value       TEXT    NOT NULL,
            profile_id  INTEGER NOT NULL REFERENCES profiles (id),
            PRIMARY KEY (kind, value)
        ) WITHOUT ROWID;
        CREATE INDEX identities_by_profile ON identities (profile_id);
        CREATE TABLE attributes (
            profile_id          INTEGER NOT NULL REFERENCES profiles (id),
            name                TEXT    NOT NULL,
            value               TEXT    NOT NULL,
            source              TEXT    NOT NULL,
            source_record_id    TEXT    NOT NULL,
            source_modified_at  INTEGER NOT NULL,
            sequence            INTEGER NOT NULL,
            mapping_version     INTEGER NOT NULL,
            written_at          INTEGER NOT NULL,
            PRIMARY KEY (profile_id, name)
        ) WITHOUT ROWID;
        CREATE TABLE consumer_offsets (
            topic        TEXT    NOT NULL,
            partition    INTEGER NOT NULL,
            next_offset  INTEGER NOT NULL,
            PRIMARY KEY (topic, partition)
        ) WITHOUT ROWID;
        """,
    ),
    (
        2,
        # Provenance-carrying clears (value NULL), consents, detachments, erasure
        # tombstones and merges: the whole profile model.
        """
        CREATE TABLE attributes_v2 (
            profile_id          INTEGER NOT NULL REFERENCES profiles (id),
            name                TEXT    NOT NULL,
            value               TEXT,
            source              TEXT    NOT NULL,
            source_record_id    TEXT    NOT NULL,
            source_modified_at  INTEGER NOT NULL,
            sequence            INTEGER NOT NULL,
            mapping_version     INTEGER NOT NULL,
            written_at          INTEGER NOT NULL,
            PRIMARY KEY (profile_id, name)
        ) WITHOUT ROWID;
        INSERT INTO attributes_v2 SELECT * FROM attributes;
        DROP TABLE attributes;
        ALTER TABLE attributes_v2 RENAME TO attributes;
        CREATE TABLE consents (
            profile_id    INTEGER NOT NULL REFERENCES profiles (id),
            subscription  TEXT    NOT NULL,
            channel       TEXT    NOT NULL,
            status        TEXT    NOT NULL,
            changed_at    INTEGER NOT NULL,
            source        TEXT    NOT NULL,
            written_at    INTEGER NOT NULL,
            PRIMARY KEY (profile_id, subscription, channel)
        ) WITHOUT ROWID;
        CREATE TABLE detached_identities (
            identity_hash       TEXT    PRIMARY KEY,
            source_modified_at  INTEGER NOT NULL,
            sequence            INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE erased_identities (
            identity_hash  TEXT    PRIMARY KEY,
            erased_at      INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE erasures (
            profile_id  INTEGER PRIMARY KEY,
            erased_at   INTEGER NOT NULL
        );
        CREATE TABLE profile_merges (
            merged_id  INTEGER PRIMARY KEY,
            into_id    INTEGER NOT NULL,
            event_id   TEXT    NOT NULL
        );
        """,
    ),
    (
        3,
        """
        CREATE TABLE profile_outbox (
            seq       INTEGER PRIMARY KEY AUTOINCREMENT,
            messages  BLOB    NOT NULL
        );
        """,
    ),
    (
        4,
        """
        CREATE TABLE destination_pushes (
            destination       TEXT    PRIMARY KEY,
            run_id            TEXT    NOT NULL,
            after_profile_id  INTEGER NOT NULL,
            pushed            INTEGER NOT NULL,
            total             INTEGER NOT NULL,
            started_at        INTEGER NOT NULL,
            finished_at       INTEGER,
            mapping_version   INTEGER NOT NULL
        );
        """,
    ),
)
